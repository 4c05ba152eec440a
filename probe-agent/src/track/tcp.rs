//! TCP handshakes → verdicts: the SYN, SYN-ACK, RST and ICMP errors of a connection
//! attempt, told apart by sequence numbers and by which end sent them.

use std::{sync::Arc, time::Duration};

use probe_ebpf::EventKind;

use super::{
    FlowState, SYN_RETRANSMISSION_SLACK,
    orient::Sender,
    text::{self, Millis, Secs, fixed_text, text},
};
use crate::{decode::TcpFacts, model::Protocol, model::VerdictKind};

/// A client whose SYN-ACK came later than this, and that answered it with a bare RST,
/// had given up: Linux's first SYN retransmission is due 1 s after the SYN (RFC 6298).
const LATE_ANSWER: Duration = Duration::from_secs(1);

/// ACK flag (RFC 9293 §3.1).
const TCP_ACK: u8 = 0x10;

/// How long an answer read before its SYN waits for it: the two hooks' events are
/// microseconds apart; past this, the SYN was not seen and the answer stands alone.
pub(super) const EARLY_ANSWER_WAIT: Duration = Duration::from_millis(200);

pub(super) fn secs(d: Duration) -> Secs {
    Secs(d)
}

pub(super) fn millis(d: Duration) -> Millis {
    Millis(d)
}

/// What a SYN is to the flow that has its 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SynIs {
    /// The first SYN, or a retransmission of the current attempt's (same ISN).
    ThisConnection,
    /// Another initial sequence number: a new connection on a reused 5-tuple.
    NewConnection,
}

pub(super) fn syn_is(state: &FlowState, seq: Option<u32>) -> SynIs {
    if state.attempt_start.is_none() {
        return SynIs::ThisConnection;
    }
    match (state.isn, seq) {
        (Some(isn), Some(seq)) if isn != seq => SynIs::NewConnection,
        (Some(_), Some(_)) => SynIs::ThisConnection,
        // Without sequence numbers: a SYN after the attempt was answered is a new one.
        _ if !matches!(state.verdict, VerdictKind::Pending | VerdictKind::Timeout) => {
            SynIs::NewConnection
        }
        _ => SynIs::ThisConnection,
    }
}

/// Returns the deadline to check when this SYN starts the connection's attempt.
pub(super) fn on_syn(
    state: &mut FlowState,
    seq: Option<u32>,
    now: Duration,
    syn_timeout: Duration,
) -> Option<Duration> {
    if state.attempt_start.is_some() {
        // A retransmission (the same ISN), whatever the verdict: one that crossed the
        // SYN-ACK starts no phantom attempt.
        state.attempt_syns += 1;
        match state.verdict {
            VerdictKind::Pending => {
                state.reason = text::numbered("SYNs sent", state.attempt_syns, |n| {
                    text!("{n} SYNs sent, waiting for an answer")
                });
            }
            VerdictKind::Timeout if state.answered_at.is_none() => {
                state.reason = timeout_reason(state, now);
            }
            _ => {}
        }
        return None;
    }
    state.verdict = VerdictKind::Pending;
    state.attempt_start = Some(now);
    state.attempt_syns += 1;
    state.isn = seq;
    state.reason = fixed_text!("SYN sent, waiting for an answer");
    if let Some(seq) = seq {
        open_client_stream(state, seq);
    }
    // An answer read before this SYN answers it now, if it acknowledges this SYN.
    if let Some((kind, ack, at)) = state.early_answer.take().map(|answer| *answer)
        && seq.is_none_or(|seq| ack == seq.wrapping_add(1))
    {
        match kind {
            EventKind::SynAck => on_syn_ack(state, Some(ack), at.max(now)),
            _ => refused(state, at.max(now)),
        }
    }
    Some(now + syn_timeout + SYN_RETRANSMISSION_SLACK)
}

fn open_client_stream(state: &mut FlowState, seq: u32) {
    if state.flow.protocol == Protocol::Tcp && state.flow.dst_port == super::dns::DNS_PORT {
        super::dns::open_stream(state, Sender::Client, seq.wrapping_add(1));
    }
}

pub(super) fn timeout_reason(state: &FlowState, now: Duration) -> Arc<str> {
    let elapsed = now.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
    let plural = if state.attempt_syns == 1 { "" } else { "s" };
    text!(
        "{} SYN{plural} in {} and no answer",
        state.attempt_syns,
        secs(elapsed)
    )
}

/// A SYN-ACK answers the attempt whose ISN it acknowledges; one acknowledging another
/// ISN answered an earlier connection on the same 5-tuple and changes nothing.
pub(super) fn on_syn_ack(state: &mut FlowState, ack: Option<u32>, now: Duration) {
    if state.attempt_start.is_none()
        && let Some(ack) = ack
    {
        state.early_answer = Some(Box::new((EventKind::SynAck, ack, now)));
        return;
    }
    if let (Some(isn), Some(ack)) = (state.isn, ack)
        && ack != isn.wrapping_add(1)
    {
        return;
    }
    if matches!(state.verdict, VerdictKind::Pending | VerdictKind::Timeout) {
        let took = now.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
        state.reason = if state.verdict == VerdictKind::Timeout || state.attempt_syns > 1 {
            text!(
                "handshake completed in {} (slow: {} SYNs)",
                millis(took),
                state.attempt_syns
            )
        } else {
            text::numbered("handshake completed", text::whole_millis(took), |ms| {
                text!(
                    "handshake completed in {}",
                    millis(Duration::from_millis(ms))
                )
            })
        };
        state.verdict = VerdictKind::Ok;
        state.answered_at = Some(now);
    }
}

pub(super) fn refused(state: &mut FlowState, now: Duration) {
    let took = now.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
    state.verdict = VerdictKind::Refused;
    state.reason = text::numbered("SYN answered by RST", text::whole_millis(took), |ms| {
        text!(
            "SYN answered by RST in {}",
            millis(Duration::from_millis(ms))
        )
    });
}

/// A RST means what its sender makes it: the server refusing a SYN (REFUSED) or
/// resetting a connection (RESET); the client aborting (ABORTED before any answer, no
/// failure after the handshake) or answering a SYN-ACK that came after it gave up.
pub(super) fn on_rst(state: &mut FlowState, sender: Sender, tcp: Option<&TcpFacts>, now: Duration) {
    let in_handshake = state.attempt_start.is_some()
        && matches!(state.verdict, VerdictKind::Pending | VerdictKind::Timeout);
    match sender {
        Sender::Server => match state.verdict {
            _ if in_handshake => refused(state, now),
            // A server RST before the SYN was read: it answers that SYN.
            _ if state.attempt_start.is_none() && state.flow.protocol == Protocol::Tcp => {
                if let Some(tcp) = tcp {
                    state.early_answer = Some(Box::new((EventKind::Rst, tcp.ack, now)));
                } else {
                    refused(state, now);
                }
            }
            VerdictKind::Refused | VerdictKind::Reset => {}
            _ => {
                state.verdict = VerdictKind::Reset;
                state.reason = "the server reset the connection (RST after the handshake)".into();
            }
        },
        Sender::Client => {
            let bare = tcp.is_some_and(|tcp| tcp.flags & TCP_ACK == 0);
            let start = state.attempt_start.unwrap_or(state.first_seen);
            match state.verdict {
                VerdictKind::Pending if state.attempt_start.is_some() => {
                    state.verdict = VerdictKind::Aborted;
                    state.reason = format!(
                        "the client reset its connection attempt after {} SYN{} in {}, before any answer",
                        state.attempt_syns,
                        if state.attempt_syns == 1 { "" } else { "s" },
                        millis(now.saturating_sub(start))
                    )
                    .into();
                }
                VerdictKind::Ok
                    if bare
                        && state
                            .answered_at
                            .is_some_and(|at| at.saturating_sub(start) >= LATE_ANSWER) =>
                {
                    let took = state.answered_at.unwrap_or(now).saturating_sub(start);
                    state.verdict = VerdictKind::Timeout;
                    state.reason = format!(
                        "the SYN-ACK came {} after the first SYN, after the client had given up: its RST answered it",
                        secs(took)
                    )
                    .into();
                }
                VerdictKind::Ok if state.answered_at.is_some() => {
                    let took = state.answered_at.unwrap_or(now).saturating_sub(start);
                    state.reason = if bare {
                        format!(
                            "handshake answered in {}; the client reset it at once (a half-open check)",
                            millis(took)
                        )
                    } else {
                        format!(
                            "handshake completed in {}; the client then aborted the connection (RST)",
                            millis(took)
                        )
                    }
                    .into();
                }
                // No start seen: the client's own reset of a connection, no failure.
                VerdictKind::Pending => {
                    state.verdict = VerdictKind::Aborted;
                    state.reason = "the client reset a connection whose start was not seen".into();
                }
                _ => {}
            }
        }
    }
}

pub(super) fn on_icmp_unreachable(state: &mut FlowState) {
    if state.verdict == VerdictKind::Ok && state.flow.protocol == Protocol::Tcp {
        // An established connection: ICMP errors there are not a connect failure.
        return;
    }
    state.verdict = VerdictKind::Unreachable;
    state.reason = match state.flow.protocol {
        Protocol::Tcp => "SYN answered by ICMP destination unreachable",
        Protocol::Udp => "DNS query answered by ICMP destination unreachable",
    }
    .into();
    state.dns.pending.clear();
}

/// An answer whose SYN never came: judged on its own, as a SYN-ACK (OK) or a RST of a
/// connection not seen starting (RESET).
pub(super) fn expire_early_answer(state: &mut FlowState, now: Duration) -> bool {
    let Some((kind, _, at)) = state.early_answer.as_deref().copied() else {
        return false;
    };
    if state.attempt_start.is_some() || now.saturating_sub(at) < EARLY_ANSWER_WAIT {
        return false;
    }
    state.early_answer = None;
    if kind == EventKind::SynAck {
        state.verdict = VerdictKind::Ok;
        state.answered_at = Some(at);
        state.reason = "SYN-ACK seen, its SYN was not".into();
    } else {
        state.verdict = VerdictKind::Reset;
        state.reason = "the server reset a connection whose start was not seen".into();
    }
    true
}

/// Linux sends an unanswered SYN again, and a SYN-ACK whose ACK never came, 1 s after
/// the first (RFC 6298's initial RTO): a window past that with neither end sending
/// again says the handshake completed.
pub(super) const RETRANSMISSION_WINDOW: Duration = Duration::from_millis(1500);

/// What an answer seen only at the server's veth says of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PastTheVeth {
    /// Not that case: the server's veth saw no answer to this attempt.
    No,
    /// Too early to tell: ask again then.
    WaitUntil(Duration),
    /// The answer (a SYN-ACK or a RST) arrived: now applied, with this many counted.
    Delivered(EventKind, u32),
    /// The server sent it again: it never arrived.
    Lost,
}

/// A pending attempt whose SYN timeout has run out.
pub(super) fn syn_due(state: &FlowState, now: Duration, syn_timeout: Duration) -> bool {
    state.verdict == VerdictKind::Pending
        && state.attempt_start.is_some_and(|start| {
            now.saturating_sub(start) >= syn_timeout + SYN_RETRANSMISSION_SLACK
        })
}

/// A SYN-ACK or RST that left the server's veth and never showed at the client's was
/// either dropped in between or delivered past the client veth's egress hook: eBPF
/// datapaths (Cilium, Calico eBPF) put it straight into the pod with `bpf_redirect_peer`.
/// The server tells which: without the client's ACK it sends the SYN-ACK again, and it
/// answers the client's next SYN with another SYN-ACK or RST. None within
/// [`RETRANSMISSION_WINDOW`]: it arrived, and is counted once, here. Called when the SYN
/// timeout runs out.
pub(super) fn answer_past_the_veth(state: &mut FlowState, now: Duration) -> PastTheVeth {
    let (Some(attempt), Some(far)) = (state.attempt_start, state.far.as_deref()) else {
        return PastTheVeth::No;
    };
    let this_attempt = |at: Option<Duration>| at.filter(|at| *at >= attempt);
    let (kind, answered, sent) = match (this_attempt(far.syn_ack_at), this_attempt(far.rst_at)) {
        (Some(at), _) => (EventKind::SynAck, at, far.syn_acks),
        (None, Some(at)) => (EventKind::Rst, at, far.rsts),
        (None, None) => return PastTheVeth::No,
    };
    if sent > 1 {
        return PastTheVeth::Lost;
    }
    let sure = answered + RETRANSMISSION_WINDOW;
    if now < sure {
        return PastTheVeth::WaitUntil(sure);
    }
    let what = if kind == EventKind::SynAck {
        state.counts.syn_ack += u64::from(sent);
        on_syn_ack(state, None, answered);
        "SYN-ACK"
    } else {
        state.counts.rst += u64::from(sent);
        refused(state, answered);
        "RST"
    };
    state.reason = format!(
        "{}; the {what} went into the client past its veth (a datapath redirecting into \
         pods), and neither end sent again",
        state.reason
    )
    .into();
    PastTheVeth::Delivered(kind, sent)
}

pub(super) fn expire_syn(state: &mut FlowState, now: Duration, syn_timeout: Duration) -> bool {
    let Some(start) = state.attempt_start else {
        return false;
    };
    if state.verdict != VerdictKind::Pending
        || now.saturating_sub(start) < syn_timeout + SYN_RETRANSMISSION_SLACK
    {
        return false;
    }
    state.verdict = VerdictKind::Timeout;
    state.reason = timeout_reason(state, now);
    true
}
