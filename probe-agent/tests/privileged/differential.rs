//! Differential test: 100,000 random and mutated packets, each through the real kernel
//! program (BPF_PROG_TEST_RUN, ingress or egress hook at random) and through the agent's
//! own parser (pnet, `decode::parse_packet` + `decode::event_kind`). For every packet:
//!
//! - the kernel passes it on unchanged (TC_ACT_UNSPEC, data out = data in);
//! - the kernel sends an event exactly when the agent reads a verdict-relevant packet,
//!   of the same kind, at the hook it ran at, on the tuple the agent reads as on the
//!   wire (for an ICMP error, the quoted packet's: wire format 2, no orientation in the
//!   kernel), and the agent decodes that event (`decode::decode`, the production path)
//!   to the same kind, tuple and hook;
//! - the kernel's per-hook counters are exactly the events it sent, by kind and by DNS
//!   rcode (the agent's reading of the rcode), checked after each event (the event's
//!   own counters are the map's entry just after it) and in full at the end.
//!
//! Where the two legitimately differ, the rule is written out below (`Rule`) and each
//! case is counted; anything else fails the test with the packet in hex. The PRNG seed is
//! printed and can be set with NETPROBE_DIFFERENTIAL_SEED (the number of packets with
//! NETPROBE_DIFFERENTIAL_PACKETS) so that a failure reproduces.

use crate::kernel::header;
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use hickory_proto::{op::ResponseCode, rr::RecordType};
use lab::craft::{self, Frame, TcpFlags};
use pnet_packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use probe_agent::{
    decode::{self, DecodeError, ParsedPacket},
    loader::{self, LoadOptions, ProbeMaps},
    model::{Flow, Protocol},
};
use probe_ebpf::{
    CAPTURE_BYTES, Direction, EGRESS_PROGRAM, EventKind, FlowCounters, HookKey, INGRESS_PROGRAM,
    IPPROTO_TCP, IPPROTO_UDP, LossCounter,
};

const DEFAULT_PACKETS: usize = 100_000;
const DEFAULT_SEED: u64 = 0x6e65_7470_726f_6265; // "netprobe"
const SEED_ENV: &str = "NETPROBE_DIFFERENTIAL_SEED";
const PACKETS_ENV: &str = "NETPROBE_DIFFERENTIAL_PACKETS";

/// BPF_PROG_TEST_RUN runs programs on packets from the loopback device.
const LOOPBACK_IFINDEX: u32 = 1;
/// TC_ACT_UNSPEC (-1), also TCX_NEXT: "carry on with the next program".
const PASS_ON: u32 = u32::MAX;
const ETH_HLEN: usize = 14;
/// Room for every hook a run of `packets` can count at (about 3 in 10 packets start a
/// new one), so that no LRU eviction blurs the counts.
fn flow_entries(packets: usize) -> u32 {
    (packets / 2).max(1 << 16).next_power_of_two() as u32
}

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, from: usize, to: usize) -> usize {
        from + self.below(to - from + 1)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// From `from` to `to` random bytes.
    fn bytes(&mut self, from: usize, to: usize) -> Vec<u8> {
        let n = self.range(from, to);
        (0..n).map(|_| self.byte()).collect()
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

// ---------------------------------------------------------------------------------------
// Packets: craft's valid frames of every kind the kernel cares about (and some it does
// not), then mutated: bytes flipped or set, truncated, extended, shifted; plus pure noise.

const TCP_FLAGS: &[u8] = &[
    TcpFlags::SYN,
    TcpFlags::SYN,
    TcpFlags::SYN | TcpFlags::ACK,
    TcpFlags::RST,
    TcpFlags::RST | TcpFlags::ACK,
    TcpFlags::ACK,
    TcpFlags::PSH | TcpFlags::ACK,
    TcpFlags::FIN | TcpFlags::ACK,
    TcpFlags::SYN | TcpFlags::FIN,
    TcpFlags::SYN | TcpFlags::RST,
];

const NAMES: &[&str] = &[
    "payment-service.production.svc.cluster.local.",
    "paymnt-service.production.svc.cluster.local.",
    "kubernetes.default.svc.cluster.local.",
    "x.",
    ".",
];

const QTYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::TXT,
];

const EXTENSIONS: &[IpNextHeaderProtocol] = &[
    IpNextHeaderProtocols::Hopopt,
    IpNextHeaderProtocols::Ipv6Route,
    IpNextHeaderProtocols::Ipv6Opts,
    IpNextHeaderProtocols::Ipv6Frag,
    IpNextHeaderProtocols::Ah,
];

/// Addresses from a small pool, so that tuples repeat (counts adding up at a hook),
/// sometimes anything.
fn address(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        if rng.one_in(5) {
            return IpAddr::V6(Ipv6Addr::from(
                rng.next() as u128 | (rng.next() as u128) << 64,
            ));
        }
        let pool: [Ipv6Addr; 5] = [
            "fd00:10:244::5".parse().unwrap(),
            "fd00:10:244::9".parse().unwrap(),
            "fd00:10:96::a".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            // An IPv4-mapped address inside an IPv6 packet.
            "::ffff:10.244.0.5".parse().unwrap(),
        ];
        IpAddr::V6(rng.pick(&pool))
    } else {
        if rng.one_in(5) {
            return IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        }
        let pool: [Ipv4Addr; 5] = [
            Ipv4Addr::new(10, 244, 0, 5),
            Ipv4Addr::new(10, 244, 0, 9),
            Ipv4Addr::new(10, 96, 0, 10),
            Ipv4Addr::new(10, 96, 0, 20),
            Ipv4Addr::new(192, 0, 2, 7),
        ];
        IpAddr::V4(rng.pick(&pool))
    }
}

fn port(rng: &mut Rng) -> u16 {
    if rng.one_in(3) {
        return rng.next() as u16;
    }
    rng.pick(&[53, 80, 443, 8080, 5432, 40000, 41234, 0, 65535])
}

fn ends(rng: &mut Rng, v6: bool) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(address(rng, v6), port(rng)),
        SocketAddr::new(address(rng, v6), port(rng)),
    )
}

/// VLAN tags, IPv4 options and fragments, IPv6 extension headers (sometimes more than
/// the kernel walks, sometimes long enough to push the transport header past what the
/// kernel captures).
fn shape(rng: &mut Rng) -> Frame {
    let mut frame = Frame::default();
    match rng.below(10) {
        0 => frame.vlans = vec![rng.range(1, 4094) as u16],
        1 => frame.vlans = vec![rng.range(1, 4094) as u16, rng.range(1, 4094) as u16],
        _ => {}
    }
    if rng.one_in(6) {
        frame.ipv4_options = 4 * rng.range(1, 10);
    }
    if rng.one_in(10) {
        frame.fragment = Some(if rng.one_in(2) {
            (0, true)
        } else {
            (rng.range(1, 8191) as u16, rng.one_in(2))
        });
    }
    if rng.one_in(4) {
        frame.ipv6_hop_by_hop = rng.one_in(2);
        let long = rng.one_in(10);
        frame.ipv6_extensions = (0..rng.range(1, 8))
            .map(|_| {
                let len = if long { rng.range(8, 60) } else { rng.below(3) } as u8;
                (rng.pick(EXTENSIONS), len)
            })
            .collect();
    }
    frame
}

/// An IP packet without Ethernet header, as an ICMP error quotes it.
fn ip_packet(
    frame: &Frame,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpNextHeaderProtocol,
    payload: &[u8],
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => frame.ipv4(s, d, protocol, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => frame.ipv6(s, d, protocol, payload),
        _ => unreachable!("one family"),
    }
}

fn dns_message(rng: &mut Rng) -> Vec<u8> {
    let id = rng.next() as u16;
    let name = rng.pick(NAMES);
    let qtype = rng.pick(QTYPES);
    match rng.below(8) {
        0 => rng.bytes(0, 39),
        1..=3 => craft::dns_query(id, name, qtype),
        _ => craft::dns_response(id, name, qtype, ResponseCode::from(0, rng.below(16) as u8)),
    }
}

fn base_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.one_in(2);
    let frame = shape(rng);
    let mut bytes = match rng.below(100) {
        // TCP handshakes, resets, data; to or from port 53 with payload at times (DNS
        // over TCP).
        0..35 => {
            let (mut src, mut dst) = ends(rng, v6);
            let flags = if rng.one_in(10) {
                rng.byte()
            } else {
                rng.pick(TCP_FLAGS)
            };
            if rng.one_in(4) {
                if rng.one_in(2) {
                    dst.set_port(53);
                } else {
                    src.set_port(53);
                }
            }
            if rng.one_in(3) {
                let payload = if rng.one_in(2) {
                    let mut framed = dns_message(rng);
                    let len = (framed.len() as u16).to_be_bytes();
                    framed.splice(0..0, len);
                    framed
                } else {
                    rng.bytes(0, 40)
                };
                let (seq, ack) = (rng.next() as u32, rng.next() as u32);
                frame.tcp_with(src, dst, flags, seq, ack, &payload)
            } else {
                frame.tcp(src, dst, flags)
            }
        }
        // DNS to or from port 53 (a query, a response, or garbage).
        35..60 => {
            let (client, mut server) = ends(rng, v6);
            server.set_port(53);
            let message = dns_message(rng);
            if rng.one_in(2) {
                frame.udp(client, server, &message)
            } else {
                frame.udp(server, client, &message)
            }
        }
        // UDP that is not DNS (unless the random ports say so).
        60..67 => {
            let (src, dst) = ends(rng, v6);
            frame.udp(src, dst, &rng.bytes(0, 63))
        }
        // ICMP(v6) destination unreachable quoting a SYN or a DNS query (or other UDP),
        // the quote itself with options, fragments or extension headers at times.
        67..87 => {
            let (client, server) = ends(rng, v6);
            let quote_shape = if rng.one_in(4) {
                shape(rng)
            } else {
                Frame::default()
            };
            let quoted = if rng.one_in(2) {
                let syn = craft::tcp_segment(client.port(), server.port(), TcpFlags::SYN);
                ip_packet(
                    &quote_shape,
                    client.ip(),
                    server.ip(),
                    IpNextHeaderProtocols::Tcp,
                    &syn,
                )
            } else {
                let dst_port = if rng.one_in(4) { port(rng) } else { 53 };
                let query = craft::dns_query(1, "x.", RecordType::A);
                let datagram = craft::udp_datagram(client.port(), dst_port, &query);
                ip_packet(
                    &quote_shape,
                    client.ip(),
                    server.ip(),
                    IpNextHeaderProtocols::Udp,
                    &datagram,
                )
            };
            // The quote may be cut short, as routers do.
            let quoted = &quoted[..quoted.len() - rng.below(quoted.len().min(16))];
            let router = address(rng, v6);
            let code = if v6 { rng.below(8) } else { rng.below(16) } as u8;
            frame.icmp_unreachable(router, client.ip(), code, quoted)
        }
        // Other ICMP(v6): echo, time exceeded, packet too big.
        87..91 => {
            let (src, dst) = ends(rng, v6);
            let (protocol, kind) = if v6 {
                (IpNextHeaderProtocols::Icmpv6, rng.pick(&[2u8, 3, 128, 129]))
            } else {
                (IpNextHeaderProtocols::Icmp, rng.pick(&[0u8, 8, 11, 12]))
            };
            let mut message = vec![kind, 0, 0, 0, 0, 0, 0, 0];
            message.extend(rng.bytes(0, 47));
            frame.ip(src.ip(), dst.ip(), protocol, &message)
        }
        // Not IP at all: ARP, LLDP, anything.
        91..96 => {
            let mut bytes = rng.bytes(ETH_HLEN, 120);
            let anything = rng.next() as u16;
            let ether_type = rng.pick(&[0x0806u16, 0x88cc, 0x8847, anything]);
            bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
            bytes
        }
        // Noise, half of it claiming to be IP.
        _ => {
            let mut bytes = rng.bytes(ETH_HLEN, 200);
            if rng.one_in(2) {
                let (ether_type, version) = rng.pick(&[(0x0800u16, 0x45u8), (0x86dd, 0x60)]);
                bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
                if bytes.len() > ETH_HLEN {
                    bytes[ETH_HLEN] = version;
                }
            }
            bytes
        }
    };
    // The outer VLAN tag as 802.1ad (the kernel steps over it) or the old 0x9100 (it
    // does not).
    if !frame.vlans.is_empty() && rng.one_in(3) {
        let outer = rng.pick(&[0x88a8u16, 0x9100]);
        bytes[12..14].copy_from_slice(&outer.to_be_bytes());
    }
    bytes
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let len = bytes.len();
        match rng.below(9) {
            // Flip a bit, anywhere or in the headers.
            0 if len > 0 => bytes[rng.below(len)] ^= 1 << rng.below(8),
            1 if len > 0 => bytes[rng.below(len.min(80))] ^= 1 << rng.below(8),
            // Set a byte to anything.
            2 if len > 0 => bytes[rng.below(len.min(80))] = rng.byte(),
            3 if len > 0 => bytes[rng.below(len)] = rng.byte(),
            // Cut: mostly leaving the Ethernet header, rarely not even that.
            4 => {
                let keep = if rng.one_in(20) {
                    rng.below(ETH_HLEN)
                } else {
                    rng.range(ETH_HLEN.min(len), len)
                };
                bytes.truncate(keep);
            }
            // Extend: a little, or past the bytes the kernel captures.
            5 => {
                let more = if rng.one_in(4) {
                    rng.range(CAPTURE_BYTES.saturating_sub(len), 1200 - len.min(1200))
                } else {
                    rng.range(1, 64)
                };
                bytes.extend(rng.bytes(more, more));
            }
            // Shift the headers: insert or remove a few bytes.
            6 => {
                let at = rng.below(len + 1);
                let inserted = rng.bytes(1, 8);
                bytes.splice(at..at, inserted);
            }
            7 if len > 0 => {
                let at = rng.below(len);
                let end = (at + rng.range(1, 8)).min(len);
                bytes.drain(at..end);
            }
            _ => {}
        }
    }
}

/// BPF_PROG_TEST_RUN takes at most a page less the skb's head- and tailroom (3,712
/// bytes on x86-64); frames are kept well below (veth MTU 1500, and headers long enough
/// to pass the captured bytes).
const MAX_FRAME: usize = 3000;

fn packet(rng: &mut Rng) -> Vec<u8> {
    let mut bytes = base_frame(rng);
    if !rng.one_in(4) {
        mutate(rng, &mut bytes);
    }
    bytes.truncate(MAX_FRAME);
    bytes
}

// ---------------------------------------------------------------------------------------
// The comparison.

/// Where the kernel and the agent may legitimately differ. Each is checked as narrowly
/// as it can be, and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    /// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and IPv4/IPv6
    /// frames too short for their IP header, before any program runs: nothing to compare
    /// (on a real veth such frames never reach the program either).
    RefusedByTestRun,
    /// The kernel reads ports and flags from the first 14 bytes of a TCP header; pnet
    /// needs the whole 20-byte header. Padded to a full header, the agent reads the same
    /// kind and flow key (the event is a decode error in the agent; the kernel's counts
    /// still count it).
    ShortTcpHeader,
    /// The kernel parses the whole packet but hands over only its first CAPTURE_BYTES
    /// (448): when a header lies past them (long IPv6 extension headers), the event does
    /// not decode, while the agent's reading of the whole packet agrees with the kernel.
    PastTheCapture,
}

impl Rule {
    fn describe(self) -> &'static str {
        match self {
            Self::RefusedByTestRun => "refused by BPF_PROG_TEST_RUN (runt or IP header cut)",
            Self::ShortTcpHeader => "kernel event, TCP header of 14-19 bytes (pnet needs 20)",
            Self::PastTheCapture => "kernel event, headers past the 448 captured bytes",
        }
    }
}

/// The kernel's counters that the test predicts.
fn predicted(counters: &FlowCounters) -> [u64; 12] {
    [
        counters.syn,
        counters.syn_ack,
        counters.rst,
        counters.icmp_unreachable,
        counters.dns_queries,
        counters.dns_responses,
        counters.dns_nxdomain,
        counters.dns_servfail,
        counters.dns_refused,
        counters.dns_other_error,
        counters.dns_tcp_segments,
        counters._reserved,
    ]
}

/// The kernel's per-hook counters as the events say they must be.
#[derive(Default)]
struct Model {
    hooks: HashMap<HookKey, FlowCounters>,
}

impl Model {
    fn count(&mut self, key: HookKey, kind: EventKind, rcode: Option<ResponseCode>) {
        let c = self.hooks.entry(key).or_default();
        match kind {
            EventKind::Syn => c.syn += 1,
            EventKind::SynAck => c.syn_ack += 1,
            EventKind::Rst => c.rst += 1,
            EventKind::IcmpUnreachable => c.icmp_unreachable += 1,
            EventKind::DnsQuery => c.dns_queries += 1,
            EventKind::DnsTcpSegment => c.dns_tcp_segments += 1,
            EventKind::DnsResponse => {
                c.dns_responses += 1;
                // RFC 1035 §4.1.1 / RFC 6895 §2.3 rcodes, as the kernel sorts them.
                match rcode.map(u16::from) {
                    Some(0) | None => {}
                    Some(2) => c.dns_servfail += 1,
                    Some(3) => c.dns_nxdomain += 1,
                    Some(5) => c.dns_refused += 1,
                    Some(_) => c.dns_other_error += 1,
                }
            }
        }
    }

    /// Where the kernel counts a packet with 5-tuple `tuple` (the agent's reading, as on
    /// the wire; for an ICMP error, the quoted packet's) seen at `direction`: that tuple
    /// at that hook, whatever the kind. Every hook that sees a packet counts it.
    fn key(tuple: &Flow, direction: Direction) -> HookKey {
        let protocol = match tuple.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        let src = SocketAddr::new(tuple.src_ip, tuple.src_port);
        let dst = SocketAddr::new(tuple.dst_ip, tuple.dst_port);
        HookKey {
            tuple: craft::flow_key(protocol, src, dst),
            ifindex: LOOPBACK_IFINDEX,
            direction: direction as u32,
        }
    }
}

/// What the agent makes of a frame: the event the kernel must send for it, or why none.
fn reading(parsed: &Result<ParsedPacket, DecodeError>) -> Result<(EventKind, Flow), String> {
    match parsed {
        Err(DecodeError::Malformed(why)) => Err(format!("agent: {why}")),
        Err(other) => Err(format!("agent: {other}")),
        Ok(parsed) => match (decode::event_kind(parsed), parsed.tuple) {
            (Some(kind), Some(tuple)) => Ok((kind, tuple)),
            _ => Err("agent: not verdict-relevant".into()),
        },
    }
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Syn => "SYN",
        EventKind::SynAck => "SYN-ACK",
        EventKind::Rst => "RST",
        EventKind::IcmpUnreachable => "ICMP unreachable",
        EventKind::DnsQuery => "DNS query",
        EventKind::DnsResponse => "DNS response",
        EventKind::DnsTcpSegment => "DNS-over-TCP segment",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

struct Probe {
    ebpf: Ebpf,
    maps: ProbeMaps,
}

impl Probe {
    /// Runs `frame` through the program at `hook`: `None` if BPF_PROG_TEST_RUN refuses
    /// it, else the events it sent. Asserts the packet is passed on unchanged.
    fn run(&mut self, hook: &'static str, frame: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let program: &mut SchedClassifier = loader::classifier(&mut self.ebpf, hook).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = match program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        }) {
            Ok(result) => result,
            Err(err) => return Err(err.to_string()),
        };
        assert_eq!(
            result.return_value,
            PASS_ON,
            "every packet is passed on: {}",
            hex(frame)
        );
        assert_eq!(
            &out[..result.data_size_out as usize],
            frame,
            "the packet leaves unchanged"
        );
        let mut events = Vec::new();
        while let Some(item) = self.maps.events.next() {
            events.push(item.to_vec());
        }
        Ok(events)
    }

    fn counters(&self, key: &HookKey) -> Option<FlowCounters> {
        self.maps.flow_counts.get(key, 0).ok()
    }

    fn losses(&self, counter: LossCounter) -> u64 {
        loader::kernel_count(&self.maps.losses, counter)
    }
}

/// Whether BPF_PROG_TEST_RUN may refuse `frame` (see [`Rule::RefusedByTestRun`]).
fn refusable(frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => frame.len() < ETH_HLEN + 20,
        0x86dd => frame.len() < ETH_HLEN + 40,
        _ => false,
    }
}

/// Compares the kernel's event for `frame` with the agent's reading of it. Returns the
/// kind and hook to count it on, and the rule the two differ by, if any.
fn compare_event(
    frame: &[u8],
    record: &[u8],
    direction: Direction,
    parsed: &Result<ParsedPacket, DecodeError>,
) -> Result<(EventKind, HookKey, Option<Rule>), String> {
    let event = header(record);
    let kernel_kind = EventKind::try_from(event.kind)
        .map_err(|_| format!("unknown event kind {}", event.kind))?;
    if event.hook.direction != direction as u32 || event.hook.ifindex != LOOPBACK_IFINDEX {
        return Err(format!(
            "direction {} / ifindex {} in the event",
            event.hook.direction, event.hook.ifindex
        ));
    }
    // What the agent reads, by the rules where the two may differ.
    let (kind, tuple, rule) = match reading(parsed) {
        Ok((kind, tuple)) => (kind, tuple, None),
        Err(why)
            if *parsed == Err(DecodeError::Malformed("truncated TCP header"))
                && matches!(
                    kernel_kind,
                    EventKind::Syn | EventKind::SynAck | EventKind::Rst | EventKind::DnsTcpSegment
                ) =>
        {
            let padded = [frame, &[0u8; 6]].concat();
            let (kind, tuple) = reading(&decode::parse_packet(&padded)).map_err(|padded_why| {
                format!(
                    "the kernel sent a {}; {why}, and padded: {padded_why}",
                    kind_name(kernel_kind)
                )
            })?;
            (kind, tuple, Some(Rule::ShortTcpHeader))
        }
        Err(why) => {
            return Err(format!(
                "the kernel sent a {} on {:?}; {why}",
                kind_name(kernel_kind),
                decode::flow_from_key(&event.hook.tuple)
            ));
        }
    };
    if kind != kernel_kind {
        return Err(format!(
            "the kernel sent a {}, the agent reads a {}",
            kind_name(kernel_kind),
            kind_name(kind)
        ));
    }
    let key = Model::key(&tuple, direction);
    if event.hook != key {
        return Err(format!(
            "{}: kernel tuple {:?}, agent tuple {:?}",
            kind_name(kind),
            decode::flow_from_key(&event.hook.tuple),
            decode::flow_from_key(&key.tuple)
        ));
    }
    // The production path: the agent decodes the event to the same kind, tuple and hook.
    let rule = match decode::decode(record) {
        Ok(packet)
            if (packet.kind, Ok(packet.tuple), packet.hook)
                == (kind, decode::flow_from_key(&key.tuple), key) =>
        {
            rule
        }
        Ok(packet) => return Err(format!("decoded as {packet:?}")),
        Err(_) if rule == Some(Rule::ShortTcpHeader) => rule,
        Err(_)
            if frame.len() > CAPTURE_BYTES
                && reading(&decode::parse_packet(&frame[..CAPTURE_BYTES])) != Ok((kind, tuple)) =>
        {
            Some(Rule::PastTheCapture)
        }
        Err(err) => {
            return Err(format!(
                "the {} event does not decode: {err}",
                kind_name(kind)
            ));
        }
    };
    Ok((kind, key, rule))
}

/// Takes the kernel's counts of `key` into the model.
fn resync(model: &mut Model, probe: &Probe, key: &HookKey) {
    match probe.counters(key) {
        Some(counters) => model.hooks.insert(*key, counters),
        None => model.hooks.remove(key),
    };
}

#[test]
fn kernel_and_agent_agree_on_random_and_mutated_packets() {
    let seed = env_number(SEED_ENV).unwrap_or(DEFAULT_SEED);
    let packets = env_number(PACKETS_ENV).map_or(DEFAULT_PACKETS, |n| n as usize);
    eprintln!("differential: seed {seed:#x} ({SEED_ENV}), {packets} packets ({PACKETS_ENV})");
    let mut rng = Rng(seed);

    let mut ebpf = loader::load(LoadOptions {
        flow_counts_entries: flow_entries(packets),
        ..LoadOptions::default()
    })
    .expect("load the kernel program");
    let maps = loader::take_maps(&mut ebpf).expect("maps");
    let mut probe = Probe { ebpf, maps };
    let mut model = Model::default();
    let mut agreed: BTreeMap<String, u64> = BTreeMap::new();
    let mut ruled: BTreeMap<Rule, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut failed = 0usize;
    let started = Instant::now();

    for i in 0..packets {
        let frame = packet(&mut rng);
        let (hook, direction) = if rng.one_in(2) {
            (INGRESS_PROGRAM, Direction::FromPod)
        } else {
            (EGRESS_PROGRAM, Direction::ToPod)
        };
        let mut fail = |why: String| {
            failed += 1;
            if failures.len() < 20 {
                failures.push(format!("packet {i} ({hook}): {why}\n    {}", hex(&frame)));
            }
        };

        let events = match probe.run(hook, &frame) {
            Ok(events) => events,
            Err(err) => {
                if refusable(&frame) {
                    *ruled.entry(Rule::RefusedByTestRun).or_default() += 1;
                } else {
                    fail(format!(
                        "BPF_PROG_TEST_RUN refused a {}-byte frame: {err}",
                        frame.len()
                    ));
                }
                continue;
            }
        };
        if events.len() > 1 {
            fail(format!("{} events for one packet", events.len()));
            continue;
        }
        let parsed = decode::parse_packet(&frame);
        let agent = reading(&parsed);
        let Some(record) = events.first() else {
            match agent {
                Err(why) => *agreed.entry(format!("no event; {why}")).or_default() += 1,
                Ok((kind, tuple)) => fail(format!(
                    "the agent reads a {} on {tuple}, the kernel sent nothing",
                    kind_name(kind)
                )),
            }
            continue;
        };

        let event = header(record);
        match compare_event(&frame, record, direction, &parsed) {
            Ok((kind, key, rule)) => {
                match rule {
                    Some(rule) => *ruled.entry(rule).or_default() += 1,
                    None => {
                        *agreed
                            .entry(format!("event; {}", kind_name(kind)))
                            .or_default() += 1
                    }
                }
                // Counted exactly once, on that key, with the rcode the agent reads.
                let rcode = parsed
                    .as_ref()
                    .ok()
                    .and_then(|p| p.dns.as_ref())
                    .filter(|_| kind == EventKind::DnsResponse)
                    .map(|dns| dns.rcode);
                model.count(key, kind, rcode);
                let expected = predicted(&model.hooks[&key]);
                match probe.counters(&key) {
                    // The event carries the hook's counters just after this packet: the
                    // map's entry, as nothing has run since.
                    Some(counters) if counters != event.counters => fail(format!(
                        "{}: the event's counters {:?} are not its hook's {:?}",
                        kind_name(kind),
                        event.counters,
                        counters
                    )),
                    Some(counters) if predicted(&counters) == expected => {}
                    other => {
                        fail(format!(
                            "counters of {:?} at {direction:?}: kernel {:?}, expected {expected:?}",
                            decode::flow_from_key(&key.tuple),
                            other.as_ref().map(predicted)
                        ));
                        resync(&mut model, &probe, &key);
                    }
                }
            }
            Err(why) => {
                fail(why);
                // One disagreement is reported once: the flow's counts are taken as the
                // kernel has them from here on.
                resync(&mut model, &probe, &event.hook);
            }
        }
    }
    let elapsed = started.elapsed();

    // Every hook the kernel counts at is one the events announced, with the same counts.
    let kernel: Vec<(HookKey, FlowCounters)> = probe
        .maps
        .flow_counts
        .iter()
        .map(|entry| entry.expect("read a flow counter"))
        .collect();
    for (key, counters) in &kernel {
        match model.hooks.get(key) {
            Some(expected) if predicted(expected) == predicted(counters) => {}
            expected => {
                failed += 1;
                failures.push(format!(
                    "end of run: kernel counts {:?} on {:?} at direction {}, expected {:?}",
                    predicted(counters),
                    decode::flow_from_key(&key.tuple),
                    key.direction,
                    expected.map(predicted)
                ));
            }
        }
    }
    if kernel.len() != model.hooks.len() {
        failed += 1;
        failures.push(format!(
            "end of run: the kernel counts at {} hooks, the events announced {}",
            kernel.len(),
            model.hooks.len()
        ));
    }
    let lost = (
        probe.losses(LossCounter::RingFull),
        probe.losses(LossCounter::CountsUpdate),
    );
    if lost != (0, 0) {
        failed += 1;
        failures.push(format!("losses (ring full, counts update): {lost:?}"));
    }

    eprintln!(
        "differential: {packets} packets in {:.1} s ({:.0}/s), {} hook tuples counted",
        elapsed.as_secs_f64(),
        packets as f64 / elapsed.as_secs_f64(),
        kernel.len()
    );
    let events: u64 = agreed
        .iter()
        .filter(|(k, _)| k.starts_with("event"))
        .map(|(_, n)| n)
        .sum();
    eprintln!("  agree, {events} events:");
    for (what, n) in agreed.iter().filter(|(k, _)| k.starts_with("event")) {
        eprintln!("    {n:>7}  {what}");
    }
    eprintln!(
        "  agree, no event: {}",
        agreed
            .iter()
            .filter(|(k, _)| !k.starts_with("event"))
            .map(|(_, n)| n)
            .sum::<u64>()
    );
    for (what, n) in agreed.iter().filter(|(k, _)| !k.starts_with("event")) {
        eprintln!("    {n:>7}  {what}");
    }
    eprintln!("  differ by a stated rule:");
    for (rule, n) in &ruled {
        eprintln!("    {n:>7}  {}", rule.describe());
    }
    eprintln!("  disagree: {failed}");
    assert!(
        failed == 0,
        "{failed} packets where the kernel and the agent disagree (seed {seed:#x}); the first:\n{}",
        failures.join("\n")
    );
}
