use std::{net::SocketAddr, num::NonZeroUsize, sync::Arc, time::Duration};

use hickory_proto::op::ResponseCode;
use lab::craft;
use probe_ebpf::{Direction, EventKind, FlowCounters, HookKey, IPPROTO_TCP, IPPROTO_UDP};

use super::{Clock, Tracker, TrackerConfig};
use crate::{
    decode::{DnsPacket, HookCount, Packet, flow_from_key},
    metrics::Metrics,
    model::{Cause, FlowEventKind, Verdict, VerdictKind},
};

const CLIENT: &str = "10.244.0.5:41234";
const SERVER: &str = "10.96.45.123:8080";
const DNS: &str = "10.96.0.10:53";

fn tracker() -> Tracker {
    tracker_with(TrackerConfig {
        syn_timeout: Duration::from_secs(3),
        dns_timeout: Duration::from_secs(5),
        ..TrackerConfig::default()
    })
}

fn tracker_with(config: TrackerConfig) -> Tracker {
    Tracker::new(config, Clock::new(), Arc::new(Metrics::new(2000)))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn tcp(kind: EventKind, at_ms: u64) -> Packet {
    packet(kind, IPPROTO_TCP, CLIENT, SERVER, at_ms, None)
}

fn packet(
    kind: EventKind,
    protocol: u8,
    client: &str,
    server: &str,
    at_ms: u64,
    dns: Option<DnsPacket>,
) -> Packet {
    let client: SocketAddr = client.parse().unwrap();
    let server: SocketAddr = server.parse().unwrap();
    // As the client's veth sees it: what the client sends leaves its pod, answers (and
    // the server's RSTs, and ICMP errors quoting the client's packet) enter it.
    let (src, dst, direction) = match kind {
        EventKind::Syn | EventKind::DnsQuery => (client, server, Direction::FromPod),
        EventKind::IcmpUnreachable => (client, server, Direction::ToPod),
        _ => (server, client, Direction::ToPod),
    };
    let tuple = craft::flow_key(protocol, src, dst);
    Packet {
        kind,
        direction,
        ifindex: 7,
        monotonic: ms(at_ms),
        tuple: flow_from_key(&tuple).unwrap(),
        hook: HookKey {
            tuple,
            ifindex: 7,
            direction: direction as u32,
        },
        counted: HookCount::default(),
        pod: client.ip(),
        tcp: None,
        dns,
    }
}

/// The kernel's counters at the client veth's outgoing hook for `key` (client → server).
fn hook(key: probe_ebpf::FlowKey) -> HookKey {
    HookKey {
        tuple: key,
        ifindex: 7,
        direction: Direction::FromPod as u32,
    }
}

fn dns(kind: EventKind, id: u16, qname: &str, rcode: ResponseCode, at_ms: u64) -> Packet {
    let dns = DnsPacket {
        id,
        is_response: kind == EventKind::DnsResponse,
        rcode,
        truncated: false,
        qname: Some(qname.into()),
        qtype: Some("A".into()),
    };
    packet(kind, IPPROTO_UDP, "10.244.0.5:5353", DNS, at_ms, Some(dns))
}

fn only(tracker: &Tracker) -> Verdict {
    let verdicts = tracker.verdicts(&|_| true, 100);
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    verdicts.into_iter().next().unwrap()
}

#[test]
fn syn_then_syn_ack_is_ok() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 1000));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.on_packet(&tcp(EventKind::SynAck, 1002));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Ok);
    assert_eq!((v.counts.syn, v.counts.syn_ack), (1, 1));
    assert_eq!(&*v.reason, "handshake completed in 2 ms");
    assert_eq!(
        v.flow.to_string(),
        "10.244.0.5:41234 -> 10.96.45.123:8080 TCP"
    );
    assert_eq!(&*v.interface, "if7");
}

#[test]
fn unanswered_syns_time_out_at_the_deadline_not_before() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.on_packet(&tcp(EventKind::Syn, 2000));
    t.on_packet(&tcp(EventKind::Syn, 4000));
    // The 3 s timeout, and the slack for a retransmission due at that instant.
    t.sweep(ms(4099));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.sweep(ms(4100));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Timeout);
    assert_eq!(v.counts.syn, 3);
    assert_eq!(
        &*v.reason,
        "3 SYNs in 3.1s and no answer: only the client side was seen (10.96.45.123 is not known on this node): packets are dropped on the path (NetworkPolicy, firewall or broken route)"
    );
    // Later retransmissions keep the verdict and are counted.
    t.on_packet(&tcp(EventKind::Syn, 8000));
    let v = only(&t);
    assert_eq!((v.verdict, v.counts.syn), (VerdictKind::Timeout, 4));
    let timeouts = t.events(&|e| e.event == FlowEventKind::Timeout, 10);
    assert_eq!(timeouts.len(), 1);
}

#[test]
fn a_retransmission_answered_at_the_deadline_is_slow_not_timeout() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.on_packet(&tcp(EventKind::Syn, 2000));
    // Linux's second retransmission is due 3 s after the first SYN: the timeout itself.
    t.sweep(ms(4000));
    t.on_packet(&tcp(EventKind::Syn, 4003));
    t.sweep(ms(4010));
    t.on_packet(&tcp(EventKind::SynAck, 4030));
    t.sweep(ms(10_000));
    let v = only(&t);
    assert_eq!((v.verdict, v.cause), (VerdictKind::Ok, None), "{v:#?}");
    assert!(v.reason.contains("(slow: 3 SYNs)"), "{v:#?}");
    assert!(
        t.events(&|e| e.event == FlowEventKind::Timeout, 10)
            .is_empty()
    );
}

#[test]
fn slow_handshake_is_ok_even_after_the_timeout() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.on_packet(&tcp(EventKind::SynAck, 1500));
    assert_eq!(only(&t).verdict, VerdictKind::Ok);
    t.sweep(ms(10_000));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Ok);
    assert_eq!(&*v.reason, "handshake completed in 1500 ms (slow: 2 SYNs)");

    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.sweep(ms(3100));
    assert_eq!(only(&t).verdict, VerdictKind::Timeout);
    t.on_packet(&tcp(EventKind::SynAck, 3200));
    assert_eq!(only(&t).verdict, VerdictKind::Ok);
}

#[test]
fn rst_before_handshake_is_refused_and_after_is_reset() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::Rst, 1));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Refused);
    assert_eq!((v.counts.syn, v.counts.rst), (1, 1));
    assert!(
        v.reason.contains("nothing listens on port 8080"),
        "{}",
        v.reason
    );
    t.sweep(ms(60_000));
    assert_eq!(only(&t).verdict, VerdictKind::Refused);

    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::SynAck, 1));
    t.on_packet(&tcp(EventKind::Rst, 500));
    assert_eq!(only(&t).verdict, VerdictKind::Reset);
}

#[test]
fn icmp_unreachable_answering_a_syn_is_unreachable() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::IcmpUnreachable, 1));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Unreachable);
    assert_eq!(v.counts.icmp_unreachable, 1);
    t.sweep(ms(60_000));
    assert_eq!(only(&t).verdict, VerdictKind::Unreachable);
}

#[test]
fn dns_rcodes_map_to_verdicts() {
    for (rcode, verdict) in [
        (ResponseCode::NoError, VerdictKind::Ok),
        (ResponseCode::NXDomain, VerdictKind::Nxdomain),
        (ResponseCode::ServFail, VerdictKind::Servfail),
        (ResponseCode::Refused, VerdictKind::DnsRefused),
        (ResponseCode::NotImp, VerdictKind::DnsError),
    ] {
        let mut t = tracker();
        t.on_packet(&dns(
            EventKind::DnsQuery,
            4711,
            "paymnt.example.com.",
            ResponseCode::NoError,
            0,
        ));
        t.on_packet(&dns(
            EventKind::DnsResponse,
            4711,
            "paymnt.example.com.",
            rcode,
            3,
        ));
        // An NXDOMAIN for a name tried as it is waits to see whether its lookup goes on.
        t.sweep(ms(3) + super::SEARCH_WINDOW);
        let v = only(&t);
        assert_eq!(v.verdict, verdict, "{rcode:?}");
        assert_eq!((v.counts.dns_queries, v.counts.dns_responses), (1, 1));
        let summary = v.dns.unwrap();
        assert_eq!(summary.id, 4711);
        assert_eq!(summary.qname, "paymnt.example.com.");
        assert_eq!(summary.qtype, "A");
        assert_eq!(
            summary.rcode.as_deref(),
            Some(crate::decode::rcode_name(rcode).as_str())
        );
    }
}

/// A socket with queries always in flight (a forwarder's): each answer is judged when it
/// comes, and a failure holds only until a later answer succeeds.
#[test]
fn dns_verdict_follows_each_answer_while_others_are_in_flight() {
    let mut t = tracker();
    let name = "api.example.com.";
    for id in 1..=3 {
        t.on_packet(&dns(
            EventKind::DnsQuery,
            id,
            name,
            ResponseCode::NoError,
            0,
        ));
    }
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    for (id, rcode, verdict) in [
        (1, ResponseCode::NoError, VerdictKind::Ok),
        (2, ResponseCode::ServFail, VerdictKind::Servfail),
        (3, ResponseCode::NoError, VerdictKind::Ok),
    ] {
        t.on_packet(&dns(EventKind::DnsResponse, id, name, rcode, u64::from(id)));
        assert_eq!(only(&t).verdict, verdict, "after answer {id}");
    }
    let failures: Vec<_> = t
        .events(&|e| e.verdict == VerdictKind::Servfail, 100)
        .into_iter()
        .collect();
    assert_eq!(failures.len(), 1, "{failures:#?}");
}

#[test]
fn unanswered_dns_query_times_out() {
    let mut t = tracker();
    let name = "payment-service.production.svc.cluster.local.";
    t.on_packet(&dns(EventKind::DnsQuery, 9, name, ResponseCode::NoError, 0));
    // A retransmission with the same id is the same transaction.
    t.on_packet(&dns(
        EventKind::DnsQuery,
        9,
        name,
        ResponseCode::NoError,
        2000,
    ));
    t.sweep(ms(4999));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.sweep(ms(5000));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::DnsTimeout);
    assert_eq!(v.counts.dns_queries, 2);
    assert_eq!(v.dns.unwrap().rcode, None);
}

#[test]
fn flow_table_is_bounded_and_evicts_least_recently_used() {
    let mut t = tracker_with(TrackerConfig {
        flow_capacity: NonZeroUsize::new(3).unwrap(),
        event_capacity: NonZeroUsize::new(4).unwrap(),
        ..TrackerConfig::default()
    });
    for port in 1..=5u16 {
        let client = format!("10.244.0.5:{port}");
        t.on_packet(&packet(
            EventKind::Syn,
            IPPROTO_TCP,
            &client,
            SERVER,
            u64::from(port),
            None,
        ));
    }
    let ports: Vec<u16> = t
        .verdicts(&|_| true, 100)
        .iter()
        .map(|v| v.flow.src_port)
        .collect();
    assert_eq!(ports, vec![3, 4, 5]);
    let events: Vec<u16> = t
        .events(&|_| true, 100)
        .iter()
        .map(|e| e.flow.src_port)
        .collect();
    assert_eq!(events, vec![2, 3, 4, 5]);
    // The deadlines of evicted flows are dropped when the sweep runs.
    t.sweep(ms(10_000));
    assert_eq!(
        t.verdicts(&|v| v.verdict == VerdictKind::Timeout, 100)
            .len(),
        3
    );
}

#[test]
fn limit_keeps_the_most_recent_oldest_first() {
    let mut t = tracker();
    for port in 1..=5u16 {
        let client = format!("10.244.0.5:{port}");
        t.on_packet(&packet(
            EventKind::Syn,
            IPPROTO_TCP,
            &client,
            SERVER,
            u64::from(port) * 10,
            None,
        ));
    }
    let ports: Vec<u16> = t
        .verdicts(&|_| true, 2)
        .iter()
        .map(|v| v.flow.src_port)
        .collect();
    assert_eq!(ports, vec![4, 5]);
    let ports: Vec<u16> = t
        .events(&|e| e.flow.src_port != 5, 2)
        .iter()
        .map(|e| e.flow.src_port)
        .collect();
    assert_eq!(ports, vec![3, 4]);
}

/// The walk for the newest `limit` ends early (see `TableMarks::activity`); it must pick
/// what a walk of the whole table picks, whatever order packets and recoveries come in.
#[test]
fn the_newest_verdicts_are_those_of_a_whole_table_walk() {
    let mut t = tracker_with(TrackerConfig {
        flow_capacity: NonZeroUsize::new(64).unwrap(),
        ..TrackerConfig::default()
    });
    // A fixed xorshift: repeatable, and no dependency for it.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let kinds = [EventKind::Syn, EventKind::SynAck, EventKind::Rst];
    let mut clock_ms = 1000;
    for round in 0..2000 {
        // Mostly forward, sometimes a packet from up to 50 ms back (another CPU's).
        clock_ms += next(3);
        let at = clock_ms - if next(4) == 0 { next(50) } else { 0 };
        let client = format!("10.244.0.{}:{}", 5 + next(2), 1000 + next(100));
        let kind = kinds[next(3) as usize];
        t.on_packet(&packet(kind, IPPROTO_TCP, &client, SERVER, at, None));
        if next(50) == 0 {
            // Counts of an older flow's hook, recovered by a reconcile.
            let client: SocketAddr = format!("10.244.0.5:{}", 1000 + next(100)).parse().unwrap();
            let seen = (at - next(30)) * 1_000_000;
            let counters = FlowCounters {
                syn: 1 + next(3),
                first_seen_ns: seen - 1_000_000,
                last_seen_ns: seen,
                ..FlowCounters::default()
            };
            let key = craft::flow_key(IPPROTO_TCP, client, SERVER.parse().unwrap());
            t.reconcile([(hook(key), counters)], ms(clock_ms), ms(clock_ms));
        }
        if round % 50 == 0 {
            t.sweep(ms(clock_ms));
        }
        for limit in [1, 5, 20] {
            let all = t.verdicts(&|_| true, usize::MAX);
            let expected: Vec<String> = all[all.len().saturating_sub(limit)..]
                .iter()
                .map(|v| format!("{v:?}"))
                .collect();
            let newest: Vec<String> = t
                .verdicts(&|_| true, limit)
                .iter()
                .map(|v| format!("{v:?}"))
                .collect();
            assert_eq!(newest, expected, "round {round}, limit {limit}");
            // A head filter (what the API asks before building a verdict) picks the same
            // verdicts as the same condition asked of the built ones.
            let is_pending = |verdict| verdict == VerdictKind::Pending;
            let built = t.verdicts(&|v| is_pending(v.verdict), limit);
            let headed = t.verdicts_where(&|_, verdict, _| is_pending(verdict), &|_| true, limit);
            assert_eq!(
                format!("{headed:?}"),
                format!("{built:?}"),
                "round {round}, limit {limit}"
            );
        }
    }
}

#[test]
fn kernel_counts_recover_lost_events_without_double_counting() {
    let mut t = tracker();
    // The SYN's event carries its hook's counters: the first SYN there.
    let mut syn = tcp(EventKind::Syn, 1000);
    syn.counted = HookCount {
        of_kind: 1,
        since: ms(1000),
    };
    t.on_packet(&syn);
    let key = craft::flow_key(
        IPPROTO_TCP,
        CLIENT.parse().unwrap(),
        SERVER.parse().unwrap(),
    );
    let syns = FlowCounters {
        syn: 1,
        first_seen_ns: 1_000_000_000,
        last_seen_ns: 1_000_000_000,
        ..FlowCounters::default()
    };
    // The server's RST, counted at the hook into the client's pod.
    let rsts = FlowCounters {
        rst: 1,
        first_seen_ns: 1_001_000_000,
        last_seen_ns: 1_001_000_000,
        ..FlowCounters::default()
    };
    let into_pod = HookKey {
        tuple: key.reversed(),
        ifindex: 7,
        direction: Direction::ToPod as u32,
    };
    let kernel = [(hook(key), syns), (into_pod, rsts)];
    // Not read up to the RST yet: its event may still be on its way.
    t.reconcile(kernel, ms(1000), ms(1200));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.reconcile(kernel, ms(1600), ms(1600));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Refused);
    assert_eq!((v.counts.syn, v.counts.rst), (1, 1));
    // Reconciling again changes nothing.
    t.reconcile(kernel, ms(2000), ms(2000));
    assert_eq!(only(&t).counts.rst, 1);
}

#[test]
fn a_lost_syn_recovered_after_its_answer_keeps_the_answer() {
    let key = craft::flow_key(
        IPPROTO_TCP,
        CLIENT.parse().unwrap(),
        SERVER.parse().unwrap(),
    );
    for (answer, verdict) in [
        (EventKind::SynAck, VerdictKind::Ok),
        (EventKind::Rst, VerdictKind::Refused),
    ] {
        // The SYN's event was dropped (a full queue under a flood), its answer's was not:
        // it carries its hook's counters (the first answer there).
        let mut t = tracker();
        let mut packet = tcp(answer, 1010);
        packet.counted = HookCount {
            of_kind: 1,
            since: ms(1010),
        };
        t.on_packet(&packet);
        let syns = FlowCounters {
            syn: 1,
            first_seen_ns: 1_000_000_000,
            last_seen_ns: 1_000_000_000,
            ..FlowCounters::default()
        };
        t.reconcile([(hook(key), syns)], ms(2000), ms(2000));
        t.sweep(ms(10_000));
        let v = only(&t);
        assert_eq!(v.verdict, verdict, "{v:#?}");
        assert_eq!(v.counts.syn, 1);
        assert!(
            t.events(&|e| e.event == FlowEventKind::Timeout, 10)
                .is_empty()
        );
    }
}

#[test]
fn kernel_counts_create_flows_whose_events_were_all_lost() {
    let mut t = tracker();
    let key = craft::flow_key(
        IPPROTO_UDP,
        "10.244.0.5:5353".parse().unwrap(),
        DNS.parse().unwrap(),
    );
    let queries = FlowCounters {
        dns_queries: 2,
        first_seen_ns: 1_000_000_000,
        last_seen_ns: 1_001_000_000,
        ..FlowCounters::default()
    };
    let responses = FlowCounters {
        dns_responses: 2,
        dns_nxdomain: 2,
        first_seen_ns: 1_000_500_000,
        last_seen_ns: 1_002_000_000,
        ..FlowCounters::default()
    };
    let into_pod = HookKey {
        tuple: key.reversed(),
        ifindex: 7,
        direction: Direction::ToPod as u32,
    };
    let kernel = [(hook(key), queries), (into_pod, responses)];
    t.reconcile(kernel, ms(1700), ms(1700));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Nxdomain);
    assert_eq!((v.counts.dns_queries, v.counts.dns_responses), (2, 2));
    // Idle kernel entries the table no longer holds are not brought back.
    let mut t = tracker();
    t.reconcile(kernel, ms(10_000), ms(10_000));
    assert!(t.verdicts(&|_| true, 100).is_empty());
}

#[test]
fn final_verdicts_are_counted_once_per_transition() {
    let metrics = Arc::new(Metrics::new(2000));
    let mut t = Tracker::new(TrackerConfig::default(), Clock::new(), Arc::clone(&metrics));
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.sweep(ms(3000));
    t.sweep(ms(4000));
    t.on_packet(&tcp(EventKind::Syn, 7000));
    let text = metrics.encode();
    let timeouts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("netprobe_verdicts_total") && l.contains("verdict=\"TIMEOUT\""))
        .collect();
    assert_eq!(timeouts.len(), 1, "{text}");
    assert!(timeouts[0].ends_with(" 1"), "{}", timeouts[0]);
}

#[test]
fn handshakes_and_dns_exchanges_are_timed_once_each() {
    let metrics = Arc::new(Metrics::new(2000));
    let mut t = Tracker::new(TrackerConfig::default(), Clock::new(), Arc::clone(&metrics));
    // A SYN retransmitted once, answered 1.25 s after the first: the client waited that.
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.on_packet(&tcp(EventKind::SynAck, 1250));
    // A duplicate SYN-ACK times nothing.
    t.on_packet(&tcp(EventKind::SynAck, 1300));
    // Two exchanges on one socket (3 ms and 40 ms), a retransmitted query, an answer with
    // no query seen.
    use EventKind::{DnsQuery as Q, DnsResponse as R};
    use ResponseCode::{NXDomain, NoError};
    for (kind, id, name, rcode, at) in [
        (Q, 1, "a.example", NoError, 2000),
        (Q, 1, "a.example", NoError, 2001),
        (R, 1, "a.example", NoError, 2003),
        (Q, 2, "b.example", NoError, 2100),
        (R, 2, "b.example", NXDomain, 2140),
        (R, 9, "c.example", NoError, 2200),
    ] {
        t.on_packet(&dns(kind, id, name, rcode, at));
    }
    let text = metrics.encode();
    let sample = |name: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().to_owned()
    };
    assert_eq!(sample("netprobe_tcp_handshake_seconds_count{"), "1");
    assert_eq!(sample("netprobe_tcp_handshake_seconds_sum{"), "1.25");
    assert_eq!(sample("netprobe_dns_response_seconds_count{"), "2");
    let sum: f64 = sample("netprobe_dns_response_seconds_sum{")
        .parse()
        .unwrap();
    assert!((sum - 0.043).abs() < 1e-9, "{sum}");
}

#[test]
fn flows_known_only_from_kernel_counts_still_time_out() {
    let mut t = tracker();
    let tcp = craft::flow_key(
        IPPROTO_TCP,
        CLIENT.parse().unwrap(),
        SERVER.parse().unwrap(),
    );
    let syns = FlowCounters {
        syn: 2,
        first_seen_ns: 1_000_000_000,
        last_seen_ns: 2_000_000_000,
        ..FlowCounters::default()
    };
    let dns = craft::flow_key(
        IPPROTO_UDP,
        "10.244.0.5:5353".parse().unwrap(),
        DNS.parse().unwrap(),
    );
    let query = FlowCounters {
        dns_queries: 1,
        first_seen_ns: 1_000_000_000,
        last_seen_ns: 1_000_000_000,
        ..FlowCounters::default()
    };
    t.reconcile([(hook(tcp), syns), (hook(dns), query)], ms(2600), ms(2600));
    assert!(
        t.verdicts(&|_| true, 10)
            .iter()
            .all(|v| v.verdict == VerdictKind::Pending)
    );
    t.sweep(ms(4100));
    let tcp_verdict = t.verdicts(&|v| v.flow.protocol == crate::model::Protocol::Tcp, 10);
    assert_eq!(tcp_verdict[0].verdict, VerdictKind::Timeout);
    assert_eq!(tcp_verdict[0].counts.syn, 2);
    t.sweep(ms(6000));
    let dns_verdict = t.verdicts(&|v| v.flow.protocol == crate::model::Protocol::Udp, 10);
    assert_eq!(dns_verdict[0].verdict, VerdictKind::DnsTimeout);
    assert_eq!(dns_verdict[0].counts.dns_queries, 1);
}

#[test]
fn syn_timeouts_are_not_held_back_by_longer_dns_timeouts() {
    let mut t = tracker();
    let name = "payment-service.production.svc.cluster.local.";
    // A DNS query (5 s timeout) just before a SYN (3 s timeout).
    t.on_packet(&dns(EventKind::DnsQuery, 1, name, ResponseCode::NoError, 0));
    t.on_packet(&tcp(EventKind::Syn, 100));
    t.sweep(ms(3200));
    let tcp_verdict = t.verdicts(&|v| v.flow.protocol == crate::model::Protocol::Tcp, 10);
    assert_eq!(tcp_verdict[0].verdict, VerdictKind::Timeout);
    let dns_verdict = t.verdicts(&|v| v.flow.protocol == crate::model::Protocol::Udp, 10);
    assert_eq!(dns_verdict[0].verdict, VerdictKind::Pending);
    t.sweep(ms(5000));
    let dns_verdict = t.verdicts(&|v| v.flow.protocol == crate::model::Protocol::Udp, 10);
    assert_eq!(dns_verdict[0].verdict, VerdictKind::DnsTimeout);
}

#[test]
fn names_of_removed_interfaces_are_kept_for_a_while_then_dropped() {
    let mut t = tracker();
    t.set_interface_name(7, "veth-crashed");
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.forget_interface_name(7);
    // The flow of a pod that just went away still names its veth.
    assert_eq!(&*only(&t).interface, "veth-crashed");
    // Pod churn: every later interface comes and goes.
    for index in 100..100 + super::DEPARTED_INTERFACES as u32 {
        t.set_interface_name(index, &format!("veth{index}"));
        t.forget_interface_name(index);
    }
    assert_eq!(t.interface_names(), super::DEPARTED_INTERFACES);
    assert_eq!(&*only(&t).interface, "if7");
    // An index named again after it went away keeps its new name.
    t.set_interface_name(100 + super::DEPARTED_INTERFACES as u32, "veth-reused");
    t.forget_interface_name(100 + super::DEPARTED_INTERFACES as u32);
    t.set_interface_name(100 + super::DEPARTED_INTERFACES as u32, "veth-reused");
    for index in 5000..5000 + super::DEPARTED_INTERFACES as u32 {
        t.set_interface_name(index, "x");
        t.forget_interface_name(index);
    }
    assert_eq!(t.interface_names(), super::DEPARTED_INTERFACES + 1);
}

/// Found by the `track` fuzz target: asking for every verdict with `usize::MAX` overflowed
/// (and sized the result heap by the limit, not by the table).
#[test]
fn any_limit_can_be_asked_for() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 1000));
    t.on_packet(&dns(
        EventKind::DnsQuery,
        1,
        "x.",
        ResponseCode::NoError,
        1001,
    ));
    assert_eq!(t.verdicts(&|_| true, usize::MAX).len(), 2);
    assert_eq!(t.events(&|_| true, usize::MAX).len(), 2);
    assert!(t.verdicts(&|_| true, 0).is_empty());
}

/// A DNS packet from `client` (ip:port), so each search-path name can use its own socket
/// as glibc does.
fn dns_from(
    client: &str,
    kind: EventKind,
    id: u16,
    qname: &str,
    rcode: ResponseCode,
    at_ms: u64,
) -> Packet {
    let mut p = dns(kind, id, qname, rcode, at_ms);
    let d = p.dns.take();
    packet(kind, IPPROTO_UDP, client, DNS, at_ms, d)
}

/// One lookup, glibc style: each name on its own socket, query then response.
fn lookup(t: &mut Tracker, names: &[(&str, ResponseCode)], start_ms: u64) {
    for (i, (name, rcode)) in names.iter().enumerate() {
        let client = format!("10.244.0.5:{}", 40000 + i);
        let at = start_ms + 10 * i as u64;
        t.on_packet(&dns_from(
            &client,
            EventKind::DnsQuery,
            i as u16,
            name,
            ResponseCode::NoError,
            at,
        ));
        t.on_packet(&dns_from(
            &client,
            EventKind::DnsResponse,
            i as u16,
            name,
            *rcode,
            at + 2,
        ));
    }
}

fn by_qname(t: &Tracker, qname: &str) -> Verdict {
    t.verdicts(&|v| v.dns.as_ref().is_some_and(|d| d.qname == qname), 10)
        .pop()
        .unwrap_or_else(|| panic!("no verdict for {qname}"))
}

#[test]
fn search_path_expansions_of_a_lookup_that_succeeds_are_not_failures() {
    let mut t = tracker();
    lookup(
        &mut t,
        &[
            (
                "api.example.com.production.svc.cluster.local.",
                ResponseCode::NXDomain,
            ),
            ("api.example.com.svc.cluster.local.", ResponseCode::NXDomain),
            ("api.example.com.cluster.local.", ResponseCode::NXDomain),
            ("api.example.com.", ResponseCode::NoError),
        ],
        0,
    );
    t.sweep(ms(5_000));
    let verdicts = t.verdicts(&|_| true, 100);
    assert_eq!(verdicts.len(), 4);
    assert!(
        verdicts.iter().all(|v| v.verdict == VerdictKind::Ok),
        "{verdicts:#?}"
    );
    let first = by_qname(&t, "api.example.com.production.svc.cluster.local.");
    assert_eq!(first.cause, Some(Cause::SearchPathExpansion));
    assert_eq!(
        &*first.reason,
        "NXDOMAIN for api.example.com.production.svc.cluster.local. was a search-path expansion, not a failure: the lookup went on to api.example.com.svc.cluster.local."
    );
    assert_eq!(by_qname(&t, "api.example.com.").cause, None);
    let metrics = t.journal.metrics.encode();
    assert!(
        metrics.contains("netprobe_dns_search_expansions_total 3\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("verdict=\"NXDOMAIN\""), "{metrics}");
}

#[test]
fn a_lookup_failing_on_every_name_is_one_nxdomain_naming_what_was_asked() {
    let mut t = tracker();
    lookup(
        &mut t,
        &[
            (
                "paymnt-service.production.svc.cluster.local.",
                ResponseCode::NXDomain,
            ),
            ("paymnt-service.svc.cluster.local.", ResponseCode::NXDomain),
            ("paymnt-service.cluster.local.", ResponseCode::NXDomain),
            ("paymnt-service.", ResponseCode::NXDomain),
        ],
        0,
    );
    t.sweep(ms(5_000));
    let failures = t.verdicts(&|v| v.verdict.is_failure(), 100);
    assert_eq!(failures.len(), 1, "{failures:#?}");
    let failed = &failures[0];
    assert_eq!(failed.verdict, VerdictKind::Nxdomain);
    assert_eq!(failed.cause, Some(Cause::NameNotFound));
    assert_eq!(
        &*failed.reason,
        "paymnt-service: NXDOMAIN for each of the 4 names of its search path (paymnt-service.production.svc.cluster.local., paymnt-service.svc.cluster.local., paymnt-service.cluster.local., paymnt-service.): no Service paymnt-service in production"
    );
    assert_eq!(
        failed.next.as_deref(),
        Some("kubectl get services -n production")
    );
    assert_eq!(
        t.verdicts(&|v| v.cause == Some(Cause::SearchPathExpansion), 100)
            .len(),
        3
    );
}

#[test]
fn a_held_nxdomain_the_lookup_does_not_follow_fails_after_the_window() {
    let mut t = tracker();
    let name = "orders.production.svc.cluster.local.";
    lookup(&mut t, &[(name, ResponseCode::NXDomain)], 0);
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.sweep(ms(2) + super::SEARCH_WINDOW - ms(1));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.sweep(ms(2) + super::SEARCH_WINDOW);
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Nxdomain);
    assert_eq!(v.cause, Some(Cause::NameNotFound));
    assert_eq!(
        &*v.reason,
        "orders.production.svc.cluster.local. does not exist (NXDOMAIN): no Service orders in production"
    );
}

#[test]
fn failures_are_explained_from_the_cluster() {
    use crate::enrich::{Directory, Names, PodView, SliceRecord, object_key};
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    let mut directory = Directory::default();
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orders", "namespace": "production"},
        "spec": {"clusterIP": "10.96.45.123", "selector": {"app": "orders"},
                 "ports": [{"port": 8080, "targetPort": 8080}]},
    }))
    .unwrap();
    directory
        .services
        .apply(object_key(&service.metadata), (&service).into());
    let pod: PodView = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orders-1", "namespace": "production", "labels": {"app": "orders"},
                     "creationTimestamp": "2026-11-23T09:00:00Z"},
        "spec": {"containers": [{"ports": [{"containerPort": 8080}]}]},
        "status": {"podIP": "10.244.0.9", "conditions": [{"type": "Ready", "status": "False"}]},
    }))
    .unwrap();
    directory
        .pods
        .apply(object_key(&pod.metadata), (&pod).into());
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orders-x", "namespace": "production",
                     "labels": {"kubernetes.io/service-name": "orders"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": false},
                       "targetRef": {"kind": "Pod", "name": "orders-1"}}],
    }))
    .unwrap();
    directory
        .slices
        .apply(object_key(&slice.metadata), SliceRecord::from(&slice));
    let names = Names::none();
    names.publish(directory.snapshot());
    let mut t = tracker().with_names(names);
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::IcmpUnreachable, 1));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Unreachable);
    assert_eq!(v.cause, Some(Cause::NoReadyEndpoints));
    assert_eq!(
        &*v.reason,
        "SYN answered by ICMP destination unreachable: Service production/orders has no ready endpoints: its selector app=orders matches 1 pod, 1 not ready (orders-1)"
    );
    assert_eq!(
        v.next.as_deref(),
        Some("kubectl get endpointslices -l kubernetes.io/service-name=orders -n production")
    );
    let metrics = t.journal.metrics.encode();
    assert!(
        metrics.contains("netprobe_causes_total{cause=\"no_ready_endpoints\"} 1\n"),
        "{metrics}"
    );
}

#[test]
fn most_pod_pairs_timing_out_at_once_is_one_node_verdict() {
    let mut t = tracker();
    let pairs = [
        ("10.244.0.5:40001", "10.244.0.9:80"),
        ("10.244.0.5:40002", "10.244.0.10:80"),
        ("10.244.0.6:40003", "10.244.0.9:80"),
        ("10.244.0.6:40004", "10.244.0.10:80"),
    ];
    for (client, server) in pairs {
        t.on_packet(&packet(
            EventKind::Syn,
            IPPROTO_TCP,
            client,
            server,
            0,
            None,
        ));
    }
    t.sweep(ms(3_100));
    let timeouts = t.verdicts(&|v| v.verdict == VerdictKind::Timeout, 100);
    assert_eq!(timeouts.len(), 4);
    assert!(
        timeouts
            .iter()
            .all(|v| v.cause == Some(Cause::NodeDatapath)),
        "{timeouts:#?}"
    );
    let node = t.node_verdicts(ms(3_000));
    assert_eq!(node.len(), 1);
    assert_eq!(node[0].cause, Cause::NodeDatapath);
    assert_eq!(
        (node[0].failing_pairs, node[0].pairs, node[0].sources),
        (4, 4, 2)
    );
    assert!(
        t.journal
            .metrics
            .encode()
            .contains("netprobe_node_datapath_down 1\n")
    );
    // The pairs answer again: the incident ends and stays listed as ended.
    for (i, (client, server)) in pairs.iter().enumerate() {
        let client = client.replace("4000", "5000");
        t.on_packet(&packet(
            EventKind::Syn,
            IPPROTO_TCP,
            &client,
            server,
            4_000 + i as u64,
            None,
        ));
        t.on_packet(&packet(
            EventKind::SynAck,
            IPPROTO_TCP,
            &client,
            server,
            4_001 + i as u64,
            None,
        ));
    }
    t.sweep(ms(5_000));
    let node = t.node_verdicts(ms(5_000));
    assert!(node[0].until.is_some(), "{node:#?}");
    assert!(
        t.journal
            .metrics
            .encode()
            .contains("netprobe_node_datapath_down 0\n")
    );
}

#[test]
fn healthy_and_slow_handshakes_have_no_cause() {
    let mut t = tracker();
    t.on_packet(&tcp(EventKind::Syn, 0));
    t.on_packet(&tcp(EventKind::Syn, 1_000));
    t.on_packet(&tcp(EventKind::SynAck, 2_500));
    t.sweep(ms(10_000));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Ok);
    assert_eq!((v.cause, v.next), (None, None));
}

#[test]
fn a_remote_clients_unanswered_syn_at_a_pod_of_this_node_is_server_silent() {
    let mut t = tracker();
    t.set_interface_name(7, "vethserver");
    // The server is a pod of this node: what it sends leaves its veth here.
    t.on_packet(&packet(
        EventKind::Syn,
        IPPROTO_TCP,
        "10.244.0.3:45000",
        "10.244.0.4:80",
        0,
        None,
    ));
    t.on_packet(&packet(
        EventKind::SynAck,
        IPPROTO_TCP,
        "10.244.0.3:45000",
        "10.244.0.4:80",
        1,
        None,
    ));
    // A client on another node: its SYN is seen only as it enters the server's veth.
    let mut syn = packet(
        EventKind::Syn,
        IPPROTO_TCP,
        "10.244.9.9:40000",
        "10.244.0.3:8080",
        10,
        None,
    );
    syn.direction = Direction::ToPod;
    t.on_packet(&syn);
    t.sweep(ms(3_110));
    let v = t
        .verdicts(&|v| v.flow.src_ip.to_string() == "10.244.9.9", 10)
        .pop()
        .expect("the remote client's flow");
    assert_eq!(
        (v.verdict, v.cause),
        (VerdictKind::Timeout, Some(Cause::ServerSilent)),
        "{v:#?}"
    );
    assert_eq!(
        &*v.reason,
        "1 SYN in 3.1s and no answer: the SYN from 10.244.9.9 (not a pod of this node) reached 10.244.0.3:8080 through vethserver and the server never answered: it does not accept on port 8080 (hung, backlog full) or a firewall inside the pod drops it"
    );
}

#[test]
fn a_name_tried_as_it_is_before_its_search_path_is_no_failure_when_found_after() {
    // ndots:1 (or a name with 5 dots under ndots:5): glibc tries the name as it is first.
    let mut t = tracker();
    lookup(
        &mut t,
        &[
            ("api.internal.", ResponseCode::NXDomain),
            (
                "api.internal.production.svc.cluster.local.",
                ResponseCode::NXDomain,
            ),
            ("api.internal.svc.cluster.local.", ResponseCode::NoError),
        ],
        0,
    );
    t.sweep(ms(5_000));
    let failures = t.verdicts(&|v| v.verdict.is_failure(), 100);
    assert!(failures.is_empty(), "{failures:#?}");
    let first = by_qname(&t, "api.internal.");
    assert_eq!(
        (first.verdict, first.cause),
        (VerdictKind::Ok, Some(Cause::SearchPathExpansion)),
        "{first:#?}"
    );

    // The same lookup failing everywhere is one failure, naming the name as asked.
    let mut t = tracker();
    lookup(
        &mut t,
        &[
            ("api.internal.", ResponseCode::NXDomain),
            (
                "api.internal.production.svc.cluster.local.",
                ResponseCode::NXDomain,
            ),
            ("api.internal.svc.cluster.local.", ResponseCode::NXDomain),
            ("api.internal.cluster.local.", ResponseCode::NXDomain),
        ],
        0,
    );
    t.sweep(ms(5_000));
    let failures = t.verdicts(&|v| v.verdict.is_failure(), 100);
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(
        failures[0].reason.starts_with(
            "api.internal: NXDOMAIN for each of the 4 names of its search path (api.internal., "
        ),
        "{failures:#?}"
    );
}

#[test]
fn a_lookup_of_another_name_right_after_a_failed_one_does_not_hide_it() {
    let mut t = tracker();
    lookup(
        &mut t,
        &[("db.production.svc.cluster.local.", ResponseCode::NXDomain)],
        0,
    );
    // `db.other` next, within the window: a lookup of its own, not `db`'s going on.
    let other = "db.other.production.svc.cluster.local.";
    for (kind, at) in [(EventKind::DnsQuery, 100), (EventKind::DnsResponse, 102)] {
        t.on_packet(&dns_from(
            "10.244.0.5:41000",
            kind,
            7,
            other,
            ResponseCode::NXDomain,
            at,
        ));
    }
    t.sweep(ms(5_000));
    let first = by_qname(&t, "db.production.svc.cluster.local.");
    assert_eq!(
        (first.verdict, first.cause),
        (VerdictKind::Nxdomain, Some(Cause::NameNotFound)),
        "{first:#?}"
    );
}

#[test]
fn timeouts_a_network_policy_explains_are_no_node_outage() {
    use crate::enrich::{Directory, Names, PodView, object_key};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    let mut directory = Directory::default();
    for (name, ip) in [
        ("db-0", "10.244.0.9"),
        ("db-1", "10.244.0.10"),
        ("api-0", "10.244.0.5"),
        ("api-1", "10.244.0.6"),
    ] {
        let app = name.split('-').next().unwrap();
        let pod: PodView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "production", "labels": {"app": app}},
            "spec": {"containers": [{"ports": [{"containerPort": 80}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        directory
            .pods
            .apply(object_key(&pod.metadata), (&pod).into());
    }
    let deny: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-deny-all", "namespace": "production"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]},
    }))
    .unwrap();
    directory.policies.apply(object_key(&deny.metadata), deny);
    let names = Names::none();
    names.publish(directory.snapshot());
    let mut t = tracker().with_names(names);
    for (client, server) in [
        ("10.244.0.5:40001", "10.244.0.9:80"),
        ("10.244.0.5:40002", "10.244.0.10:80"),
        ("10.244.0.6:40003", "10.244.0.9:80"),
        ("10.244.0.6:40004", "10.244.0.10:80"),
    ] {
        t.on_packet(&packet(
            EventKind::Syn,
            IPPROTO_TCP,
            client,
            server,
            0,
            None,
        ));
    }
    t.sweep(ms(3_100));
    let timeouts = t.verdicts(&|v| v.verdict == VerdictKind::Timeout, 100);
    assert_eq!(timeouts.len(), 4);
    assert!(
        timeouts
            .iter()
            .all(|v| v.cause == Some(Cause::NetworkPolicy)),
        "{timeouts:#?}"
    );
    assert!(t.node_verdicts(ms(3_100)).is_empty());
}

#[test]
fn timeouts_of_a_node_outage_are_reported_as_the_outage_not_one_by_one() {
    use crate::enrich::{Directory, Names, PodView, object_key};

    let mut directory = Directory::default();
    for (name, ip) in [("api-0", "10.244.0.5"), ("api-1", "10.244.0.6")] {
        let pod: PodView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "production"},
            "status": {"podIP": ip},
        }))
        .unwrap();
        directory
            .pods
            .apply(object_key(&pod.metadata), (&pod).into());
    }
    let names = Names::none();
    names.publish(directory.snapshot());
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel(64);
    let mut t = tracker().with_names(names).with_cause_reports(reports_tx);

    // One timeout alone: reported with its own cause, once held for REPORT_HOLD.
    t.on_packet(&packet(
        EventKind::Syn,
        IPPROTO_TCP,
        "10.244.0.5:39999",
        "10.96.45.1:80",
        0,
        None,
    ));
    t.sweep(ms(3_100));
    assert!(reports.try_recv().is_err(), "held");
    t.sweep(ms(3_100) + super::REPORT_HOLD);
    let alone = reports.try_recv().expect("reported");
    assert_eq!(alone.cause, Cause::NoAnswer);

    // Four pairs from two pods at once: a node-wide failure, reported as that.
    for (client, server) in [
        ("10.244.0.5:40001", "10.244.0.9:80"),
        ("10.244.0.5:40002", "10.244.0.10:80"),
        ("10.244.0.6:40003", "10.244.0.9:80"),
        ("10.244.0.6:40004", "10.244.0.10:80"),
    ] {
        t.on_packet(&packet(
            EventKind::Syn,
            IPPROTO_TCP,
            client,
            server,
            4_000,
            None,
        ));
    }
    // Each is diagnosed on its own as it times out; the node watch sees them after.
    t.sweep(ms(7_100));
    t.sweep(ms(7_150) + super::REPORT_HOLD);
    let mut causes = Vec::new();
    while let Ok(report) = reports.try_recv() {
        causes.push((report.cause, report.pod.to_string()));
    }
    assert_eq!(causes.len(), 4, "{causes:?}");
    assert!(
        causes
            .iter()
            .all(|(cause, _)| *cause == Cause::NodeDatapath),
        "{causes:?}"
    );
}

/// A TCP packet at the client's veth with sequence numbers: sent by the client (leaving
/// its pod) or by the server (entering it).
fn tcp_seq(kind: EventKind, at_ms: u64, seq: u32, ack: u32, by_client: bool, flags: u8) -> Packet {
    let mut p = tcp(kind, at_ms);
    if by_client {
        let key = craft::flow_key(
            IPPROTO_TCP,
            CLIENT.parse().unwrap(),
            SERVER.parse().unwrap(),
        );
        p.tuple = flow_from_key(&key).unwrap();
        p.hook = hook(key);
        p.direction = Direction::FromPod;
    }
    p.tcp = Some(crate::decode::TcpFacts {
        seq,
        ack,
        flags,
        payload_len: 0,
        payload: Vec::new(),
    });
    p
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

#[test]
fn a_syn_ack_read_before_its_syn_answers_it() {
    let mut t = tracker();
    t.on_packet(&tcp_seq(
        EventKind::SynAck,
        1001,
        9000,
        1001,
        false,
        SYN | ACK,
    ));
    t.on_packet(&tcp_seq(EventKind::Syn, 1000, 1000, 0, true, SYN));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Ok, "{v:#?}");
    assert_eq!((v.counts.syn, v.counts.syn_ack), (1, 1));
    t.sweep(ms(10_000));
    assert_eq!(only(&t).verdict, VerdictKind::Ok);
}

#[test]
fn a_retransmitted_syn_crossing_the_syn_ack_starts_no_attempt() {
    let mut t = tracker();
    t.on_packet(&tcp_seq(EventKind::Syn, 1000, 1000, 0, true, SYN));
    t.on_packet(&tcp_seq(
        EventKind::SynAck,
        2001,
        9000,
        1001,
        false,
        SYN | ACK,
    ));
    // The client's retransmission, sent before the SYN-ACK reached it.
    t.on_packet(&tcp_seq(EventKind::Syn, 2002, 1000, 0, true, SYN));
    t.sweep(ms(10_000));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Ok, "{v:#?}");
    assert_eq!((v.counts.syn, v.counts.syn_ack), (2, 1));
}

#[test]
fn a_syn_with_another_isn_is_a_new_connection_with_its_own_counts() {
    let metrics = Arc::new(Metrics::new(2000));
    let mut t = Tracker::new(TrackerConfig::default(), Clock::new(), Arc::clone(&metrics));
    t.on_packet(&tcp_seq(EventKind::Syn, 1000, 1000, 0, true, SYN));
    t.on_packet(&tcp_seq(
        EventKind::SynAck,
        1001,
        9000,
        1001,
        false,
        SYN | ACK,
    ));
    t.on_packet(&tcp_seq(EventKind::Syn, 1500, 5000, 0, true, SYN));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Pending);
    assert_eq!((v.counts.syn, v.counts.syn_ack), (1, 0));
    // A late SYN-ACK of the first connection answers nothing of the second.
    t.on_packet(&tcp_seq(
        EventKind::SynAck,
        1501,
        9000,
        1001,
        false,
        SYN | ACK,
    ));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.on_packet(&tcp_seq(
        EventKind::SynAck,
        1502,
        7000,
        5001,
        false,
        SYN | ACK,
    ));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Ok);
    assert_eq!((v.counts.syn, v.counts.syn_ack), (1, 2));
    assert!(
        metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("netprobe_verdicts_total{")
                && l.contains("verdict=\"OK\"")
                && l.ends_with(" 2")),
        "{}",
        metrics.encode()
    );
}

#[test]
fn a_client_resetting_its_own_attempt_is_aborted_not_refused() {
    let mut t = tracker();
    t.on_packet(&tcp_seq(EventKind::Syn, 1000, 1000, 0, true, SYN));
    t.on_packet(&tcp_seq(EventKind::Rst, 1300, 1001, 0, true, RST));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Aborted, "{v:#?}");
    assert_eq!(v.cause, None);
    assert_eq!(
        &*v.reason,
        "the client reset its connection attempt after 1 SYN in 300 ms, before any answer"
    );
    // The server refusing is another matter.
    let mut t = tracker();
    t.on_packet(&tcp_seq(EventKind::Syn, 1000, 1000, 0, true, SYN));
    t.on_packet(&tcp_seq(EventKind::Rst, 1001, 0, 1001, false, RST | ACK));
    assert_eq!(only(&t).verdict, VerdictKind::Refused);
}

#[test]
fn the_wall_clock_follows_a_step() {
    let mut clock = Clock::new();
    let before = clock.to_utc(Duration::ZERO);
    clock.epoch -= 3_600_000_000_000;
    assert!(clock.to_utc(Duration::ZERO) < before);
    clock.resync();
    assert!(
        (clock.to_utc(Duration::ZERO) - before)
            .num_milliseconds()
            .abs()
            < 1000
    );
}

/// Found by the track fuzz target: a RST or SYN-ACK whose SYN never comes waits for it
/// only briefly, then is judged alone, never left PENDING.
#[test]
fn an_answer_whose_syn_never_comes_is_judged_alone() {
    let mut t = tracker();
    t.on_packet(&tcp_seq(EventKind::Rst, 1000, 0, 1001, false, RST | ACK));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.sweep(ms(1100));
    assert_eq!(only(&t).verdict, VerdictKind::Pending);
    t.sweep(ms(1200));
    let v = only(&t);
    assert_eq!(v.verdict, VerdictKind::Reset, "{v:#?}");
    assert_eq!(v.counts.rst, 1);

    let mut t = tracker();
    t.on_packet(&tcp_seq(
        EventKind::SynAck,
        1000,
        9000,
        1001,
        false,
        SYN | ACK,
    ));
    t.sweep(ms(1200));
    assert_eq!(only(&t).verdict, VerdictKind::Ok);
}

/// A directory naming one pod `name` at `ip`.
fn directory_with_pod(name: &str, ip: &str) -> crate::enrich::Directory {
    use crate::enrich::{Directory, PodView, object_key};

    let mut directory = Directory::default();
    let pod: PodView = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-11-23T09:00:00Z"},
        "status": {"phase": "Running", "podIP": ip},
    }))
    .unwrap();
    directory
        .pods
        .apply(object_key(&pod.metadata), (&pod).into());
    directory
}

#[test]
fn an_event_keeps_the_names_its_ends_had_when_it_happened() {
    let client_ip = CLIENT.parse::<SocketAddr>().unwrap().ip().to_string();
    let names = crate::enrich::Names::none();
    names.publish(directory_with_pod("checkout-1", &client_ip).snapshot());
    let mut t = tracker().with_names(names.clone());
    t.on_packet(&tcp(EventKind::Syn, 0));
    // The pod is gone and its IP went to another: the event still names the first.
    names.publish(directory_with_pod("batch-7", &client_ip).snapshot());
    let pod = |e: &crate::model::FlowEvent| e.src.as_ref().and_then(|s| s.pod.clone());
    let events = t.events(&|_| true, 10);
    assert_eq!(pod(&events[0]).as_deref(), Some("checkout-1"));
    t.on_packet(&tcp(EventKind::Rst, 5));
    let events = t.events(&|_| true, 10);
    assert_eq!(pod(&events[1]).as_deref(), Some("batch-7"));
}
