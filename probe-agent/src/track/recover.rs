//! Lost events, recovered exactly: each event carries its hook's kernel counters, so the
//! gap from the last one read is what was lost before it; the kernel's map, read once a
//! second, gives what was lost after the last one.

use std::time::Duration;

use probe_ebpf::{EventKind, FlowCounters};

use super::{
    FlowState, PendingQuery,
    dns::settle_dns,
    orient::Sender,
    tcp::{on_icmp_unreachable, on_rst, on_syn_ack},
};
use crate::{
    decode::{HookCount, Packet},
    metrics::{Metrics, PacketKind},
    model::{Counts, DnsSummary, VerdictKind},
};

/// The kernel counts last seen for a flow at the hooks it is counted at, per kind and,
/// for what both ends send (RSTs, DNS-over-TCP segments), per sender: each is one hook.
/// (32 bits each, saturating: every flow of the table carries them, and no connection
/// sends 4 billion SYNs.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    syn: u32,
    syn_ack: u32,
    rst: [u32; 2],
    icmp_unreachable: u32,
    dns_queries: u32,
    dns_responses: u32,
    dns_tcp_segments: [u32; 2],
}

/// A kernel count as [`Seen`] keeps it.
fn narrow(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

impl Seen {
    fn field(&mut self, kind: EventKind, sender: Sender) -> &mut u32 {
        match kind {
            EventKind::Syn => &mut self.syn,
            EventKind::SynAck => &mut self.syn_ack,
            EventKind::Rst => &mut self.rst[sender as usize],
            EventKind::IcmpUnreachable => &mut self.icmp_unreachable,
            EventKind::DnsQuery => &mut self.dns_queries,
            EventKind::DnsResponse => &mut self.dns_responses,
            EventKind::DnsTcpSegment => &mut self.dns_tcp_segments[sender as usize],
        }
    }

    /// Takes in `packet`'s counters; returns how many packets of its kind were lost
    /// before it. A hook counting since before `horizon` (when flows were last evicted)
    /// may hold an evicted flow's counts: its first event recovers nothing.
    pub fn take(&mut self, packet: &Packet, sender: Sender, horizon: Duration) -> u64 {
        let kernel = packet.counted.of_kind;
        // No counters (the kernel's map was full): nothing is known.
        if kernel == 0 {
            return 0;
        }
        let seen = self.field(packet.kind, sender);
        let lost = if *seen == 0 {
            if packet.counted.since < horizon {
                0
            } else {
                kernel - 1
            }
        } else {
            kernel.saturating_sub(u64::from(*seen) + 1)
        };
        *seen = (*seen).max(narrow(kernel));
        lost
    }
}

/// Adds `lost` packets of `kind` to the flow's counts.
pub fn add_lost(counts: &mut Counts, kind: EventKind, lost: u64) {
    match kind {
        EventKind::Syn => counts.syn += lost,
        EventKind::SynAck => counts.syn_ack += lost,
        EventKind::Rst => counts.rst += lost,
        EventKind::IcmpUnreachable => counts.icmp_unreachable += lost,
        EventKind::DnsQuery => counts.dns_queries += lost,
        EventKind::DnsResponse => counts.dns_responses += lost,
        // Segments are framed into messages; a lost one loses the stream's framing.
        EventKind::DnsTcpSegment => {}
    }
}

/// Applies what one hook's kernel counters hold and the events never brought, as sent
/// by `sender`. Returns whether anything was recovered.
pub fn recover_lost(
    state: &mut FlowState,
    kernel: &FlowCounters,
    sender: Sender,
    at: Duration,
    metrics: &Metrics,
) -> bool {
    let mut recovered = false;
    let seen = &mut state.kernel_seen;
    let counts = &mut state.counts;
    let mut top_up = |kind: EventKind, packet_kind: PacketKind| -> bool {
        let kernel = HookCount::of(kernel, kind).of_kind;
        let seen = seen.field(kind, sender);
        if kernel > u64::from(*seen) {
            let lost = kernel - u64::from(*seen);
            metrics.packets(packet_kind, lost);
            add_lost(counts, kind, lost);
            *seen = narrow(kernel);
            recovered = true;
            true
        } else {
            false
        }
    };
    let syn = top_up(EventKind::Syn, PacketKind::Syn);
    let syn_ack = top_up(EventKind::SynAck, PacketKind::SynAck);
    let rst = top_up(EventKind::Rst, PacketKind::Rst);
    let icmp = top_up(EventKind::IcmpUnreachable, PacketKind::IcmpUnreachable);
    let queries = top_up(EventKind::DnsQuery, PacketKind::DnsQuery);
    let responses = top_up(EventKind::DnsResponse, PacketKind::DnsResponse);
    let counts = state.counts;
    if syn && state.attempt_start.is_none() {
        state.attempt_start = Some(Duration::from_nanos(kernel.first_seen_ns));
        state.attempt_syns = counts.syn;
        // An answer that waited for this SYN answers it.
        match state.early_answer.take().map(|answer| *answer) {
            Some((EventKind::SynAck, ack, at)) => on_syn_ack(state, Some(ack), at),
            Some((_, _, at)) => super::tcp::refused(state, at),
            None => {}
        }
        // A SYN whose event was lost, of a connection already answered (its SYN-ACK, RST
        // or ICMP came through): the answer stands, nothing is pending again.
        let answered = counts.syn_ack > 0 || counts.rst > 0 || counts.icmp_unreachable > 0;
        if !answered {
            state.verdict = VerdictKind::Pending;
        } else if state.verdict == VerdictKind::Reset && counts.syn_ack == 0 {
            // The RST answered that SYN: refused, not an established connection reset.
            state.verdict = VerdictKind::Refused;
            state.reason = "SYN answered by RST".into();
        }
    } else if syn {
        state.attempt_syns += kernel
            .syn
            .min(counts.syn)
            .saturating_sub(state.attempt_syns);
    }
    if syn_ack {
        on_syn_ack(state, None, at);
    } else if rst {
        on_rst(state, sender, None, at);
    } else if icmp {
        on_icmp_unreachable(state);
    } else if responses || queries {
        if queries && state.dns.pending.is_empty() && counts.dns_queries > counts.dns_responses {
            // A query whose event was lost: it waits, unnamed, for its answer or timeout.
            state.dns.pending.push(PendingQuery {
                id: 0,
                qname: None,
                qtype: None,
                sent: Duration::from_nanos(kernel.first_seen_ns),
            });
            state.verdict = VerdictKind::Pending;
        }
        // The rcodes the kernel counted tell the worst outcome even without the names.
        let failure = if kernel.dns_nxdomain > 0 {
            Some(VerdictKind::Nxdomain)
        } else if kernel.dns_servfail > 0 {
            Some(VerdictKind::Servfail)
        } else if kernel.dns_refused > 0 {
            Some(VerdictKind::DnsRefused)
        } else if kernel.dns_other_error > 0 {
            Some(VerdictKind::DnsError)
        } else {
            None
        };
        if responses && counts.dns_responses >= counts.dns_queries {
            state.dns.pending.clear();
            let summary = DnsSummary {
                id: 0,
                qname: "?".into(),
                qtype: "?".into(),
                rcode: Some(failure.map_or("NOERROR", |v| v.as_str()).into()),
            };
            match failure {
                Some(verdict) => state.dns.failure = Some((verdict, summary)),
                None => state.dns.success = Some(summary),
            }
            settle_dns(state);
        }
    }
    if recovered && state.reason.is_empty() {
        state.reason = "recovered from the kernel's counters (events were lost)".into();
    }
    recovered
}
