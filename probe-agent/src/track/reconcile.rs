//! The kernel's per-hook counters against what the events said: what was lost is
//! recovered and its transition applied.

use super::*;

impl Tracker {
    /// Tops up counts from the kernel's per-hook counters: what a hook counted beyond the
    /// last event read from it was lost, once the ring has been read past it (its last
    /// packet is not newer than `read_up_to`), and the transition it would have caused
    /// is applied now.
    pub fn reconcile(
        &mut self,
        kernel: impl IntoIterator<Item = (HookKey, FlowCounters)>,
        read_up_to: Duration,
        now: Duration,
    ) {
        self.journal.clock.resync();
        for (hook, counters) in kernel {
            let last_seen = Duration::from_nanos(counters.last_seen_ns);
            if last_seen > read_up_to {
                continue;
            }
            for (key, sender, side, counters) in self.orient_hook(&hook, &counters) {
                self.recover(key, sender, side, &counters, hook.ifindex, now);
            }
        }
    }

    /// Applies what one hook counted for connection `key` and its events never brought.
    pub(super) fn recover(
        &mut self,
        key: FlowKey,
        sender: Sender,
        side: Side,
        counters: &FlowCounters,
        ifindex: u32,
        now: Duration,
    ) {
        let last_seen = Duration::from_nanos(counters.last_seen_ns);
        let slot = if let Some(slot) = self.flows.find(&key) {
            slot
        } else {
            // Created by events that were all lost. Only recent activity brings a
            // flow back, and only one that cannot be an evicted flow's counts.
            let first_seen = Duration::from_nanos(counters.first_seen_ns);
            if now.saturating_sub(last_seen) > RECOVERY_WINDOW
                || first_seen < self.marks.eviction_horizon
            {
                return;
            }
            let Ok(flow) = flow_from_key(&key) else {
                return;
            };
            let (slot, _) = flow_entry(
                &mut self.flows,
                &mut self.marks,
                &key,
                flow,
                first_seen,
                ifindex,
            );
            self.flows.at_mut(slot).counted_at = side;
            slot
        };
        let state = self.flows.at_mut(slot);
        let before = state.verdict;
        let recovered =
            recover::recover_lost(state, counters, sender, last_seen, &self.journal.metrics);
        if recovered {
            state.last_seen = state.last_seen.max(last_seen);
            // Active again: marked, and made the most recent below, for the eviction
            // order and for readers.
            self.marks.mark_active(state, last_seen);
            // A recovered flow still waiting gets its timeout like any other.
            if state.verdict == VerdictKind::Pending {
                let (start, timeout) = match state.flow.protocol {
                    Protocol::Tcp => (
                        state.attempt_start,
                        self.config.syn_timeout + SYN_RETRANSMISSION_SLACK,
                    ),
                    Protocol::Udp => (
                        state.dns.pending.first().map(|q| q.sent),
                        self.config.dns_timeout,
                    ),
                };
                if let Some(start) = start {
                    self.deadlines.push(Reverse(Deadline {
                        at: (start + timeout).into(),
                        generation: state.generation,
                        slot,
                    }));
                }
            }
            Explainer::new(&self.journal, &self.context, &self.pairing).refresh(state, before);
            self.journal
                .record(state, before, FlowEventKind::Recovered, now);
            self.flows.touch(slot);
        }
    }

    /// What a kernel hook's counters hold for each connection they belong to: a hook
    /// sees one direction of a tuple, so what the client sent (SYNs, queries) is the
    /// tuple's connection, what the server sent (SYN-ACKs, responses) the reversed
    /// tuple's, and an ICMP error the quoted tuple's. Only where the connection is counted
    /// (not the far side of one counted at the client's veth); with who sent them and at
    /// which end's veth.
    pub(super) fn orient_hook(
        &mut self,
        hook: &HookKey,
        counters: &FlowCounters,
    ) -> Vec<(FlowKey, Sender, Side, FlowCounters)> {
        let tuple = hook.tuple;
        let times = FlowCounters {
            first_seen_ns: counters.first_seen_ns,
            last_seen_ns: counters.last_seen_ns,
            ..FlowCounters::default()
        };
        let mut client = FlowCounters {
            syn: counters.syn,
            dns_queries: counters.dns_queries,
            ..times
        };
        let icmp = FlowCounters {
            icmp_unreachable: counters.icmp_unreachable,
            ..times
        };
        let mut server = FlowCounters {
            syn_ack: counters.syn_ack,
            dns_responses: counters.dns_responses,
            dns_nxdomain: counters.dns_nxdomain,
            dns_servfail: counters.dns_servfail,
            dns_refused: counters.dns_refused,
            dns_other_error: counters.dns_other_error,
            ..times
        };
        // Both ends send RSTs and DNS-over-TCP segments: the connection known decides.
        let from_client = if self.connection_of(&tuple).is_some() {
            true
        } else if self.connection_of(&tuple.reversed()).is_some() {
            false
        } else {
            tuple.dst_port < tuple.src_port
        };
        let either = if from_client {
            &mut client
        } else {
            &mut server
        };
        either.rst = counters.rst;
        either.dns_tcp_segments = counters.dns_tcp_segments;
        let from_pod = hook.direction == probe_ebpf::Direction::FromPod as u32;
        [
            (tuple, Sender::Client, client),
            (tuple, Sender::Server, icmp),
            (tuple.reversed(), Sender::Server, server),
        ]
        .into_iter()
        .filter(|(_, _, counts)| {
            counts.syn
                + counts.syn_ack
                + counts.rst
                + counts.icmp_unreachable
                + counts.dns_queries
                + counts.dns_responses
                > 0
        })
        .filter_map(|(key, sender, counts)| {
            // An ICMP error enters the client's pod; anything else leaves its sender's.
            let client_side = if counts.icmp_unreachable > 0 {
                !from_pod
            } else {
                from_pod == (sender == Sender::Client)
            };
            if client_side {
                return Some((key, sender, Side::Client, counts));
            }
            // The server's veth: counted here only for a connection whose client is
            // elsewhere.
            match self.connection_of(&key) {
                Some(connection) => self
                    .flows
                    .peek(&connection)
                    .filter(|state| state.counted_at == Side::Server)
                    .map(|_| (connection, sender, Side::Server, counts)),
                None => Some((key, sender, Side::Server, counts)),
            }
        })
        .collect()
    }
}
