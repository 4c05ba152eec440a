//! Which connection a packet belongs to: its flow key, the flow it is counted as, and a
//! new connection on a reused 5-tuple.

use super::*;

impl Tracker {
    /// The connection a view belongs to, and whether it is counted at this hook: a
    /// connection seen at both veths is counted at the client's.
    pub(super) fn connection(&mut self, view: &View, packet: &Packet) -> (FlowKey, bool) {
        if view.side == Side::Client {
            self.pairing.client_view(view);
            return (view.key, true);
        }
        // The server's veth: the client's side of the same connection, if it is here,
        // pod to pod or through a DNAT that kept the client's address and port.
        let flows = &self.flows;
        let mut translated = None;
        let connection = self
            .pairing
            .bound_to(&view.key)
            .or(Some(view.key))
            .filter(|key| flows.contains(key))
            .or_else(|| flows.by_client_endpoint(&view.key))
            .or_else(|| {
                // SNAT: conntrack knows the client's own tuple from the server's answer.
                let translation = self
                    .conntrack
                    .as_ref()?
                    .by_reply(&view.flow.reversed())
                    .ok()??;
                let original = orient::key_of(&translation.original);
                translated = translation
                    .is_nat()
                    .then_some((original, translation.original));
                Some(original).filter(|key| flows.contains(key))
            });
        let Some(connection) = connection else {
            if self.pairing.is_local(&view.flow.src_ip) && view.flow.src_ip != packet.pod {
                // The client is a pod here whose side was not read (its events lost under
                // a flood): the flow is still the client's, recovered from its veth's
                // counters; this packet is its far side.
                let (slot, _) = flow_entry(
                    &mut self.flows,
                    &mut self.marks,
                    &view.key,
                    view.flow,
                    packet.monotonic,
                    0,
                );
                let state = self.flows.at_mut(slot);
                state.counted_at = Side::Client;
                state.far = Some(FarSide::seen_at(packet.ifindex, view));
                self.pairing.bind(view.key, view.key);
                return (view.key, false);
            }
            if let Some((original, flow)) = translated {
                // A client elsewhere through NAT (a NodePort, SNATed or not): counted here
                // under what the client asked for, the backend named.
                let (slot, _) = flow_entry(
                    &mut self.flows,
                    &mut self.marks,
                    &original,
                    flow,
                    packet.monotonic,
                    packet.ifindex,
                );
                let state = self.flows.at_mut(slot);
                state.counted_at = Side::Server;
                state.far = Some(FarSide::seen_at(packet.ifindex, view));
                self.pairing.bind(view.key, original);
                return (original, true);
            }
            // The client is not on this node: counted here, at the server's veth.
            self.pairing.bind(view.key, view.key);
            return (view.key, true);
        };
        let state = self.flows.peek_mut(&connection).expect("checked above");
        if state.counted_at == Side::Server {
            return (connection, true);
        }
        self.pairing.bind(view.key, connection);
        if state.far.is_none() {
            state.far = Some(FarSide::seen_at(packet.ifindex, view));
        }
        (connection, false)
    }

    /// The connection a view belongs to: another view's, or its own.
    pub(super) fn connection_of(&mut self, view: &FlowKey) -> Option<FlowKey> {
        self.pairing
            .bound_to(view)
            .or_else(|| self.flows.contains(view).then_some(*view))
    }

    /// The API flow of a connection: what the client asked for.
    pub(super) fn flow_of_connection(&self, key: &FlowKey, view: &View) -> Flow {
        if *key == view.key {
            view.flow
        } else {
            flow_from_key(key).unwrap_or(view.flow)
        }
    }

    /// A SYN with a new initial sequence number on a known 5-tuple: a new connection.
    /// The old one is done (an attempt still waiting was given up by the client), and
    /// the new one starts with its own counts and verdict.
    pub(super) fn new_connection_on(&mut self, key: FlowKey, now: Duration) {
        let Some(state) = self.flows.peek_mut(&key) else {
            return;
        };
        let before = state.verdict;
        if state.verdict == VerdictKind::Pending && state.attempt_start.is_some() {
            state.verdict = VerdictKind::Timeout;
            state.reason = format!(
                "{}: the client gave up and connected again from the same port",
                timeout_reason(state, now)
            )
            .into();
            node_outcome(&mut self.context.node, &self.journal, state, before, now);
            Explainer::new(&self.journal, &self.context, &self.pairing).refresh(state, before);
            self.journal
                .record(state, before, FlowEventKind::Timeout, now);
        }
        self.marks.next_generation += 1;
        let (kernel_seen, ifindex, active_at) = (state.kernel_seen, state.ifindex, state.active_at);
        *state = FlowState::new(state.flow, self.marks.next_generation, now, ifindex);
        // Still the most recent flow: it keeps its place on the activity clock.
        state.kernel_seen = kernel_seen;
        state.active_at = active_at;
    }
}
