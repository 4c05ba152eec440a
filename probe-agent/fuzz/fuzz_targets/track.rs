//! The tracker fed with decoded packets, mostly DNS (crafted messages and arbitrary
//! payloads on port 53), some TCP and ICMP, with the clock moving and timeouts swept,
//! then topped up from kernel counts as if some events had been lost.
//!
//! The kernel is modelled as wire format 2 has it: every packet counted raw at the hook
//! that saw it (here the client's veth: what the client sends leaves it, the answers
//! enter it), on its tuple as on the wire, each event carrying its hook's counters just
//! after it.
//!
//! Checked after every input: nothing panics; every flow's counts are exactly the
//! packets fed on its connection (nothing lost, nothing counted twice, no flow confused
//! with another); the Prometheus packet counters add up to the same; the event ring stays
//! within its capacity; once every timeout has passed no flow is left PENDING; and after
//! reconciling with the kernel's per-hook counts, every count is exactly the kernel's.
#![no_main]

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use arbitrary::Arbitrary;
use hickory_proto::{op::ResponseCode, rr::RecordType};
use lab::craft::{self, Frame};
use libfuzzer_sys::fuzz_target;
use pnet_packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use probe_agent::{
    decode,
    metrics::Metrics,
    model::{Counts, VerdictKind},
    track::{Clock, Tracker, TrackerConfig},
};
use probe_agent_fuzz::{wire_hook, wire_key};
use probe_ebpf::{Direction, EventKind, FlowCounters, FlowKey, HookKey};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Client `flow` asks its DNS server: a crafted query, or `raw` bytes as the payload.
    Query {
        flow: u8,
        id: u16,
        name: u8,
        qtype: u8,
        raw: Option<Vec<u8>>,
        after_ms: u16,
    },
    /// The server answers client `flow`.
    Response {
        flow: u8,
        id: u16,
        name: u8,
        rcode: u8,
        raw: Option<Vec<u8>>,
        after_ms: u16,
    },
    /// A TCP segment with `flags`, client → server or back (a SYN from the client is a
    /// SYN, one from the server a SYN-ACK: every hook here is the client's veth).
    Tcp {
        flow: u8,
        flags: u8,
        to_client: bool,
        after_ms: u16,
    },
    /// ICMP destination unreachable quoting the client's packet of `flow` (TCP or DNS).
    Unreachable {
        flow: u8,
        dns: bool,
        after_ms: u16,
    },
    Sweep {
        after_ms: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    /// (flow, counter, how many) the kernel counted and the events never brought.
    lost: Vec<(u8, u8, u8)>,
}

const NAMES: [&str; 4] = [
    "payment-service.production.svc.cluster.local.",
    "paymnt-service.production.svc.cluster.local.",
    "x.",
    "kubernetes.default.svc.cluster.local.",
];
const QTYPES: [RecordType; 4] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
];

/// Four clients, IPv4 and IPv6, each with a DNS server and a TCP server.
fn client(flow: u8) -> (SocketAddr, SocketAddr, SocketAddr) {
    let i = flow % 4;
    if i.is_multiple_of(2) {
        let ip = IpAddr::from([10, 244, 0, 5 + i]);
        (
            SocketAddr::new(ip, 40000 + u16::from(i)),
            "10.96.0.10:53".parse().unwrap(),
            "10.96.0.20:80".parse().unwrap(),
        )
    } else {
        let ip: IpAddr = format!("fd00:10:244::{}", 5 + i).parse().unwrap();
        (
            SocketAddr::new(ip, 40000 + u16::from(i)),
            "[fd00:10:96::a]:53".parse().unwrap(),
            "[fd00:10:96::20]:80".parse().unwrap(),
        )
    }
}

fn count_of(counts: &mut Counts, kind: EventKind) -> &mut u64 {
    match kind {
        EventKind::Syn => &mut counts.syn,
        EventKind::SynAck => &mut counts.syn_ack,
        EventKind::Rst => &mut counts.rst,
        EventKind::IcmpUnreachable => &mut counts.icmp_unreachable,
        EventKind::DnsQuery => &mut counts.dns_queries,
        EventKind::DnsResponse => &mut counts.dns_responses,
        EventKind::DnsTcpSegment => unreachable!("no DNS over TCP is fed"),
    }
}

fn counter_of(c: &mut FlowCounters, kind: EventKind) -> &mut u64 {
    match kind {
        EventKind::Syn => &mut c.syn,
        EventKind::SynAck => &mut c.syn_ack,
        EventKind::Rst => &mut c.rst,
        EventKind::IcmpUnreachable => &mut c.icmp_unreachable,
        EventKind::DnsQuery => &mut c.dns_queries,
        EventKind::DnsResponse => &mut c.dns_responses,
        EventKind::DnsTcpSegment => &mut c.dns_tcp_segments,
    }
}

/// The connection (client → server) a packet of `kind` with tuple `tuple` (as on the
/// wire) belongs to. Clients use ports 40000-40003, servers 53 and 80: a RST from the
/// lower port is the server's.
fn connection(kind: EventKind, tuple: &probe_agent::model::Flow) -> FlowKey {
    let from_server = match kind {
        EventKind::SynAck | EventKind::DnsResponse => true,
        EventKind::Rst | EventKind::DnsTcpSegment => tuple.src_port < tuple.dst_port,
        EventKind::Syn | EventKind::DnsQuery | EventKind::IcmpUnreachable => false,
    };
    if from_server {
        wire_key(&tuple.reversed())
    } else {
        wire_key(tuple)
    }
}

/// What the kernel counted at each hook, and what the tracker must count per connection.
#[derive(Default)]
struct Kernel {
    hooks: HashMap<HookKey, FlowCounters>,
    flows: HashMap<FlowKey, Counts>,
}

impl Kernel {
    /// Counts `n` packets of `kind` at `hook` (of connection `key`) at time `at`; returns
    /// the hook's counters after them.
    fn count(
        &mut self,
        hook: HookKey,
        key: FlowKey,
        kind: EventKind,
        rcode: Option<ResponseCode>,
        n: u64,
        at: Duration,
    ) -> FlowCounters {
        *count_of(self.flows.entry(key).or_default(), kind) += n;
        let c = self.hooks.entry(hook).or_insert_with(|| FlowCounters {
            first_seen_ns: at.as_nanos() as u64,
            ..FlowCounters::default()
        });
        *counter_of(c, kind) += n;
        if kind == EventKind::DnsResponse {
            match rcode.map(u16::from) {
                None | Some(0) => {}
                Some(2) => c.dns_servfail += n,
                Some(3) => c.dns_nxdomain += n,
                Some(5) => c.dns_refused += n,
                Some(_) => c.dns_other_error += n,
            }
        }
        c.last_seen_ns = c.last_seen_ns.max(at.as_nanos() as u64);
        *c
    }
}

/// An IP packet without Ethernet header, as an ICMP error quotes it.
fn ip_packet(
    src: SocketAddr,
    dst: SocketAddr,
    protocol: IpNextHeaderProtocol,
    payload: &[u8],
) -> Vec<u8> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Frame::plain().ipv4(s, d, protocol, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => Frame::plain().ipv6(s, d, protocol, payload),
        _ => unreachable!("one family per flow"),
    }
}

/// `netprobe_packets_total` by kind, read back from the exposition.
fn packets_total(metrics: &Metrics) -> Counts {
    let text = metrics.encode();
    let mut totals = Counts::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("netprobe_packets_total{kind=\"") else {
            continue;
        };
        let (kind, value) = rest.split_once("\"} ").expect("a sample");
        let value: u64 = value.parse().expect("a count");
        let kind = match kind {
            "syn" => EventKind::Syn,
            "syn_ack" => EventKind::SynAck,
            "rst" => EventKind::Rst,
            "icmp_unreachable" => EventKind::IcmpUnreachable,
            "dns_query" => EventKind::DnsQuery,
            "dns_response" => EventKind::DnsResponse,
            // None is fed here: every hook is the client's veth.
            "dns_tcp_segment" | "syn_delivered" => {
                assert_eq!(value, 0, "{kind} counted");
                continue;
            }
            other => panic!("unknown packet kind {other}"),
        };
        *count_of(&mut totals, kind) = value;
    }
    totals
}

fn sum(all: impl Iterator<Item = Counts>) -> Counts {
    all.fold(Counts::default(), |mut a, c| {
        a.syn += c.syn;
        a.syn_ack += c.syn_ack;
        a.rst += c.rst;
        a.icmp_unreachable += c.icmp_unreachable;
        a.dns_queries += c.dns_queries;
        a.dns_responses += c.dns_responses;
        a
    })
}

const EVENT_CAPACITY: usize = 16;

/// Every flow's counts equal the kernel's for its connection, and no other flow exists.
fn assert_counts_match(tracker: &Tracker, kernel: &Kernel, when: &str) {
    let verdicts = tracker.verdicts(&|_| true, tracker.flows_tracked().max(1));
    assert_eq!(verdicts.len(), kernel.flows.len(), "{when}: flows tracked");
    for (key, counts) in &kernel.flows {
        let flow = decode::flow_from_key(key).expect("TCP or UDP");
        let verdict = verdicts
            .iter()
            .find(|v| v.flow == flow)
            .unwrap_or_else(|| panic!("{when}: no verdict for {flow}"));
        assert_eq!(verdict.counts, *counts, "{when}: counts of {flow}");
    }
    assert!(tracker.events(&|_| true, EVENT_CAPACITY + 1).len() <= EVENT_CAPACITY);
}

fn assert_nothing_pending(tracker: &Tracker, when: &str) {
    for verdict in tracker.verdicts(&|_| true, tracker.flows_tracked().max(1)) {
        assert_ne!(
            verdict.verdict,
            VerdictKind::Pending,
            "{when}: {} still pending after every timeout: {verdict:?}",
            verdict.flow
        );
    }
}

fuzz_target!(|input: Input| {
    let metrics = Arc::new(Metrics::new(64));
    let config = TrackerConfig {
        event_capacity: NonZeroUsize::new(EVENT_CAPACITY).unwrap(),
        // Far more than the flows an input can make (no eviction blurs the counts), and
        // small: the table is allocated for each input.
        flow_capacity: NonZeroUsize::new(256).unwrap(),
        ..TrackerConfig::default()
    };
    let mut tracker = Tracker::new(config, Clock::new(), Arc::clone(&metrics));
    let mut kernel = Kernel::default();
    let mut now = Duration::from_secs(1000);
    for op in &input.ops {
        let (frame, direction, after_ms) = match op {
            Op::Query {
                flow,
                id,
                name,
                qtype,
                raw,
                after_ms,
            } => {
                let (client, dns, _) = client(*flow);
                let message = raw.clone().unwrap_or_else(|| {
                    craft::dns_query(
                        *id,
                        NAMES[usize::from(*name) % 4],
                        QTYPES[usize::from(*qtype) % 4],
                    )
                });
                (
                    Frame::plain().udp(client, dns, &message),
                    Direction::FromPod,
                    after_ms,
                )
            }
            Op::Response {
                flow,
                id,
                name,
                rcode,
                raw,
                after_ms,
            } => {
                let (client, dns, _) = client(*flow);
                let message = raw.clone().unwrap_or_else(|| {
                    craft::dns_response(
                        *id,
                        NAMES[usize::from(*name) % 4],
                        RecordType::A,
                        ResponseCode::from(0, rcode & 0x0f),
                    )
                });
                (
                    Frame::plain().udp(dns, client, &message),
                    Direction::ToPod,
                    after_ms,
                )
            }
            Op::Tcp {
                flow,
                flags,
                to_client,
                after_ms,
            } => {
                let (client, _, server) = client(*flow);
                let syn = craft::TcpFlags::SYN;
                let ack = craft::TcpFlags::ACK;
                if *to_client {
                    let flags = if flags & syn != 0 {
                        flags | ack
                    } else {
                        *flags
                    };
                    (
                        Frame::plain().tcp(server, client, flags),
                        Direction::ToPod,
                        after_ms,
                    )
                } else {
                    let flags = if flags & syn != 0 {
                        flags & !ack
                    } else {
                        *flags
                    };
                    (
                        Frame::plain().tcp(client, server, flags),
                        Direction::FromPod,
                        after_ms,
                    )
                }
            }
            Op::Unreachable {
                flow,
                dns,
                after_ms,
            } => {
                let (client, dns_server, server) = client(*flow);
                let quoted = if *dns {
                    let query = craft::dns_query(1, "x.", RecordType::A);
                    let datagram = craft::udp_datagram(client.port(), 53, &query);
                    ip_packet(client, dns_server, IpNextHeaderProtocols::Udp, &datagram)
                } else {
                    let syn =
                        craft::tcp_segment(client.port(), server.port(), craft::TcpFlags::SYN);
                    ip_packet(client, server, IpNextHeaderProtocols::Tcp, &syn)
                };
                let router = match client.ip() {
                    IpAddr::V4(_) => "10.244.0.1".parse().unwrap(),
                    IpAddr::V6(_) => "fd00:10:244::1".parse().unwrap(),
                };
                (
                    Frame::plain().icmp_unreachable(router, client.ip(), 3, &quoted),
                    Direction::ToPod,
                    after_ms,
                )
            }
            Op::Sweep { after_ms } => {
                now += Duration::from_millis(u64::from(*after_ms));
                tracker.sweep(now);
                continue;
            }
        };
        now += Duration::from_millis(u64::from(*after_ms));
        // What the kernel would make of the frame: its kind and key, or nothing.
        let parsed = decode::parse_packet(&frame).expect("crafted frames parse");
        let Some(kind) = decode::event_kind(&parsed) else {
            continue;
        };
        let tuple = parsed.tuple.expect("a tuple");
        let hook = wire_hook(&tuple, direction);
        let record = craft::wire_event(kind, hook.tuple, direction, now.as_nanos() as u64, &frame);
        let mut packet = decode::decode(&record).expect("the kernel's record decodes");
        assert_eq!(packet.hook, hook);
        let rcode = packet
            .dns
            .as_ref()
            .filter(|d| d.is_response)
            .map(|d| d.rcode);
        // The kernel's counters just after this packet, as its event carries them.
        let counters = kernel.count(hook, connection(kind, &tuple), kind, rcode, 1, now);
        packet.counted = decode::HookCount::of(&counters, kind);
        tracker.on_packet(&packet);
    }

    assert_counts_match(&tracker, &kernel, "after the events");
    let fed = sum(kernel.flows.values().copied());
    assert_eq!(packets_total(&metrics), fed, "netprobe_packets_total");

    // Every deadline is past.
    now += Duration::from_secs(3600);
    tracker.sweep(now);
    assert_nothing_pending(&tracker, "after the events");

    // The kernel counted more than the events brought: more packets of a kind a hook
    // counts (a hook sees one direction of one connection).
    let hooks: Vec<HookKey> = {
        let mut hooks: Vec<HookKey> = kernel.hooks.keys().copied().collect();
        hooks.sort_by_key(|h| {
            (
                h.tuple.src_addr,
                h.tuple.dst_addr,
                h.tuple.src_port,
                h.tuple.dst_port,
                h.tuple.protocol,
                h.direction,
            )
        });
        hooks
    };
    if !hooks.is_empty() {
        for &(flow, counter, n) in &input.lost {
            let hook = hooks[usize::from(flow) % hooks.len()];
            let n = u64::from(n % 4);
            let mut current = kernel.hooks[&hook];
            let kinds: Vec<EventKind> = [
                EventKind::Syn,
                EventKind::SynAck,
                EventKind::Rst,
                EventKind::IcmpUnreachable,
                EventKind::DnsQuery,
                EventKind::DnsResponse,
            ]
            .into_iter()
            .filter(|&kind| *counter_of(&mut current, kind) > 0)
            .collect();
            let Some(&kind) = kinds.get(usize::from(counter) % kinds.len().max(1)) else {
                continue;
            };
            let rcode = (kind == EventKind::DnsResponse).then(|| match counter / 8 % 5 {
                0 => ResponseCode::NoError,
                1 => ResponseCode::NXDomain,
                2 => ResponseCode::ServFail,
                3 => ResponseCode::Refused,
                _ => ResponseCode::FormErr,
            });
            // Each kind is the connection of its sender: a hook's queries and the
            // responses a client sent through it are two connections.
            let tuple = decode::flow_from_key(&hook.tuple).expect("TCP or UDP");
            kernel.count(hook, connection(kind, &tuple), kind, rcode, n, now);
        }
    }
    let counters: Vec<(HookKey, FlowCounters)> =
        kernel.hooks.iter().map(|(hook, c)| (*hook, *c)).collect();
    now += Duration::from_secs(1);
    // Read up to now: every count is past the last event read.
    tracker.reconcile(counters.iter().copied(), now, now);
    assert_counts_match(&tracker, &kernel, "after reconciling");
    let counted = sum(kernel.flows.values().copied());
    assert_eq!(
        packets_total(&metrics),
        counted,
        "netprobe_packets_total after reconciling"
    );
    // Reconciling again changes nothing.
    tracker.reconcile(counters.iter().copied(), now, now);
    assert_counts_match(&tracker, &kernel, "after reconciling twice");

    now += Duration::from_secs(3600);
    tracker.sweep(now);
    assert_nothing_pending(&tracker, "after reconciling");
});
