//! Writes the seed corpora of the fuzz targets (probe-agent/fuzz/corpus/<target>/) from
//! craft's packets, a few DNS messages and query strings:
//! `cargo run -p probe-agent --example fuzz_seeds -- probe-agent/fuzz/corpus`.

use std::{net::SocketAddr, path::Path};

use hickory_proto::{op::ResponseCode, rr::RecordType};
use lab::craft::{self, Frame, TcpFlags};
use pnet_packet::ip::IpNextHeaderProtocols;
use probe_ebpf::{Direction, EventKind, IPPROTO_TCP, IPPROTO_UDP};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

/// (name, kind, flow key, frame) for each kind of packet the kernel sends: the key is
/// the tuple as on the wire (for an ICMP error, the quoted packet's), as in wire format 2.
fn packets() -> Vec<(&'static str, EventKind, probe_ebpf::FlowKey, Vec<u8>)> {
    let (client, server) = (addr("10.244.0.5:41234"), addr("10.96.45.123:8080"));
    let (client6, server6) = (addr("[fd00::5]:41000"), addr("[fd00::9]:443"));
    let (resolver, dns) = (addr("10.244.0.5:5353"), addr("10.96.0.10:53"));
    let tcp = craft::flow_key(IPPROTO_TCP, client, server);
    let tcp6 = craft::flow_key(IPPROTO_TCP, client6, server6);
    let tcp_back = craft::flow_key(IPPROTO_TCP, server, client);
    let tcp6_back = craft::flow_key(IPPROTO_TCP, server6, client6);
    let udp = craft::flow_key(IPPROTO_UDP, resolver, dns);
    let udp_back = craft::flow_key(IPPROTO_UDP, dns, resolver);
    let dns_tcp = craft::flow_key(IPPROTO_TCP, resolver, dns);
    let name = "paymnt-service.production.svc.cluster.local.";
    let quoted = Frame::plain().ipv4(
        "10.244.0.5".parse().unwrap(),
        "10.96.45.123".parse().unwrap(),
        IpNextHeaderProtocols::Tcp,
        &craft::tcp_segment(41234, 8080, TcpFlags::SYN),
    );
    let quoted6 = Frame::plain().ipv6(
        "fd00::5".parse().unwrap(),
        "fd00::9".parse().unwrap(),
        IpNextHeaderProtocols::Tcp,
        &craft::tcp_segment(41000, 443, TcpFlags::SYN),
    );
    vec![
        (
            "syn-ipv4",
            EventKind::Syn,
            tcp,
            Frame::plain().tcp(client, server, TcpFlags::SYN),
        ),
        (
            "syn-vlan-options",
            EventKind::Syn,
            tcp,
            Frame {
                vlans: vec![10, 20],
                ipv4_options: 8,
                ..Frame::default()
            }
            .tcp(client, server, TcpFlags::SYN),
        ),
        (
            "syn-ack-ipv6-hop-by-hop",
            EventKind::SynAck,
            tcp6_back,
            Frame {
                ipv6_hop_by_hop: true,
                ..Frame::default()
            }
            .tcp(server6, client6, TcpFlags::SYN | TcpFlags::ACK),
        ),
        (
            "rst-ack",
            EventKind::Rst,
            tcp_back,
            Frame::plain().tcp(server, client, TcpFlags::RST | TcpFlags::ACK),
        ),
        (
            "icmp-unreachable",
            EventKind::IcmpUnreachable,
            tcp,
            Frame::plain().icmp_unreachable(
                "10.244.0.1".parse().unwrap(),
                "10.244.0.5".parse().unwrap(),
                3,
                &quoted,
            ),
        ),
        (
            "icmpv6-unreachable",
            EventKind::IcmpUnreachable,
            tcp6,
            Frame::plain().icmp_unreachable(
                "fd00::1".parse().unwrap(),
                "fd00::5".parse().unwrap(),
                4,
                &quoted6,
            ),
        ),
        (
            "dns-query",
            EventKind::DnsQuery,
            udp,
            Frame::plain().udp(resolver, dns, &craft::dns_query(4711, name, RecordType::A)),
        ),
        (
            "dns-nxdomain",
            EventKind::DnsResponse,
            udp_back,
            Frame::plain().udp(
                dns,
                resolver,
                &craft::dns_response(4711, name, RecordType::A, ResponseCode::NXDomain),
            ),
        ),
        (
            "dns-tcp-segment",
            EventKind::DnsTcpSegment,
            dns_tcp,
            Frame::plain().tcp_with(
                resolver,
                dns,
                TcpFlags::PSH | TcpFlags::ACK,
                1001,
                5001,
                &[
                    &(craft::dns_query(4712, name, RecordType::A).len() as u16).to_be_bytes()[..],
                    &craft::dns_query(4712, name, RecordType::A),
                ]
                .concat(),
            ),
        ),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: fuzz_seeds <corpus directory>");
    let out = Path::new(&out);
    for (name, kind, key, frame) in packets() {
        let record = craft::wire_event(kind, key, Direction::FromPod, 1_000_000_000, &frame);
        write(&out.join("decode_record"), name, &record);
        // decode_packet: a selector byte (0: the kernel's kind and key), then the frame.
        write(
            &out.join("decode_packet"),
            name,
            &[&[0u8][..], &frame].concat(),
        );
    }
    let dns = out.join("dns");
    let name = "flagsmith-postgresql.flagsmith.svc.cluster.local.";
    write(&dns, "query-a", &craft::dns_query(1, name, RecordType::A));
    write(
        &dns,
        "response-aaaa-servfail",
        &craft::dns_response(2, name, RecordType::AAAA, ResponseCode::ServFail),
    );
    write(
        &dns,
        "response-srv-refused",
        &craft::dns_response(3, "_http._tcp.x.", RecordType::SRV, ResponseCode::Refused),
    );
    let mut header_only = craft::dns_response(4, name, RecordType::A, ResponseCode::NXDomain);
    header_only.truncate(12);
    write(&dns, "header-only", &header_only);

    // The tracker's input is arbitrary-encoded operations: a few byte patterns to start
    // from (the fuzzer finds the structure quickly).
    let track = out.join("track");
    write(&track, "zeros", &[0u8; 64]);
    write(&track, "ramp", &(0u8..=255).collect::<Vec<u8>>());
    write(&track, "ones", &[1u8; 128]);

    let queries = [
        ("verdicts-and-port", "verdict=TIMEOUT,REFUSED&port=8080"),
        ("ipv6-since-limit", "ip=fd00::9&since=30s&limit=10"),
        (
            "pod-namespace-protocol",
            "pod=checkout-*&namespace=production&protocol=tcp",
        ),
        ("rfc3339-follow", "since=2026-11-23T10:00:00Z&follow=true"),
        ("addresses", "src_ip=10.244.0.5&dst_ip=10.96.0.10"),
        ("percent-encoded", "verdict=%4EXDOMAIN%2CDNS_TIMEOUT"),
        ("unknown", "colour=red"),
        ("repeated", "port=80&port=443"),
    ];
    for (name, query) in queries {
        write(&out.join("query_string"), name, query.as_bytes());
        write(&out.join("query_pairs"), name, query.as_bytes());
    }
}
