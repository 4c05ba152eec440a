//! What the server's veth saw of a connection counted at the client's: packets kept as
//! facts, and the answers a datapath delivered into the client past its veth.

use super::*;

impl Tracker {
    /// A packet at the server's veth of a connection counted at the client's: kept as
    /// facts about where the packets went, never counted again.
    pub(super) fn on_far_side(
        &mut self,
        key: FlowKey,
        view: &View,
        packet: &Packet,
        now: Duration,
    ) {
        let Some(slot) = self.flows.find(&key) else {
            return;
        };
        let state = self.flows.at_mut(slot);
        // An answer to a query still waiting at the client's veth.
        let waited_for = packet
            .dns
            .as_ref()
            .filter(|dns| dns.is_response && state.dns.pending.iter().any(|q| q.id == dns.id))
            .cloned();
        let generation = state.generation;
        let far = state
            .far
            .get_or_insert_with(|| FarSide::seen_at(packet.ifindex, view));
        match packet.kind {
            EventKind::Syn => {
                far.syn_at = Some(now);
                self.journal.metrics.packets(PacketKind::SynDelivered, 1);
            }
            EventKind::SynAck => {
                far.syn_ack_at = Some(now);
                far.syn_acks += 1;
            }
            EventKind::Rst if view.sender == Sender::Server => {
                far.rst_at = Some(now);
                far.rsts += 1;
            }
            EventKind::DnsResponse => {
                if let Some(dns) = waited_for {
                    if far.dns_answers.len() == FAR_DNS_ANSWERS {
                        far.dns_answers.remove(0);
                    }
                    far.dns_answers.push((now, dns));
                    self.deadlines.push(Reverse(Deadline {
                        at: (now + tcp::EARLY_ANSWER_WAIT).into(),
                        generation,
                        slot,
                    }));
                }
            }
            _ => {}
        }
    }
}

/// The DNS answers the server's veth saw leave to queries still waiting at the client's
/// veth, [`tcp::EARLY_ANSWER_WAIT`] later: the client's veth sees an answer microseconds
/// after the server's unless a datapath put it into the pod past that veth
/// (`bpf_redirect_peer`). Taken as delivered then; the ones the client's veth did see
/// are dropped.
pub(super) fn dns_answers_past_the_veth(state: &mut FlowState, now: Duration) -> Vec<DnsPacket> {
    let Some(far) = state.far.as_deref_mut() else {
        return Vec::new();
    };
    if far.dns_answers.is_empty() {
        return Vec::new();
    }
    let (due, waiting): (Vec<_>, Vec<_>) = far
        .dns_answers
        .drain(..)
        .partition(|(at, _)| now.saturating_sub(*at) >= tcp::EARLY_ANSWER_WAIT);
    far.dns_answers = waiting;
    due.into_iter()
        .map(|(_, dns)| dns)
        .filter(|dns| state.dns.pending.iter().any(|q| q.id == dns.id))
        .collect()
}
