//! The classifier itself. Entry points are thin; `classify` does the work and any
//! parse failure simply means "not interesting": the packet is always passed on.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd, likely},
    mem::size_of,
};

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::{debug, warn};
use probe_ebpf::{
    CAPTURE_BYTES, Direction, EVENT_HEADER_BYTES, EVENTS_RING_BYTES, EventKind,
    FLOW_COUNTS_ENTRIES, FlowCounters, FlowKey, HookKey, IPPROTO_TCP, IPPROTO_UDP, LOSS_COUNTERS,
    LossCounter, PacketEvent, WIRE_VERSION,
};

#[map]
static NETPROBE_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static NETPROBE_FLOW_COUNTS: LruHashMap<HookKey, FlowCounters> =
    LruHashMap::with_max_entries(FLOW_COUNTS_ENTRIES, 0);

#[map]
static NETPROBE_LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

/// Where an event is put together before its header and the bytes it needs are copied to
/// the ring (one per CPU: a classifier runs to its end on the CPU it started on). The ring
/// takes only fixed sizes by reservation; copying out lets each record be as long as its
/// packet needs.
#[map]
static NETPROBE_SCRATCH: PerCpuArray<PacketEvent> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

const DNS_PORT: u16 = 53;

/// Bytes up to and including the TCP flags of an untagged frame: IPv4 without options,
/// IPv6 without extension headers.
const IPV4_TCP_FLAGS_END: usize = ETH_HLEN + 20 + 14;
const IPV6_TCP_FLAGS_END: usize = ETH_HLEN + 40 + 14;
const DNS_HEADER_LEN: usize = 12;

/// ICMP "fragmentation needed" (RFC 1191) is path-MTU discovery, not a failure.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACH: u8 = 1;

/// IPv6 extension headers walked before giving up (RFC 8200 §4.1 recommends an order
/// where a packet rarely has more than a few).
const MAX_IPV6_EXTENSIONS: usize = 6;

/// Bytes made linear by `bpf_skb_pull_data` when headers straddle the linear part.
const PULL_BYTES: u32 = 256;

/// BPF_NOEXIST: create the counter entry only if another CPU has not just done so.
const BPF_NOEXIST: u64 = 1;

#[classifier]
pub fn netprobe_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::FromPod);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn netprobe_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::ToPod);
    TC_ACT_UNSPEC
}

/// The baseline for `cargo xtask bench`: a classifier that does nothing.
#[classifier]
pub fn netprobe_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// A second baseline for `cargo xtask bench`: reads the packet's EtherType, no more.
#[classifier]
pub fn netprobe_touch(ctx: TcContext) -> i32 {
    let start = ctx.data();
    if start + ETH_HLEN <= ctx.data_end() {
        // Volatile: the load stays although nothing uses its value.
        unsafe { core::ptr::read_volatile((start + 12) as *const u16) };
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    if is_plain_tcp(ctx) {
        return;
    }
    observe_in_full(ctx.skb.skb, direction);
}

/// Everything but the fast path, as a subprogram of its own: its stack frame and the
/// registers it saves are set up only for the packets that need them, not for every
/// plain data segment.
#[inline(never)]
fn observe_in_full(skb: *mut aya_ebpf::bindings::__sk_buff, direction: Direction) {
    let ctx = &TcContext::new(skb);
    // At most twice: when headers straddle the linear part (rare on veth), make them
    // linear once and parse again. A loop rather than two calls keeps one inlined copy.
    for _ in 0..2 {
        match classify(ctx, direction) {
            Err(ParseError::NotLinear) => {
                if ctx.pull_data(PULL_BYTES.min(ctx.len())).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// The common packet, told apart with the fewest loads and no helper call: an established
/// flow's data or ACK (neither SYN nor RST, not to or from port 53) over IPv4 without
/// options or IPv6 without extension headers, untagged and in the linear part. Whatever
/// this passes, `classify` would find uninteresting too; anything else (false) is parsed
/// in full.
#[inline(always)]
fn is_plain_tcp(ctx: &TcContext) -> bool {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + IPV4_TCP_FLAGS_END > end {
        return false;
    }
    // Fields are loaded as they lie (big-endian) and compared with byte-swapped constants.
    // Each load is aligned for a frame whose IP header is (the kernel's NET_IP_ALIGN).
    let ether_type = unsafe { *((start + 12) as *const u16) };
    if likely(ether_type == ETH_P_IP.to_be()) {
        // Version 4 with a 20-byte header (0x45), then the protocol at byte 9.
        let (version_ihl, protocol) =
            unsafe { (*((start + 14) as *const u8), *((start + 23) as *const u8)) };
        version_ihl == 0x45 && protocol == IPPROTO_TCP && tcp_is_plain(start + ETH_HLEN + 20)
    } else if ether_type == ETH_P_IPV6.to_be() {
        // Next header at byte 6 is TCP: no extension headers.
        start + IPV6_TCP_FLAGS_END <= end
            && unsafe { *((start + 20) as *const u8) } == IPPROTO_TCP
            && tcp_is_plain(start + ETH_HLEN + 40)
    } else {
        false
    }
}

/// Neither SYN nor RST, and neither port 53, in the TCP header at `tcp`, whose first 14
/// bytes the caller has bounds-checked.
#[inline(always)]
fn tcp_is_plain(tcp: usize) -> bool {
    let (src_port, dst_port, flags) = unsafe {
        (
            *(tcp as *const u16),
            *((tcp + 2) as *const u16),
            *((tcp + 13) as *const u8),
        )
    };
    flags & (TCP_FLAG_SYN | TCP_FLAG_RST) == 0
        && src_port != DNS_PORT.to_be()
        && dst_port != DNS_PORT.to_be()
}

enum ParseError {
    /// The bytes are in the packet but not in its linear part.
    NotLinear,
    /// Truncated, not IP, or not a packet we care about.
    Uninteresting,
}

/// Returns a pointer to a `T` at `offset` in the packet, bounds-checked for the verifier.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(if offset + size_of::<T>() <= ctx.len() as usize {
            ParseError::NotLinear
        } else {
            ParseError::Uninteresting
        });
    }
    Ok((start + offset) as *const T)
}

/// The `N` header bytes at `offset`, after one bounds check. Fields are then read
/// through this one checked pointer, so LLVM cannot fold several checks into one that
/// the verifier cannot follow, and only the bytes needed are loaded.
#[inline(always)]
fn header<const N: usize>(ctx: &TcContext, offset: usize) -> Result<&[u8; N], ParseError> {
    Ok(unsafe { &*ptr_at::<[u8; N]>(ctx, offset)? })
}

/// Reads `N` bytes at `offset` with `bpf_skb_load_bytes`: for the few packets that
/// matter, past the fast path. Works wherever the bytes are, linear part or not.
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u8; N], ParseError> {
    ctx.load::<[u8; N]>(offset)
        .map_err(|_| ParseError::Uninteresting)
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Where a packet's addresses are, as offsets: read only once the packet matters, to
/// keep the BPF stack small.
#[derive(Clone, Copy)]
struct Addrs {
    src: usize,
    dst: usize,
    v6: bool,
}

/// Writes the address at `offset` as 16 bytes; IPv4 as IPv4-mapped IPv6
/// (RFC 4291 §2.5.5.2) so one key type serves both families.
#[inline(always)]
fn read_addr(
    ctx: &TcContext,
    offset: usize,
    v6: bool,
    out: &mut [u8; 16],
) -> Result<(), ParseError> {
    if v6 {
        *out = load::<16>(ctx, offset)?;
    } else {
        let v4 = load::<4>(ctx, offset)?;
        *out = [0; 16];
        out[10] = 0xff;
        out[11] = 0xff;
        out[12..16].copy_from_slice(&v4);
    }
    Ok(())
}

/// Network-layer facts of a packet.
#[derive(Clone, Copy)]
struct L3 {
    addrs: Addrs,
    protocol: u8,
    /// Offset of the transport header.
    l4: usize,
    /// Offset just past the IP packet, from its length field (Ethernet padding excluded).
    end: usize,
}

/// What the packet means for a flow.
struct Interesting {
    kind: EventKind,
    /// The flow's addresses: the packet's own, or those of the packet an ICMP error quotes.
    addrs: Addrs,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    dns_rcode: u8,
    /// Offset just past the bytes the agent needs: for a SYN, SYN-ACK or RST the end of
    /// its TCP header; for DNS and ICMP errors the whole packet (the message, or the
    /// quoted packet), [`CAPTURE_BYTES`] at most either way.
    needed: usize,
}

#[inline(always)]
fn classify(ctx: &TcContext, direction: Direction) -> Result<(), ParseError> {
    let l3 = parse_l3(ctx)?;
    let interesting = match l3.protocol {
        IPPROTO_TCP => parse_tcp(ctx, &l3)?,
        IPPROTO_UDP => parse_dns(ctx, &l3)?,
        IPPROTO_ICMP => parse_icmp_unreachable(ctx, &l3, false)?,
        IPPROTO_ICMPV6 => parse_icmp_unreachable(ctx, &l3, true)?,
        _ => return Err(ParseError::Uninteresting),
    };
    record(ctx, direction, &interesting)
}

#[inline(always)]
fn parse_l3(ctx: &TcContext) -> Result<L3, ParseError> {
    let ethernet = header::<ETH_HLEN>(ctx, 0)?;
    let mut offset = ETH_HLEN;
    let mut ether_type = be16([ethernet[12], ethernet[13]]);
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag = header::<4>(ctx, offset)?;
        ether_type = be16([tag[2], tag[3]]);
        offset += 4;
        if ether_type == ETH_P_8021Q {
            let tag = header::<4>(ctx, offset)?;
            ether_type = be16([tag[2], tag[3]]);
            offset += 4;
        }
    }
    match ether_type {
        ETH_P_IP => {
            let ip = header::<20>(ctx, offset)?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || header_len < 20 {
                return Err(ParseError::Uninteresting);
            }
            // Only the first fragment carries the transport header (RFC 791).
            if be16([ip[6], ip[7]]) & 0x1fff != 0 {
                return Err(ParseError::Uninteresting);
            }
            Ok(L3 {
                addrs: Addrs {
                    src: offset + 12,
                    dst: offset + 16,
                    v6: false,
                },
                protocol: ip[9],
                l4: offset + header_len,
                end: offset + usize::from(be16([ip[2], ip[3]])),
            })
        }
        ETH_P_IPV6 => {
            let ip = header::<8>(ctx, offset)?;
            let end = offset + 40 + usize::from(be16([ip[4], ip[5]]));
            if ip[0] >> 4 != 6 {
                return Err(ParseError::Uninteresting);
            }
            let mut next = ip[6];
            let mut l4 = offset + 40;
            for _ in 0..MAX_IPV6_EXTENSIONS {
                match next {
                    // Hop-by-hop, routing, destination options: length in 8-octet units
                    // not counting the first 8 (RFC 8200 §4.3-4.6).
                    0 | 43 | 60 => {
                        let ext = header::<2>(ctx, l4)?;
                        next = ext[0];
                        l4 += (usize::from(ext[1]) + 1) * 8;
                    }
                    // Fragment header: only the first fragment has the transport header.
                    44 => {
                        let ext = header::<4>(ctx, l4)?;
                        if be16([ext[2], ext[3]]) & 0xfff8 != 0 {
                            return Err(ParseError::Uninteresting);
                        }
                        next = ext[0];
                        l4 += 8;
                    }
                    // Authentication header: length in 4-octet units minus 2 (RFC 4302 §2.2).
                    51 => {
                        let ext = header::<2>(ctx, l4)?;
                        next = ext[0];
                        l4 += (usize::from(ext[1]) + 2) * 4;
                    }
                    _ => break,
                }
            }
            Ok(L3 {
                addrs: Addrs {
                    src: offset + 8,
                    dst: offset + 24,
                    v6: true,
                },
                protocol: next,
                l4,
                end,
            })
        }
        _ => Err(ParseError::Uninteresting),
    }
}

#[inline(always)]
fn parse_tcp(ctx: &TcContext, l3: &L3) -> Result<Interesting, ParseError> {
    let tcp = header::<14>(ctx, l3.l4)?;
    let flags = tcp[13];
    // The fast path: data and ACKs of anything but DNS end here, before any other check.
    // (Port 53 compared as raw bytes: no byte swap for the common packet.)
    if flags & (TCP_FLAG_SYN | TCP_FLAG_RST) == 0
        && [tcp[0], tcp[1]] != DNS_PORT.to_be_bytes()
        && [tcp[2], tcp[3]] != DNS_PORT.to_be_bytes()
    {
        return Err(ParseError::Uninteresting);
    }
    // A data offset under 5 words is no TCP header (RFC 9293 §3.1).
    if tcp[12] >> 4 < 5 {
        return Err(ParseError::Uninteresting);
    }
    let (src_port, dst_port) = (be16([tcp[0], tcp[1]]), be16([tcp[2], tcp[3]]));
    let header_end = l3.l4 + usize::from(tcp[12] >> 4) * 4;
    let kind = if flags & TCP_FLAG_RST != 0 {
        EventKind::Rst
    } else if flags & TCP_FLAG_SYN != 0 {
        if flags & TCP_FLAG_ACK != 0 {
            EventKind::SynAck
        } else {
            EventKind::Syn
        }
    } else if (src_port == DNS_PORT || dst_port == DNS_PORT) && l3.end > header_end {
        // DNS over TCP: a segment with payload (the data offset is in 32-bit words).
        EventKind::DnsTcpSegment
    } else {
        // DNS over TCP without payload: a bare ACK.
        return Err(ParseError::Uninteresting);
    };
    Ok(Interesting {
        kind,
        addrs: l3.addrs,
        src_port,
        dst_port,
        protocol: IPPROTO_TCP,
        dns_rcode: 0,
        // A DNS segment's payload is the message; of the others only the headers matter.
        needed: if kind == EventKind::DnsTcpSegment {
            CAPTURE_BYTES
        } else {
            header_end
        },
    })
}

#[inline(always)]
fn parse_dns(ctx: &TcContext, l3: &L3) -> Result<Interesting, ParseError> {
    let udp = header::<4>(ctx, l3.l4)?;
    let src_port = be16([udp[0], udp[1]]);
    let dst_port = be16([udp[2], udp[3]]);
    if src_port != DNS_PORT && dst_port != DNS_PORT {
        return Err(ParseError::Uninteresting);
    }
    // RFC 1035 §4.1.1: byte 2 holds QR, byte 3 the RCODE. A payload too short for a
    // DNS header is not DNS.
    let dns = load::<DNS_HEADER_LEN>(ctx, l3.l4 + 8)?;
    let is_response = dns[2] & 0x80 != 0;
    let rcode = dns[3] & 0x0f;
    Ok(Interesting {
        kind: if is_response {
            EventKind::DnsResponse
        } else {
            EventKind::DnsQuery
        },
        addrs: l3.addrs,
        src_port,
        dst_port,
        protocol: IPPROTO_UDP,
        dns_rcode: if is_response { rcode } else { 0 },
        needed: CAPTURE_BYTES,
    })
}

/// ICMP/ICMPv6 destination unreachable: the flow is the quoted original packet, which
/// the client sent (RFC 792 / RFC 4443 §3.1).
#[inline(always)]
fn parse_icmp_unreachable(ctx: &TcContext, l3: &L3, v6: bool) -> Result<Interesting, ParseError> {
    let icmp = header::<2>(ctx, l3.l4)?;
    let (icmp_type, code) = (icmp[0], icmp[1]);
    let inner = l3.l4 + 8;
    let quoted = if v6 {
        if icmp_type != ICMPV6_DEST_UNREACH {
            return Err(ParseError::Uninteresting);
        }
        let ip = load::<8>(ctx, inner)?;
        L3 {
            addrs: Addrs {
                src: inner + 8,
                dst: inner + 24,
                v6: true,
            },
            protocol: ip[6],
            l4: inner + 40,
            end: l3.end,
        }
    } else {
        if icmp_type != ICMP_DEST_UNREACH || code == ICMP_FRAG_NEEDED {
            return Err(ParseError::Uninteresting);
        }
        let ip = load::<20>(ctx, inner)?;
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        // A quoted later fragment has no transport header: its "ports" would be payload.
        if header_len < 20 || be16([ip[6], ip[7]]) & 0x1fff != 0 {
            return Err(ParseError::Uninteresting);
        }
        L3 {
            addrs: Addrs {
                src: inner + 12,
                dst: inner + 16,
                v6: false,
            },
            protocol: ip[9],
            l4: inner + header_len,
            end: l3.end,
        }
    };
    if quoted.protocol != IPPROTO_TCP && quoted.protocol != IPPROTO_UDP {
        return Err(ParseError::Uninteresting);
    }
    let ports = load::<4>(ctx, quoted.l4)?;
    let src_port = be16([ports[0], ports[1]]);
    let dst_port = be16([ports[2], ports[3]]);
    // UDP flows are DNS flows; other UDP is not tracked.
    if quoted.protocol == IPPROTO_UDP && dst_port != DNS_PORT {
        return Err(ParseError::Uninteresting);
    }
    Ok(Interesting {
        kind: EventKind::IcmpUnreachable,
        addrs: quoted.addrs,
        src_port,
        dst_port,
        protocol: quoted.protocol,
        dns_rcode: 0,
        needed: CAPTURE_BYTES,
    })
}

/// Counts the packet at its hook, on its tuple as on the wire, and hands it to userspace
/// with the hook's counters.
#[inline(always)]
fn record(ctx: &TcContext, direction: Direction, packet: &Interesting) -> Result<(), ParseError> {
    let mut key = HookKey {
        tuple: FlowKey {
            src_port: packet.src_port,
            dst_port: packet.dst_port,
            protocol: packet.protocol,
            ..FlowKey::default()
        },
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        direction: direction as u32,
    };
    read_addr(
        ctx,
        packet.addrs.src,
        packet.addrs.v6,
        &mut key.tuple.src_addr,
    )?;
    read_addr(
        ctx,
        packet.addrs.dst,
        packet.addrs.v6,
        &mut key.tuple.dst_addr,
    )?;
    let now = unsafe { bpf_ktime_get_ns() };
    let counters = count(&key, packet.kind, packet.dns_rcode, now);
    // One call site: `emit` is inlined, a second copy would double its instructions.
    emit(ctx, &key, packet.kind, now, counters, packet.needed);
    Ok(())
}

#[inline(always)]
fn count(key: &HookKey, kind: EventKind, rcode: u8, now: u64) -> Option<*mut FlowCounters> {
    let counters = match NETPROBE_FLOW_COUNTS.get_ptr_mut(key) {
        Some(counters) => counters,
        None => {
            let fresh = FlowCounters {
                first_seen_ns: now,
                ..FlowCounters::default()
            };
            // Losing the race to another CPU is fine: its entry is used below.
            let _ = NETPROBE_FLOW_COUNTS.insert(key, &fresh, BPF_NOEXIST);
            match NETPROBE_FLOW_COUNTS.get_ptr_mut(key) {
                Some(counters) => counters,
                None => {
                    add_to(LossCounter::CountsUpdate);
                    return None;
                }
            }
        }
    };
    let pointer = counters;
    let counters = unsafe { &mut *counters };
    let field = match kind {
        EventKind::Syn => &mut counters.syn,
        EventKind::SynAck => &mut counters.syn_ack,
        EventKind::Rst => &mut counters.rst,
        EventKind::IcmpUnreachable => &mut counters.icmp_unreachable,
        EventKind::DnsQuery => &mut counters.dns_queries,
        EventKind::DnsResponse => &mut counters.dns_responses,
        EventKind::DnsTcpSegment => &mut counters.dns_tcp_segments,
    };
    atomic_add(field);
    if kind == EventKind::DnsResponse {
        // RFC 1035 §4.1.1 and RFC 6895 §2.3 rcodes.
        match rcode {
            0 => {}
            2 => atomic_add(&mut counters.dns_servfail),
            3 => atomic_add(&mut counters.dns_nxdomain),
            5 => atomic_add(&mut counters.dns_refused),
            _ => atomic_add(&mut counters.dns_other_error),
        }
    }
    counters.last_seen_ns = now;
    Some(pointer)
}

#[inline(always)]
fn atomic_add(counter: &mut u64) {
    // The map value is shared by all CPUs: a BPF atomic add (the BPF target has no
    // compare-and-swap, so `AtomicU64::fetch_add` is unavailable there).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

#[inline(always)]
fn add_to(counter: LossCounter) {
    if let Some(slot) = NETPROBE_LOSSES.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// Copies the packet's leading bytes, up to `needed` of them. Returns how many.
#[inline(always)]
fn capture(ctx: &TcContext, data: &mut [u8; CAPTURE_BYTES], needed: usize) -> u32 {
    let len = ctx.len();
    let wanted = if needed < len as usize {
        needed as u32
    } else {
        len
    };
    let n = if wanted < CAPTURE_BYTES as u32 {
        wanted
    } else {
        CAPTURE_BYTES as u32
    };
    // The helper takes no zero-length reads, and the verifier must see n ≥ 1 here.
    if n == 0 {
        return 0;
    }
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, data.as_mut_ptr().cast(), n) };
    if ret == 0 { n } else { 0 }
}

#[inline(always)]
fn emit(
    ctx: &TcContext,
    key: &HookKey,
    kind: EventKind,
    now: u64,
    counters: Option<*mut FlowCounters>,
    needed: usize,
) {
    let Some(event) = NETPROBE_SCRATCH.get_ptr_mut(0) else {
        // Never (a one-slot array always has its slot), but an event not handed over
        // is counted as lost, so that emitted = processed + lost stays exact.
        add_to(LossCounter::RingFull);
        return;
    };
    let captured = unsafe {
        (*event).version = WIRE_VERSION;
        (*event).kind = kind as u32;
        (*event).timestamp_ns = now;
        (*event).hook = *key;
        (*event).packet_len = ctx.len();
        // A snapshot, not atomic as a whole: another CPU may count on the same hook
        // meanwhile, which the agent sees as counts ahead, never behind.
        (*event).counters = match counters {
            Some(counters) => *counters,
            None => FlowCounters::default(),
        };
        let captured = capture(ctx, &mut (*event).data, needed);
        (*event).captured_len = captured;
        captured as usize
    };
    // The header and the bytes captured, no more (bounded again for the verifier).
    let size = EVENT_HEADER_BYTES
        + if captured < CAPTURE_BYTES {
            captured
        } else {
            CAPTURE_BYTES
        };
    let record = unsafe { core::slice::from_raw_parts(event.cast::<u8>(), size) };
    if NETPROBE_EVENTS.output::<[u8]>(record, 0).is_err() {
        add_to(LossCounter::RingFull);
        warn!(ctx, "ring buffer full: event of kind {} lost", kind as u32);
        return;
    }
    add_to(LossCounter::Submitted);
    debug!(
        ctx,
        "event kind {} on ifindex {} ports {}->{}",
        kind as u32,
        unsafe { (*ctx.skb.skb).ifindex },
        key.tuple.src_port,
        key.tuple.dst_port
    );
}

/// Required by the kernel to use GPL-only helpers; the program is dual-licensed.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
