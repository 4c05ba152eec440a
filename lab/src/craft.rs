//! Packet builders for tests, benchmarks and fuzz targets, on pnet's mutable packet types and
//! hickory-proto's DNS encoder. Frames start at the Ethernet header, as on a veth.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use pnet_packet::{
    ethernet::{EtherType, EtherTypes, MutableEthernetPacket},
    ip::{IpNextHeaderProtocol, IpNextHeaderProtocols},
    ipv4::{self, MutableIpv4Packet},
    ipv6::MutableIpv6Packet,
    tcp::MutableTcpPacket,
    udp::MutableUdpPacket,
    vlan::MutableVlanPacket,
};
use probe_ebpf::{
    CAPTURE_BYTES, Direction, EVENT_HEADER_BYTES, EventKind, FlowCounters, FlowKey, HookKey,
    PacketEvent, WIRE_VERSION,
};

pub use pnet_packet::tcp::TcpFlags;

/// How to wrap a transport segment into a frame.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// 802.1Q tags, outermost first.
    pub vlans: Vec<u16>,
    /// Bytes of IPv4 options (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv4 fragment offset in 8-byte units, and the more-fragments flag.
    pub fragment: Option<(u16, bool)>,
    /// IPv6 hop-by-hop options header before the transport header.
    pub ipv6_hop_by_hop: bool,
    /// More IPv6 extension headers (after the hop-by-hop one), in order: each its type
    /// (hop-by-hop, routing, destination options, fragment or AH) and its length field
    /// (8-octet units beyond the first 8; AH: 4-octet units minus 2; fragment: ignored,
    /// always 8 bytes with offset 0). Their bytes are zeros (Pad1 options).
    pub ipv6_extensions: Vec<(IpNextHeaderProtocol, u8)>,
}

impl Frame {
    pub fn plain() -> Self {
        Self::default()
    }

    /// Wraps an IP `payload` of protocol `protocol` from `src` to `dst`.
    pub fn ip(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: IpNextHeaderProtocol,
        payload: &[u8],
    ) -> Vec<u8> {
        let ip = match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(src, dst, protocol, payload),
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(src, dst, protocol, payload),
            _ => panic!("mixed address families"),
        };
        let ether_type = if src.is_ipv4() {
            EtherTypes::Ipv4
        } else {
            EtherTypes::Ipv6
        };
        self.ethernet(ether_type, &ip)
    }

    fn ethernet(&self, ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
        let mut inner = payload.to_vec();
        let mut inner_type = ether_type;
        for &vid in self.vlans.iter().rev() {
            let mut tagged = vec![0u8; 4 + inner.len()];
            let mut vlan = MutableVlanPacket::new(&mut tagged).expect("sized");
            vlan.set_vlan_identifier(vid);
            vlan.set_ethertype(inner_type);
            tagged[4..].copy_from_slice(&inner);
            inner = tagged;
            inner_type = EtherTypes::Vlan;
        }
        let mut frame = vec![0u8; 14 + inner.len()];
        let mut eth = MutableEthernetPacket::new(&mut frame).expect("sized");
        eth.set_destination([0x02, 0, 0, 0, 0, 2].into());
        eth.set_source([0x02, 0, 0, 0, 0, 1].into());
        eth.set_ethertype(inner_type);
        frame[14..].copy_from_slice(&inner);
        frame
    }

    /// An IPv4 packet (no Ethernet header), as an ICMP error quotes it.
    pub fn ipv4(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpNextHeaderProtocol,
        payload: &[u8],
    ) -> Vec<u8> {
        assert!(self.ipv4_options.is_multiple_of(4) && self.ipv4_options <= 40);
        let header = 20 + self.ipv4_options;
        let mut buf = vec![0u8; header + payload.len()];
        let mut ip = MutableIpv4Packet::new(&mut buf).expect("sized");
        ip.set_version(4);
        ip.set_header_length((header / 4) as u8);
        ip.set_total_length((header + payload.len()) as u16);
        ip.set_ttl(64);
        ip.set_next_level_protocol(protocol);
        ip.set_source(src);
        ip.set_destination(dst);
        if let Some((offset, more)) = self.fragment {
            ip.set_fragment_offset(offset);
            ip.set_flags(if more {
                ipv4::Ipv4Flags::MoreFragments
            } else {
                0
            });
        }
        // Options are NOPs (type 1), which any parser must step over (RFC 791).
        buf[20..header].fill(1);
        let checksum = ipv4::checksum(&ipv4::Ipv4Packet::new(&buf).expect("sized"));
        MutableIpv4Packet::new(&mut buf)
            .expect("sized")
            .set_checksum(checksum);
        buf[header..].copy_from_slice(payload);
        buf
    }

    /// An IPv6 packet (no Ethernet header).
    pub fn ipv6(
        &self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        protocol: IpNextHeaderProtocol,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut extensions = Vec::new();
        if self.ipv6_hop_by_hop {
            extensions.push((IpNextHeaderProtocols::Hopopt, 0));
        }
        extensions.extend_from_slice(&self.ipv6_extensions);
        let ext_len = |(kind, len): (IpNextHeaderProtocol, u8)| match kind {
            IpNextHeaderProtocols::Ipv6Frag => 8,
            IpNextHeaderProtocols::Ah => (usize::from(len) + 2) * 4,
            _ => (usize::from(len) + 1) * 8,
        };
        let ext: usize = extensions.iter().copied().map(ext_len).sum();
        let mut buf = vec![0u8; 40 + ext + payload.len()];
        let mut ip = MutableIpv6Packet::new(&mut buf).expect("sized");
        ip.set_version(6);
        ip.set_payload_length((ext + payload.len()) as u16);
        ip.set_hop_limit(64);
        ip.set_source(src);
        ip.set_destination(dst);
        ip.set_next_header(extensions.first().map_or(protocol, |&(kind, _)| kind));
        let mut at = 40;
        for (i, &(kind, len)) in extensions.iter().enumerate() {
            // Next header, then the length field (reserved in a fragment header).
            buf[at] = extensions.get(i + 1).map_or(protocol, |&(next, _)| next).0;
            if kind != IpNextHeaderProtocols::Ipv6Frag {
                buf[at + 1] = len;
            }
            if kind == IpNextHeaderProtocols::Hopopt && len == 0 {
                // A PadN option filling the rest.
                buf[at + 2] = 1;
                buf[at + 3] = 4;
            }
            at += ext_len((kind, len));
        }
        buf[at..].copy_from_slice(payload);
        buf
    }

    pub fn tcp(&self, src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
        self.ip(
            src.ip(),
            dst.ip(),
            IpNextHeaderProtocols::Tcp,
            &tcp_segment(src.port(), dst.port(), flags),
        )
    }

    /// A TCP segment with sequence numbers and payload.
    pub fn tcp_with(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut segment = tcp_segment(src.port(), dst.port(), flags);
        {
            let mut tcp = MutableTcpPacket::new(&mut segment).expect("sized");
            tcp.set_sequence(seq);
            tcp.set_acknowledgement(ack);
        }
        segment.extend_from_slice(payload);
        self.ip(src.ip(), dst.ip(), IpNextHeaderProtocols::Tcp, &segment)
    }

    pub fn udp(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        self.ip(
            src.ip(),
            dst.ip(),
            IpNextHeaderProtocols::Udp,
            &udp_datagram(src.port(), dst.port(), payload),
        )
    }

    /// An ICMP(v6) destination-unreachable from `router` to `to`, quoting `original`
    /// (an IP packet without Ethernet header).
    pub fn icmp_unreachable(
        &self,
        router: IpAddr,
        to: IpAddr,
        code: u8,
        original: &[u8],
    ) -> Vec<u8> {
        let (icmp_type, protocol) = if router.is_ipv4() {
            (3, IpNextHeaderProtocols::Icmp)
        } else {
            (1, IpNextHeaderProtocols::Icmpv6)
        };
        let mut message = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(original);
        self.ip(router, to, protocol, &message)
    }
}

pub fn tcp_segment(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 20];
    let mut tcp = MutableTcpPacket::new(&mut buf).expect("sized");
    tcp.set_source(src_port);
    tcp.set_destination(dst_port);
    tcp.set_data_offset(5);
    tcp.set_flags(flags);
    tcp.set_window(64240);
    tcp.set_sequence(1);
    buf
}

pub fn udp_datagram(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut udp = MutableUdpPacket::new(&mut buf).expect("sized");
    udp.set_source(src_port);
    udp.set_destination(dst_port);
    udp.set_length((8 + payload.len()) as u16);
    buf[8..].copy_from_slice(payload);
    buf
}

/// A DNS query message for `name` (fully qualified, trailing dot optional).
pub fn dns_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    dns_message(id, name, qtype, MessageType::Query, ResponseCode::NoError)
}

/// A DNS response to [`dns_query`] with `rcode` and no answers.
pub fn dns_response(id: u16, name: &str, qtype: RecordType, rcode: ResponseCode) -> Vec<u8> {
    dns_message(id, name, qtype, MessageType::Response, rcode)
}

fn dns_message(
    id: u16,
    name: &str,
    qtype: RecordType,
    kind: MessageType,
    rcode: ResponseCode,
) -> Vec<u8> {
    let mut message = Message::new(id, kind, OpCode::Query);
    message.metadata.recursion_desired = kind == MessageType::Query;
    message.metadata.response_code = rcode;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("valid name"),
        qtype,
    ));
    message.to_vec().expect("encodable")
}

/// A flow key as the kernel writes it (IPv4 as IPv4-mapped IPv6).
pub fn flow_key(protocol: u8, src: SocketAddr, dst: SocketAddr) -> FlowKey {
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    FlowKey {
        src_addr: mapped(src.ip()),
        dst_addr: mapped(dst.ip()),
        src_port: src.port(),
        dst_port: dst.port(),
        protocol,
        _pad: [0; 3],
    }
}

/// A ring-buffer record as the kernel would emit it for `frame`.
pub fn wire_event(
    kind: EventKind,
    key: FlowKey,
    direction: Direction,
    timestamp_ns: u64,
    frame: &[u8],
) -> Vec<u8> {
    let captured = frame.len().min(CAPTURE_BYTES);
    let mut event = PacketEvent {
        version: WIRE_VERSION,
        kind: kind as u32,
        timestamp_ns,
        hook: HookKey {
            tuple: key,
            ifindex: 7,
            direction: direction as u32,
        },
        packet_len: frame.len() as u32,
        captured_len: captured as u32,
        counters: FlowCounters::default(),
        data: [0; CAPTURE_BYTES],
    };
    event.data[..captured].copy_from_slice(&frame[..captured]);
    // SAFETY: PacketEvent is repr(C) plain integers with no padding.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&event as *const PacketEvent).cast::<u8>(),
            size_of::<PacketEvent>(),
        )
    };
    // As the kernel hands it over: the header and the bytes captured.
    bytes[..EVENT_HEADER_BYTES + captured].to_vec()
}
