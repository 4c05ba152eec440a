//! DNS transactions → verdicts: queries matched to responses by id, over UDP or framed
//! from a TCP stream (RFC 7766), each exchange judged on its own.

use std::{net::IpAddr, sync::Arc, time::Duration};

use hickory_proto::op::ResponseCode;
use probe_ebpf::FlowKey;

use super::{
    FlowState, MAX_PENDING_QUERIES, PendingQuery, SEARCH_WINDOW, dns_stream::DnsStream,
    orient::Sender, search::SearchPaths,
};
use crate::{
    decode::{DnsPacket, TcpFacts, rcode_name},
    metrics::Metrics,
    model::{DnsSummary, Protocol, VerdictKind},
};

pub(super) const DNS_PORT: u16 = 53;

/// A flow carrying DNS: UDP to port 53, or a TCP connection that carried DNS messages.
pub(super) fn is_dns(state: &FlowState) -> bool {
    match state.flow.protocol {
        Protocol::Udp => true,
        Protocol::Tcp => {
            state.flow.dst_port == DNS_PORT
                && (state.counts.dns_queries > 0 || state.counts.dns_responses > 0)
        }
    }
}

/// Starts framing one direction of a DNS-over-TCP connection at its first payload byte.
pub(super) fn open_stream(state: &mut FlowState, sender: Sender, first_seq: u32) {
    if state.flow.protocol != Protocol::Tcp || state.flow.dst_port != DNS_PORT {
        return;
    }
    let streams = state.dns.streams.get_or_insert_with(Default::default);
    streams[sender as usize] = Some(DnsStream::new(first_seq));
}

/// The DNS messages whose header and question a DNS-over-TCP segment completed.
pub(super) fn stream_messages(
    state: &mut FlowState,
    sender: Sender,
    tcp: &TcpFacts,
) -> Vec<Vec<u8>> {
    let streams = state.dns.streams.get_or_insert_with(Default::default);
    // A stream whose SYN was not seen starts at the first segment read.
    let stream = streams[sender as usize].get_or_insert_with(|| DnsStream::new(tcp.seq));
    stream
        .push(tcp.seq, tcp.payload_len, &tcp.payload)
        .into_iter()
        .map(|message| message.head)
        .collect()
}

/// Applies one DNS message of the flow (a UDP datagram's, or one framed from TCP).
/// Returns the deadlines to check.
pub(super) fn dns_message(
    state: &mut FlowState,
    search: &mut SearchPaths,
    metrics: &Metrics,
    key: FlowKey,
    dns: &DnsPacket,
    now: Duration,
    dns_timeout: Duration,
) -> Vec<Duration> {
    let client: IpAddr = state.flow.src_ip;
    if !dns.is_response {
        state.counts.dns_queries += 1;
        return on_dns_query(state, dns, now, dns_timeout)
            .into_iter()
            .collect();
    }
    state.counts.dns_responses += 1;
    metrics.dns_response(&rcode_name(dns.rcode));
    let (mut expansion, mut answered) = (false, None);
    match &dns.qname {
        Some(qname) if dns.rcode == ResponseCode::NXDomain => {
            answered = search.answered_in_lookup(client, qname);
            // Held while the lookup may go on: an expansion, or a name tried as it is
            // before the search list.
            expansion = answered.is_none()
                && (!search.expansion_of(qname).is_empty() || search.opens_lookup(client, qname));
        }
        Some(qname) if dns.rcode == ResponseCode::NoError => search.answered(client, qname),
        _ => {}
    }
    let nxdomain = match (expansion, answered) {
        (true, _) => NxdomainIs::Held(now),
        (false, Some(name)) => {
            NxdomainIs::Expansion(format!("{name} was answered (NOERROR) in the same lookup"))
        }
        (false, None) => NxdomainIs::Failure,
    };
    on_dns_response(state, dns, nxdomain, now);
    if expansion && let Some(qname) = &dns.qname {
        search.hold(client, qname, (key, state.generation), now);
        return vec![now + SEARCH_WINDOW];
    }
    Vec::new()
}

pub(super) fn on_dns_query(
    state: &mut FlowState,
    dns: &DnsPacket,
    now: Duration,
    dns_timeout: Duration,
) -> Option<Duration> {
    if state.dns.pending.iter().any(|q| q.id == dns.id) {
        // A retransmission of a query still waiting.
        return None;
    }
    if state.dns.pending.is_empty() && state.dns.held.is_none() {
        // A new exchange on a settled socket (a resolver keeping one socket): judged on
        // its own, an earlier failure does not stick to the 5-tuple.
        state.dns.failure = None;
        state.dns.success = None;
        state.dns.expansion = None;
    }
    if state.dns.pending.len() == MAX_PENDING_QUERIES {
        state.dns.pending.remove(0);
    }
    state.dns.pending.push(PendingQuery {
        id: dns.id,
        qname: dns.qname.clone(),
        qtype: dns.qtype.clone(),
        sent: now,
    });
    state.verdict = VerdictKind::Pending;
    state.reason = format!(
        "DNS query for {} sent, waiting for an answer",
        dns.qname.as_deref().unwrap_or("?")
    )
    .into();
    Some(now + dns_timeout)
}

/// What an NXDOMAIN means for its flow, from the lookup it belongs to.
pub(super) enum NxdomainIs {
    /// A search-path expansion: held until the lookup goes on or not (since when).
    Held(Duration),
    /// No failure: another name of its lookup exists (why, in words).
    Expansion(String),
    /// The lookup's failure.
    Failure,
}

pub(super) fn on_dns_response(
    state: &mut FlowState,
    dns: &DnsPacket,
    nxdomain: NxdomainIs,
    now: Duration,
) {
    let query = state
        .dns
        .pending
        .iter()
        .position(|q| q.id == dns.id)
        .map(|i| state.dns.pending.remove(i));
    if let Some(query) = &query {
        state.dns.answered_in = Some(now.saturating_sub(query.sent));
    }
    let qname = dns
        .qname
        .clone()
        .or_else(|| query.as_ref().and_then(|q| q.qname.clone()))
        .unwrap_or_else(|| "?".into());
    let qtype = dns
        .qtype
        .clone()
        .or_else(|| query.as_ref().and_then(|q| q.qtype.clone()))
        .unwrap_or_else(|| "?".into());
    let summary = DnsSummary {
        id: dns.id,
        qname,
        qtype,
        rcode: Some(rcode_name(dns.rcode)),
    };
    if dns.truncated && state.flow.protocol == Protocol::Udp {
        // The answer did not fit: the lookup's verdict is its retry's over TCP.
        state.dns.truncated = Some(Box::new((summary, now, dns.rcode)));
        settle_dns(state);
        return;
    }
    match (rcode_verdict(dns.rcode), nxdomain) {
        (VerdictKind::Ok, _) => {
            // The latest answer is the flow's: a busy socket's earlier failure was
            // counted when it came and does not stick.
            state.dns.failure = None;
            state.dns.success = Some(summary);
        }
        (VerdictKind::Nxdomain, NxdomainIs::Held(since)) => {
            state.dns.held = Some(Box::new((summary, since)))
        }
        (VerdictKind::Nxdomain, NxdomainIs::Expansion(why)) => {
            state.dns.expansion = Some(Box::new((summary, why)))
        }
        (failure, _) => state.dns.failure = Some((failure, summary)),
    }
    settle_dns(state);
}

fn rcode_verdict(rcode: ResponseCode) -> VerdictKind {
    match rcode {
        ResponseCode::NoError => VerdictKind::Ok,
        ResponseCode::NXDomain => VerdictKind::Nxdomain,
        ResponseCode::ServFail => VerdictKind::Servfail,
        ResponseCode::Refused => VerdictKind::DnsRefused,
        _ => VerdictKind::DnsError,
    }
}

/// A DNS flow's verdict from its latest answers: a failure since the last success, else
/// OK. Each answer is judged when it comes, whatever else is in flight on the socket (a
/// forwarder's always has something); with no answer yet, it stays pending.
pub(super) fn settle_dns(state: &mut FlowState) {
    let answered =
        state.dns.failure.is_some() || state.dns.success.is_some() || state.dns.expansion.is_some();
    if !state.dns.pending.is_empty() && !answered {
        return;
    }
    if let Some((summary, _, _)) = state.dns.truncated.as_deref() {
        state.verdict = VerdictKind::Pending;
        state.reason = format!(
            "the answer for {} was truncated (TC): waiting for the client's retry over TCP",
            summary.qname
        )
        .into();
        return;
    }
    if let Some((summary, _)) = state.dns.held.as_deref() {
        state.verdict = VerdictKind::Pending;
        state.reason = format!(
            "NXDOMAIN for {}, a search-path expansion: waiting to see whether the lookup goes on",
            summary.qname
        )
        .into();
        return;
    }
    if let Some((verdict, summary)) = &state.dns.failure {
        state.verdict = *verdict;
        state.reason = Arc::from(match verdict {
            VerdictKind::Nxdomain => format!("{} does not exist (NXDOMAIN)", summary.qname),
            VerdictKind::Servfail => format!("DNS server failed on {} (SERVFAIL)", summary.qname),
            VerdictKind::DnsRefused => {
                format!(
                    "DNS server refused the query for {} (REFUSED)",
                    summary.qname
                )
            }
            VerdictKind::DnsTimeout => format!("no answer to the DNS query for {}", summary.qname),
            _ => format!(
                "DNS server answered {} with {}",
                summary.qname,
                summary.rcode.as_deref().unwrap_or("an error")
            ),
        });
    } else if let Some(summary) = &state.dns.success {
        state.verdict = VerdictKind::Ok;
        state.reason = format!("{} {} answered (NOERROR)", summary.qname, summary.qtype).into();
    } else if let Some((summary, why)) = state.dns.expansion.as_deref() {
        state.verdict = VerdictKind::Ok;
        state.reason = format!(
            "NXDOMAIN for {} was a search-path expansion, not a failure: {why}",
            summary.qname
        )
        .into();
    }
}

/// A held NXDOMAIN whose lookup did not go on in time: the lookup failed on it, unless
/// another of its names was answered.
pub(super) fn expire_held(state: &mut FlowState, search: &SearchPaths, now: Duration) -> bool {
    match state.dns.held.as_deref() {
        Some((_, since)) if now.saturating_sub(*since) >= SEARCH_WINDOW => {}
        _ => return false,
    }
    let (summary, _) = *state.dns.held.take().expect("checked above");
    match search.answered_in_lookup(state.flow.src_ip, &summary.qname) {
        Some(name) => {
            let why = format!("{name} was answered (NOERROR) in the same lookup");
            state.dns.expansion = Some(Box::new((summary, why)));
        }
        None => state.dns.failure = Some((VerdictKind::Nxdomain, summary)),
    }
    settle_dns(state);
    true
}

/// What the TCP retry of a truncated UDP answer came to.
pub(super) enum Retry {
    /// None was tried: the client kept what fit (`dig +ignore`, musl before 1.2.4).
    NotTried,
    /// Its answer, with the rcode that is now the lookup's.
    Answered(DnsPacket),
    /// The connection failed (TIMEOUT, REFUSED, UNREACHABLE), or nothing came in time.
    Failed(&'static str),
}

/// Settles a flow whose UDP answer was truncated, from its retry over TCP. Returns
/// whether it was waiting for one.
pub(super) fn retried_over_tcp(state: &mut FlowState, retry: Retry, now: Duration) -> bool {
    let Some((summary, _, rcode)) = state.dns.truncated.take().map(|held| *held) else {
        return false;
    };
    match retry {
        Retry::NotTried => {
            let kept = DnsPacket {
                id: summary.id,
                is_response: true,
                rcode,
                qname: Some(summary.qname.clone()),
                qtype: Some(summary.qtype.clone()),
                truncated: false,
            };
            on_dns_response(state, &kept, NxdomainIs::Failure, now);
            state.reason = format!(
                "{}, truncated (TC): the client kept what fit and did not retry over TCP",
                state.reason
            )
            .into();
        }
        Retry::Answered(dns) => {
            let dns = DnsPacket {
                id: summary.id,
                truncated: false,
                ..dns
            };
            on_dns_response(state, &dns, NxdomainIs::Failure, now);
            state.reason =
                format!("{}, over TCP after a truncated UDP answer", state.reason).into();
        }
        Retry::Failed(how) => {
            state.dns.tcp_retry_failed = true;
            state.dns.failure = Some((VerdictKind::DnsTimeout, summary.clone()));
            settle_dns(state);
            state.reason = format!(
                "the UDP answer for {} was truncated (TC) and its retry over TCP {how}",
                summary.qname
            )
            .into();
        }
    }
    true
}

/// Expires unanswered queries, and a truncated answer whose retry did not settle it in
/// time: `retry_since` is when the client last tried TCP to this server, if ever.
pub(super) fn expire_dns(
    state: &mut FlowState,
    now: Duration,
    dns_timeout: Duration,
    retry_since: Option<Duration>,
) -> bool {
    if let Some((_, since, _)) = state.dns.truncated.as_deref()
        && now.saturating_sub(*since) >= dns_timeout
    {
        let retry = if retry_since.is_some_and(|at| at >= *since) {
            Retry::Failed("got no answer")
        } else {
            Retry::NotTried
        };
        return retried_over_tcp(state, retry, now);
    }
    if state.dns.pending.is_empty() {
        return false;
    }
    let (expired, waiting): (Vec<_>, Vec<_>) = state
        .dns
        .pending
        .drain(..)
        .partition(|q| now.saturating_sub(q.sent) >= dns_timeout);
    state.dns.pending = waiting;
    let Some(query) = expired.last() else {
        return false;
    };
    state.dns.failure = Some((
        VerdictKind::DnsTimeout,
        DnsSummary {
            id: query.id,
            qname: query.qname.clone().unwrap_or_else(|| "?".into()),
            qtype: query.qtype.clone().unwrap_or_else(|| "?".into()),
            rcode: None,
        },
    ));
    settle_dns(state);
    true
}

pub(super) fn dns_summary(state: &FlowState) -> Option<DnsSummary> {
    if !is_dns(state) {
        return None;
    }
    if state.verdict == VerdictKind::Pending
        && let Some(query) = state.dns.pending.last()
    {
        return Some(DnsSummary {
            id: query.id,
            qname: query.qname.clone().unwrap_or_else(|| "?".into()),
            qtype: query.qtype.clone().unwrap_or_else(|| "?".into()),
            rcode: None,
        });
    }
    match (&state.dns.failure, &state.dns.success) {
        (Some((_, summary)), _) if state.verdict.is_failure() => Some(summary.clone()),
        (_, Some(summary)) => Some(summary.clone()),
        (Some((_, summary)), None) => Some(summary.clone()),
        (None, None) => state
            .dns
            .held
            .as_deref()
            .map(|(summary, _)| summary)
            .or(state.dns.expansion.as_deref().map(|(summary, _)| summary))
            .cloned(),
    }
}
