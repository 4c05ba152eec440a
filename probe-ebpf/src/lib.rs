//! The wire contract between netprobe's kernel program and its agent.
//!
//! Everything here is `#[repr(C)]` with fixed-width fields and explicit padding, so the
//! kernel and userspace agree on every byte. Enums travel as `u32` and are decoded with
//! `TryFrom`, never transmuted. Bump [`WIRE_VERSION`] whenever a layout changes.
#![no_std]

/// Format version carried in every [`PacketEvent`]; the agent rejects other versions.
/// A new [`EventKind`] is not a layout change: an agent that does not know its id counts
/// it as an unknown kind and goes on.
///
/// Version 3: records are variable-length, [`EVENT_HEADER_BYTES`] + `captured_len`.
pub const WIRE_VERSION: u32 = 3;

/// BPF ring buffer of [`PacketEvent`]s.
pub const EVENTS_MAP: &str = "NETPROBE_EVENTS";
/// LRU hash map [`HookKey`] → [`FlowCounters`]: what each hook saw of each tuple, exact
/// even when events are lost.
pub const FLOW_COUNTS_MAP: &str = "NETPROBE_FLOW_COUNTS";
/// Per-CPU array of [`LossCounter`] slots: events the kernel could not hand over, and
/// those it did.
pub const LOSSES_MAP: &str = "NETPROBE_LOSSES";

/// Program attached at the ingress hook of a host-side veth (packets leaving the pod).
pub const INGRESS_PROGRAM: &str = "netprobe_ingress";
/// Program attached at the egress hook of a host-side veth (packets entering the pod).
pub const EGRESS_PROGRAM: &str = "netprobe_egress";
/// A classifier that does nothing: the baseline `cargo xtask bench` compares against.
pub const EMPTY_PROGRAM: &str = "netprobe_empty";
/// A classifier that reads one byte of the packet and nothing else: the floor of any
/// classifier that looks at packets, which `cargo xtask bench` prints beside the probe.
pub const TOUCH_PROGRAM: &str = "netprobe_touch";

/// Bytes of each interesting packet copied into its event, from the Ethernet header on,
/// at most. Enough for Ethernet + two VLAN tags + IPv6 + UDP + a DNS header and a
/// 255-byte name, or an ICMPv6 error with the embedded IPv6 and transport headers.
///
/// A record carries only what its kind needs (see [`PacketEvent`]): a SYN, SYN-ACK or RST
/// its headers up to the end of the TCP header; DNS (UDP or TCP) and ICMP errors the IP
/// packet, up to this bound.
pub const CAPTURE_BYTES: usize = 448;

/// Bytes of a record before the captured packet bytes: every field of [`PacketEvent`]
/// but `data`.
pub const EVENT_HEADER_BYTES: usize = core::mem::offset_of!(PacketEvent, data);

/// Default sizes; the agent may override them at load time.
pub const EVENTS_RING_BYTES: u32 = 4 << 20;
pub const FLOW_COUNTS_ENTRIES: u32 = 65_536;

/// What made a packet interesting. Ids are fixed and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Syn = 1,
    SynAck = 2,
    Rst = 3,
    IcmpUnreachable = 4,
    DnsQuery = 5,
    DnsResponse = 6,
    // 7 was `SynDelivered` (wire version 1): the agent now tells deliveries apart itself.
    /// A TCP segment with payload to or from port 53: DNS over TCP (RFC 7766), framed by
    /// the agent from the segments' sequence numbers.
    DnsTcpSegment = 8,
}

/// An unknown event kind id came over the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownEventKind(pub u32);

impl TryFrom<u32> for EventKind {
    type Error = UnknownEventKind;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => Self::Syn,
            2 => Self::SynAck,
            3 => Self::Rst,
            4 => Self::IcmpUnreachable,
            5 => Self::DnsQuery,
            6 => Self::DnsResponse,
            8 => Self::DnsTcpSegment,
            other => return Err(UnknownEventKind(other)),
        })
    }
}

/// Which hook of the host-side veth saw the packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Ingress of the host-side veth: the packet leaves the pod.
    FromPod = 0,
    /// Egress of the host-side veth: the packet enters the pod.
    ToPod = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownDirection(pub u32);

impl TryFrom<u32> for Direction {
    type Error = UnknownDirection;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Self::FromPod),
            1 => Ok(Self::ToPod),
            other => Err(UnknownDirection(other)),
        }
    }
}

/// IP protocol numbers used in [`FlowKey::protocol`].
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A 5-tuple. In the kernel's map and events it is as on the wire (`src` sent the packet;
/// for an ICMP error, the tuple of the packet it quotes); the agent orients it client →
/// server. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Ports in host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

// Compared and hashed as a few integers rather than byte by byte: the agent looks a
// flow up several times per packet.
impl PartialEq for FlowKey {
    fn eq(&self, other: &Self) -> bool {
        u128::from_ne_bytes(self.src_addr) == u128::from_ne_bytes(other.src_addr)
            && u128::from_ne_bytes(self.dst_addr) == u128::from_ne_bytes(other.dst_addr)
            && self.ports_and_protocol() == other.ports_and_protocol()
    }
}

impl Eq for FlowKey {}

impl core::hash::Hash for FlowKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.src_addr));
        state.write_u128(u128::from_ne_bytes(self.dst_addr));
        state.write_u64(self.ports_and_protocol());
    }
}

impl FlowKey {
    fn ports_and_protocol(&self) -> u64 {
        (u64::from(self.src_port) << 24)
            | (u64::from(self.dst_port) << 8)
            | u64::from(self.protocol)
    }

    /// The same connection seen from the other end.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// Where the kernel counts: one hook of one interface, one tuple as that hook saw it. The
/// kernel knows neither NAT nor which end is the client, so it counts raw and the agent
/// orients and pairs (a same-node flow is seen at both pods' veths).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HookKey {
    pub tuple: FlowKey,
    /// `skb->ifindex` of the hook.
    pub ifindex: u32,
    /// [`Direction`] id.
    pub direction: u32,
}

/// Per-hook packet counts kept by the kernel. Updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCounters {
    pub syn: u64,
    pub syn_ack: u64,
    pub rst: u64,
    pub icmp_unreachable: u64,
    pub dns_queries: u64,
    pub dns_responses: u64,
    pub dns_nxdomain: u64,
    pub dns_servfail: u64,
    pub dns_refused: u64,
    pub dns_other_error: u64,
    pub dns_tcp_segments: u64,
    pub _reserved: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first and latest counted packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// Slots of [`LOSSES_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// `bpf_ringbuf_reserve` failed: the ring buffer was full.
    RingFull = 0,
    /// The flow counter map could not take a new entry.
    CountsUpdate = 1,
    /// Events handed over (submitted to the ring buffer): with `RingFull`, every event
    /// the program emitted, so userspace can prove that emitted = processed + lost.
    Submitted = 2,
}
pub const LOSS_COUNTERS: u32 = 3;

/// One interesting packet, as handed to userspace.
///
/// A ring-buffer record is the first [`EVENT_HEADER_BYTES`] + `captured_len` bytes of
/// this struct, not all of it: `data` is cut after the bytes captured.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketEvent {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// [`EventKind`] id.
    pub kind: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the packet was seen.
    pub timestamp_ns: u64,
    /// Where the packet was counted: hook and tuple as on the wire.
    pub hook: HookKey,
    /// Full length of the packet (`skb->len`).
    pub packet_len: u32,
    /// Bytes of `data` that hold packet bytes (≤ [`CAPTURE_BYTES`]).
    pub captured_len: u32,
    /// The hook's counters just after this packet was counted: a gap from the last event
    /// the agent read is exactly what it lost, with no timing guess.
    pub counters: FlowCounters,
    /// Leading bytes of the packet, from the Ethernet header.
    pub data: [u8; CAPTURE_BYTES],
}

/// The fixed part of a record: [`PacketEvent`] without `data`, field for field (what the
/// agent reads before it knows how many packet bytes follow).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub version: u32,
    pub kind: u32,
    pub timestamp_ns: u64,
    pub hook: HookKey,
    pub packet_len: u32,
    pub captured_len: u32,
    pub counters: FlowCounters,
}

// The header is PacketEvent's prefix, byte for byte.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<EventHeader>() == EVENT_HEADER_BYTES);
    assert!(offset_of!(EventHeader, kind) == offset_of!(PacketEvent, kind));
    assert!(offset_of!(EventHeader, timestamp_ns) == offset_of!(PacketEvent, timestamp_ns));
    assert!(offset_of!(EventHeader, hook) == offset_of!(PacketEvent, hook));
    assert!(offset_of!(EventHeader, packet_len) == offset_of!(PacketEvent, packet_len));
    assert!(offset_of!(EventHeader, captured_len) == offset_of!(PacketEvent, captured_len));
    assert!(offset_of!(EventHeader, counters) == offset_of!(PacketEvent, counters));
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: repr(C), integer fields only, no implicit padding
    // (checked by the layout tests below).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::HookKey {}
    unsafe impl aya::Pod for super::FlowCounters {}
    unsafe impl aya::Pod for super::PacketEvent {}
    unsafe impl aya::Pod for super::EventHeader {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<HookKey>(), size_of::<FlowKey>() + 4 + 4);
        assert_eq!(size_of::<FlowCounters>(), 14 * 8);
        assert_eq!(
            size_of::<PacketEvent>(),
            4 + 4 + 8 + size_of::<HookKey>() + 4 + 4 + size_of::<FlowCounters>() + CAPTURE_BYTES
        );
        assert_eq!(
            size_of::<PacketEvent>() % 8,
            0,
            "ring buffer records are 8-aligned"
        );
        assert_eq!(EVENT_HEADER_BYTES, size_of::<PacketEvent>() - CAPTURE_BYTES);
        assert_eq!(
            EVENT_HEADER_BYTES % 8,
            0,
            "the packet bytes start 8-aligned"
        );
    }

    #[test]
    fn event_kinds_round_trip_and_unknown_ids_are_errors() {
        for kind in [
            EventKind::Syn,
            EventKind::SynAck,
            EventKind::Rst,
            EventKind::IcmpUnreachable,
            EventKind::DnsQuery,
            EventKind::DnsResponse,
            EventKind::DnsTcpSegment,
        ] {
            assert_eq!(EventKind::try_from(kind as u32), Ok(kind));
        }
        assert_eq!(EventKind::try_from(0), Err(UnknownEventKind(0)));
        assert_eq!(EventKind::try_from(7), Err(UnknownEventKind(7)));
        assert_eq!(EventKind::try_from(9), Err(UnknownEventKind(9)));
        assert_eq!(Direction::try_from(2), Err(UnknownDirection(2)));
    }

    #[test]
    fn reversed_swaps_ends() {
        let key = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 40000,
            dst_port: 53,
            protocol: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let back = key.reversed();
        assert_eq!(back.src_addr, [2; 16]);
        assert_eq!(back.dst_port, 40000);
        assert_eq!(back.reversed(), key);
    }
}
