//! Wire events → typed packets.
//!
//! The kernel hands over a [`PacketEvent`] record cut after the bytes it captured: a
//! header it filled in ([`EventHeader`], [`EVENT_HEADER_BYTES`]) and as many of the
//! packet's leading bytes as its kind needs (`captured_len`). The header's enums are decoded with `TryFrom` (never
//! transmuted); the bytes are parsed again here with pnet, and DNS with hickory-proto,
//! which keeps the kernel program small and lets the two parsers check each other.

use std::{mem::size_of, net::IpAddr, time::Duration};

use hickory_proto::{
    op::{Header, Message, MessageType, Query, ResponseCode},
    serialize::binary::{BinDecodable, BinDecoder},
};
use pnet_packet::{
    Packet as _,
    ethernet::{EtherTypes, EthernetPacket},
    icmp::{IcmpPacket, IcmpTypes},
    icmpv6::{Icmpv6Packet, Icmpv6Types},
    ip::{IpNextHeaderProtocol, IpNextHeaderProtocols},
    ipv4::Ipv4Packet,
    ipv6::{ExtensionPacket, FragmentPacket, Ipv6Packet},
    tcp::{TcpFlags, TcpPacket},
    udp::UdpPacket,
    vlan::VlanPacket,
};
use probe_ebpf::{
    CAPTURE_BYTES, Direction, EVENT_HEADER_BYTES, EventHeader, EventKind, FlowCounters, FlowKey,
    HookKey, IPPROTO_TCP, IPPROTO_UDP, WIRE_VERSION,
};

use crate::model::{Flow, Protocol};

const DNS_PORT: u16 = 53;
/// ICMP destination-unreachable code "fragmentation needed and DF set".
const ICMP_FRAGMENTATION_NEEDED: u8 = 4;

/// Why a wire event could not be decoded. Each is counted, none is fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than the {EVENT_HEADER_BYTES}-byte header")]
    Truncated(usize),
    #[error("wire version {0}, this agent speaks version {WIRE_VERSION}")]
    Version(u32),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown direction {0}")]
    Direction(u32),
    #[error("captured length {0} is not what the record holds")]
    CapturedLength(u32),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// One interesting packet, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: EventKind,
    pub direction: Direction,
    pub ifindex: u32,
    /// CLOCK_MONOTONIC time the kernel saw it.
    pub monotonic: Duration,
    /// The tuple as on the wire (`src` sent it); for an ICMP error, the quoted packet's.
    pub tuple: Flow,
    /// Where the kernel counted it, and what that hook had counted just after.
    pub hook: HookKey,
    pub counted: HookCount,
    /// The pod end at this hook: the sender of what leaves a pod, the receiver of what
    /// enters it (for an ICMP error, of the error itself).
    pub pod: IpAddr,
    /// TCP header facts, for TCP packets (not for ICMP errors quoting TCP).
    pub tcp: Option<TcpFacts>,
    /// Set for DNS packets whose header could be read.
    pub dns: Option<DnsPacket>,
}

/// A hook's count of the packet's kind just after it, and since when the hook counts:
/// what tells the events lost before it (the whole counters stay in the kernel's map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookCount {
    pub of_kind: u64,
    pub since: Duration,
}

impl HookCount {
    /// `counters`' count of `kind`.
    pub fn of(counters: &FlowCounters, kind: EventKind) -> Self {
        Self {
            of_kind: match kind {
                EventKind::Syn => counters.syn,
                EventKind::SynAck => counters.syn_ack,
                EventKind::Rst => counters.rst,
                EventKind::IcmpUnreachable => counters.icmp_unreachable,
                EventKind::DnsQuery => counters.dns_queries,
                EventKind::DnsResponse => counters.dns_responses,
                EventKind::DnsTcpSegment => counters.dns_tcp_segments,
            },
            since: Duration::from_nanos(counters.first_seen_ns),
        }
    }
}

/// What the agent needs of a TCP header: which connection a SYN starts (its ISN), which
/// SYN a SYN-ACK answers, and the payload of DNS-over-TCP segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpFacts {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Payload bytes the IP header declares (captured or not).
    pub payload_len: u32,
    /// The captured part of the payload (only kept for DNS-over-TCP segments).
    pub payload: Vec<u8>,
}

/// What the agent needs of a DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPacket {
    pub id: u16,
    pub is_response: bool,
    /// The full rcode, EDNS extended bits included when the message was captured whole.
    pub rcode: ResponseCode,
    /// TC: the answer did not fit (RFC 1035 §4.1.1); the client retries over TCP.
    pub truncated: bool,
    /// The first question, when captured.
    pub qname: Option<String>,
    pub qtype: Option<String>,
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<Packet, DecodeError> {
    if record.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Truncated(record.len()));
    }
    // SAFETY: the length is checked above; EventHeader is plain integers (aya::Pod),
    // so every bit pattern is a valid value, and read_unaligned has no alignment needs.
    let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<EventHeader>()) };
    if event.version != WIRE_VERSION {
        return Err(DecodeError::Version(event.version));
    }
    let kind = EventKind::try_from(event.kind).map_err(|e| DecodeError::Kind(e.0))?;
    let direction =
        Direction::try_from(event.hook.direction).map_err(|e| DecodeError::Direction(e.0))?;
    // The record is the header and exactly the bytes captured.
    let data = usize::try_from(event.captured_len)
        .ok()
        .filter(|&n| n <= CAPTURE_BYTES && EVENT_HEADER_BYTES + n == record.len())
        .map(|n| &record[EVENT_HEADER_BYTES..EVENT_HEADER_BYTES + n])
        .ok_or(DecodeError::CapturedLength(event.captured_len))?;
    let tuple = flow_from_key(&event.hook.tuple)?;
    let mut parsed = parse_packet(data)?;
    check_agrees(kind, &tuple, &parsed)?;
    let (outer_src, outer_dst) = parsed.outer.ok_or(DecodeError::Malformed("no IP header"))?;
    let mut tcp = parsed.tcp.take();
    if kind != EventKind::DnsTcpSegment
        && let Some(tcp) = &mut tcp
    {
        tcp.payload = Vec::new();
    }
    Ok(Packet {
        kind,
        direction,
        ifindex: event.hook.ifindex,
        monotonic: Duration::from_nanos(event.timestamp_ns),
        tuple,
        hook: event.hook,
        counted: HookCount::of(&event.counters, kind),
        pod: match direction {
            Direction::FromPod => outer_src,
            Direction::ToPod => outer_dst,
        }
        .to_canonical(),
        tcp,
        dns: parsed.dns,
    })
}

/// A kernel flow key as an API flow. IPv4-mapped addresses become plain IPv4.
pub fn flow_from_key(key: &FlowKey) -> Result<Flow, DecodeError> {
    let protocol = match key.protocol {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => {
            return Err(DecodeError::Malformed(
                "flow protocol is neither TCP nor UDP",
            ));
        }
    };
    let addr = |bytes: [u8; 16]| IpAddr::from(bytes).to_canonical();
    Ok(Flow {
        protocol,
        src_ip: addr(key.src_addr),
        src_port: key.src_port,
        dst_ip: addr(key.dst_addr),
        dst_port: key.dst_port,
    })
}

/// What pnet makes of the captured bytes.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedPacket {
    /// The transport 5-tuple as carried: for ICMP errors, the quoted packet's.
    pub tuple: Option<Flow>,
    /// The packet's own IP addresses (for an ICMP error, the error's).
    pub outer: Option<(IpAddr, IpAddr)>,
    pub tcp_flags: Option<u8>,
    pub tcp: Option<TcpFacts>,
    pub icmp_unreachable: bool,
    pub dns: Option<DnsPacket>,
}

/// Parses Ethernet (with up to two VLAN tags) → IPv4/IPv6 → TCP/UDP/ICMP(v6), by the
/// kernel program's rules: what it steps over, this steps over too.
#[inline]
pub fn parse_packet(bytes: &[u8]) -> Result<ParsedPacket, DecodeError> {
    let ethernet =
        EthernetPacket::new(bytes).ok_or(DecodeError::Malformed("truncated Ethernet header"))?;
    let mut ether_type = ethernet.get_ethertype();
    let mut payload = ethernet.payload();
    // An 802.1ad (S-tag) or 802.1Q outer tag, then at most one 802.1Q inner tag.
    let mut tags = 0;
    while tags < 2
        && (ether_type == EtherTypes::Vlan || (tags == 0 && ether_type == EtherTypes::PBridge))
    {
        let vlan = VlanPacket::new(payload).ok_or(DecodeError::Malformed("truncated VLAN tag"))?;
        ether_type = vlan.get_ethertype();
        // VlanPacket's payload borrows from the tag; re-slice the outer buffer instead.
        payload = &payload[VlanPacket::minimum_packet_size()..];
        tags += 1;
    }
    let (src, dst, protocol, transport, declared) = match ether_type {
        EtherTypes::Ipv4 if payload.first().is_some_and(|b| b >> 4 == 4) => {
            ipv4_transport(payload)?
        }
        EtherTypes::Ipv6 if payload.first().is_some_and(|b| b >> 4 == 6) => {
            ipv6_transport(payload)?
        }
        EtherTypes::Ipv4 | EtherTypes::Ipv6 => {
            return Err(DecodeError::Malformed(
                "IP version does not match the ethertype",
            ));
        }
        _ => return Err(DecodeError::Malformed("not IPv4 or IPv6")),
    };
    let mut parsed = transport_facts(src, dst, protocol, transport, declared)?;
    parsed.outer = Some((src, dst));
    Ok(parsed)
}

/// Addresses, protocol, the transport bytes captured, and how many the IP header declares.
type Transport<'a> = (IpAddr, IpAddr, IpNextHeaderProtocol, &'a [u8], usize);

fn ipv4_transport(bytes: &[u8]) -> Result<Transport<'_>, DecodeError> {
    let ip = Ipv4Packet::new(bytes).ok_or(DecodeError::Malformed("truncated IPv4 header"))?;
    let header_len = usize::from(ip.get_header_length()) * 4;
    if header_len < Ipv4Packet::minimum_packet_size() || header_len > bytes.len() {
        return Err(DecodeError::Malformed("bad IPv4 header length"));
    }
    if ip.get_fragment_offset() != 0 {
        return Err(DecodeError::Malformed(
            "IPv4 fragment without transport header",
        ));
    }
    Ok((
        ip.get_source().into(),
        ip.get_destination().into(),
        ip.get_next_level_protocol(),
        &bytes[header_len..],
        usize::from(ip.get_total_length()).saturating_sub(header_len),
    ))
}

fn ipv6_transport(bytes: &[u8]) -> Result<Transport<'_>, DecodeError> {
    let ip = Ipv6Packet::new(bytes).ok_or(DecodeError::Malformed("truncated IPv6 header"))?;
    let mut next = ip.get_next_header();
    let mut rest = &bytes[Ipv6Packet::minimum_packet_size()..];
    let mut declared = usize::from(ip.get_payload_length());
    // Same walk as the kernel's: hop-by-hop, routing, destination options, fragment, AH.
    for _ in 0..6 {
        let len = match next {
            IpNextHeaderProtocols::Hopopt
            | IpNextHeaderProtocols::Ipv6Route
            | IpNextHeaderProtocols::Ipv6Opts => {
                let ext = ExtensionPacket::new(rest)
                    .ok_or(DecodeError::Malformed("truncated IPv6 extension header"))?;
                next = ext.get_next_header();
                (usize::from(ext.get_hdr_ext_len()) + 1) * 8
            }
            IpNextHeaderProtocols::Ipv6Frag => {
                let frag = FragmentPacket::new(rest)
                    .ok_or(DecodeError::Malformed("truncated IPv6 fragment header"))?;
                // The offset's 13 bits (RFC 8200 §4.5); pnet's `get_fragment_offset`
                // also takes in the reserved bit next to them.
                if frag.get_fragment_offset_with_flags() & 0xfff8 != 0 {
                    return Err(DecodeError::Malformed(
                        "IPv6 fragment without transport header",
                    ));
                }
                next = frag.get_next_header();
                8
            }
            IpNextHeaderProtocols::Ah => {
                let ext = ExtensionPacket::new(rest)
                    .ok_or(DecodeError::Malformed("truncated IPv6 AH header"))?;
                next = ext.get_next_header();
                (usize::from(ext.get_hdr_ext_len()) + 2) * 4
            }
            _ => break,
        };
        rest = rest.get(len..).ok_or(DecodeError::Malformed(
            "IPv6 extension header overruns packet",
        ))?;
        declared = declared.saturating_sub(len);
    }
    Ok((
        ip.get_source().into(),
        ip.get_destination().into(),
        next,
        rest,
        declared,
    ))
}

#[inline]
fn transport_facts(
    src: IpAddr,
    dst: IpAddr,
    protocol: IpNextHeaderProtocol,
    bytes: &[u8],
    declared: usize,
) -> Result<ParsedPacket, DecodeError> {
    let tuple = |protocol, src_port, dst_port| Flow {
        protocol,
        src_ip: src,
        src_port,
        dst_ip: dst,
        dst_port,
    };
    match protocol {
        IpNextHeaderProtocols::Tcp => {
            let tcp =
                TcpPacket::new(bytes).ok_or(DecodeError::Malformed("truncated TCP header"))?;
            let header_len = usize::from(tcp.get_data_offset()) * 4;
            if header_len < TcpPacket::minimum_packet_size() {
                return Err(DecodeError::Malformed("bad TCP data offset"));
            }
            let payload_len = declared.saturating_sub(header_len);
            let captured = bytes.get(header_len..).unwrap_or_default();
            Ok(ParsedPacket {
                tuple: Some(tuple(
                    Protocol::Tcp,
                    tcp.get_source(),
                    tcp.get_destination(),
                )),
                tcp_flags: Some(tcp.get_flags()),
                tcp: Some(TcpFacts {
                    seq: tcp.get_sequence(),
                    ack: tcp.get_acknowledgement(),
                    flags: tcp.get_flags(),
                    payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
                    payload: captured[..captured.len().min(payload_len)].to_vec(),
                }),
                ..ParsedPacket::default()
            })
        }
        IpNextHeaderProtocols::Udp => {
            let udp =
                UdpPacket::new(bytes).ok_or(DecodeError::Malformed("truncated UDP header"))?;
            Ok(ParsedPacket {
                tuple: Some(tuple(
                    Protocol::Udp,
                    udp.get_source(),
                    udp.get_destination(),
                )),
                dns: decode_dns(&bytes[UdpPacket::minimum_packet_size()..]),
                ..ParsedPacket::default()
            })
        }
        IpNextHeaderProtocols::Icmp => {
            let icmp =
                IcmpPacket::new(bytes).ok_or(DecodeError::Malformed("truncated ICMP header"))?;
            if icmp.get_icmp_type() != IcmpTypes::DestinationUnreachable {
                return Err(DecodeError::Malformed(
                    "ICMP message is not destination-unreachable",
                ));
            }
            // "Fragmentation needed" (RFC 1191) is path-MTU discovery, not a failure.
            if icmp.get_icmp_code().0 == ICMP_FRAGMENTATION_NEEDED {
                return Err(DecodeError::Malformed(
                    "ICMP fragmentation needed is not a failure",
                ));
            }
            quoted_packet(&bytes[8.min(bytes.len())..], false)
        }
        IpNextHeaderProtocols::Icmpv6 => {
            let icmp = Icmpv6Packet::new(bytes)
                .ok_or(DecodeError::Malformed("truncated ICMPv6 header"))?;
            if icmp.get_icmpv6_type() != Icmpv6Types::DestinationUnreachable {
                return Err(DecodeError::Malformed(
                    "ICMPv6 message is not destination-unreachable",
                ));
            }
            quoted_packet(&bytes[8.min(bytes.len())..], true)
        }
        _ => Err(DecodeError::Malformed(
            "transport is not TCP, UDP, ICMP or ICMPv6",
        )),
    }
}

/// The packet an ICMP error quotes: its IP header and at least 8 bytes of transport
/// header (RFC 792), enough for the ports. As in the kernel program, a quoted IPv6
/// header must be followed by the transport header itself (no extension headers).
fn quoted_packet(bytes: &[u8], v6: bool) -> Result<ParsedPacket, DecodeError> {
    let (src, dst, protocol, transport, _) = if v6 {
        let ip = Ipv6Packet::new(bytes).ok_or(DecodeError::Malformed("truncated IPv6 header"))?;
        (
            ip.get_source().into(),
            ip.get_destination().into(),
            ip.get_next_header(),
            &bytes[Ipv6Packet::minimum_packet_size()..],
            0,
        )
    } else {
        ipv4_transport(bytes)?
    };
    if transport.len() < 4 {
        return Err(DecodeError::Malformed("ICMP quote too short for ports"));
    }
    let protocol = match protocol {
        IpNextHeaderProtocols::Tcp => Protocol::Tcp,
        IpNextHeaderProtocols::Udp => Protocol::Udp,
        _ => return Err(DecodeError::Malformed("ICMP quotes neither TCP nor UDP")),
    };
    let dst_port = u16::from_be_bytes([transport[2], transport[3]]);
    // UDP flows are DNS flows; other UDP is not tracked.
    if protocol == Protocol::Udp && dst_port != DNS_PORT {
        return Err(DecodeError::Malformed("ICMP quotes UDP that is not DNS"));
    }
    Ok(ParsedPacket {
        tuple: Some(Flow {
            protocol,
            src_ip: src,
            src_port: u16::from_be_bytes([transport[0], transport[1]]),
            dst_ip: dst,
            dst_port,
        }),
        icmp_unreachable: true,
        ..ParsedPacket::default()
    })
}

/// Decodes a DNS message. The header alone is enough to match a response to its query
/// and read its rcode; the first question is read when captured (a long answer may not
/// be), and the rcode's EDNS extended bits (RFC 6891 §6.1.3) when the whole message is.
pub fn decode_dns(bytes: &[u8]) -> Option<DnsPacket> {
    let mut decoder = BinDecoder::new(bytes);
    let header = Header::read(&mut decoder).ok()?;
    let mut dns = DnsPacket {
        id: header.metadata.id,
        is_response: header.metadata.message_type == MessageType::Response,
        rcode: header.metadata.response_code,
        truncated: header.metadata.truncation,
        qname: None,
        qtype: None,
    };
    if header.counts.queries > 0
        && let Ok(query) = Query::read(&mut decoder)
    {
        dns.qname = Some(query.name().to_string());
        dns.qtype = Some(query.query_type().to_string());
    }
    // The extended bits live in an OPT record, among the additional ones: without any,
    // the header's rcode is the whole of it and the message need not be parsed whole.
    if header.counts.additionals > 0
        && let Ok(message) = Message::from_vec(bytes)
    {
        dns.rcode = message.metadata.response_code;
    }
    Some(dns)
}

/// What the kernel program sends for a packet pnet parsed this way, by the kernel's own
/// rules (docs/design.md, "Data flows one way"): SYN, SYN-ACK, RST, ICMP(v6)
/// destination-unreachable, DNS to or from port 53 with at least a header, and TCP
/// segments with payload to or from port 53.
/// `None`: the packet cannot change a verdict.
pub fn event_kind(parsed: &ParsedPacket) -> Option<EventKind> {
    if parsed.icmp_unreachable {
        return Some(EventKind::IcmpUnreachable);
    }
    let tuple = parsed.tuple?;
    let dns_port = tuple.src_port == DNS_PORT || tuple.dst_port == DNS_PORT;
    if let Some(flags) = parsed.tcp_flags {
        let payload = parsed.tcp.as_ref().map_or(0, |tcp| tcp.payload_len);
        return if flags & TcpFlags::RST != 0 {
            Some(EventKind::Rst)
        } else if flags & TcpFlags::SYN != 0 {
            Some(if flags & TcpFlags::ACK != 0 {
                EventKind::SynAck
            } else {
                EventKind::Syn
            })
        } else if dns_port && payload > 0 {
            Some(EventKind::DnsTcpSegment)
        } else {
            None
        };
    }
    if tuple.protocol != Protocol::Udp || !dns_port {
        return None;
    }
    parsed.dns.as_ref().map(|dns| {
        if dns.is_response {
            EventKind::DnsResponse
        } else {
            EventKind::DnsQuery
        }
    })
}

/// The kernel's tuple and event kind must agree with what pnet reads in the bytes: the
/// tuple as on the wire (for an ICMP error, the quoted packet's).
#[inline]
fn check_agrees(kind: EventKind, tuple: &Flow, parsed: &ParsedPacket) -> Result<(), DecodeError> {
    let mut read = parsed
        .tuple
        .ok_or(DecodeError::Malformed("no transport tuple"))?;
    // The key stores IPv4 as IPv4-mapped IPv6 and reads back canonical: an IPv6 packet
    // carrying IPv4-mapped addresses reads back as IPv4 too.
    read.src_ip = read.src_ip.to_canonical();
    read.dst_ip = read.dst_ip.to_canonical();
    if event_kind(parsed) != Some(kind) {
        return Err(DecodeError::Malformed(
            "event kind does not match the packet",
        ));
    }
    if *tuple != read {
        return Err(DecodeError::Malformed(
            "kernel tuple does not match the packet's",
        ));
    }
    Ok(())
}

/// Upper-case rcode name as DNS tools print it (NOERROR, NXDOMAIN, ...).
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        // 16 is BADVERS in a message's rcode, BADSIG only in a TSIG record (RFC 6891).
        ResponseCode::BADVERS | ResponseCode::BADSIG => "BADVERS".into(),
        ResponseCode::BADCOOKIE => "BADCOOKIE".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests;
