//! Kernel-shaped records: a valid header (version, kind, direction, captured length) and
//! fuzzed packet bytes. The kind and flow key are what the kernel would have written for
//! those bytes (the agent's own reading of them: the tuple as on the wire, wire format
//! 2), or arbitrary ones; `decode` must accept the first and may only reject the second,
//! and never panic.
#![no_main]

use lab::craft;
use libfuzzer_sys::fuzz_target;
use probe_agent::decode;
use probe_agent_fuzz::{CRAFT_IFINDEX, wire_key};
use probe_ebpf::{CAPTURE_BYTES, Direction, EventKind, FlowKey};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let direction = if selector & 0x80 == 0 {
        Direction::FromPod
    } else {
        Direction::ToPod
    };
    // The kernel hands over at most CAPTURE_BYTES of a longer packet.
    let captured = &frame[..frame.len().min(CAPTURE_BYTES)];
    let parsed = decode::parse_packet(captured);
    let reading = parsed
        .as_ref()
        .ok()
        .and_then(|p| Some((decode::event_kind(p)?, p.tuple?)));
    let kernel_like = selector & 1 == 0;
    let (kind, key) = match reading {
        Some((kind, tuple)) if kernel_like => (kind, wire_key(&tuple)),
        _ => {
            let kind = EventKind::try_from(u32::from(selector >> 1 & 15)).unwrap_or(EventKind::Rst);
            // Arbitrary key bytes, from the frame's tail.
            let mut key = FlowKey::default();
            let tail = frame.len().saturating_sub(37);
            let tail = &frame[tail..];
            if tail.len() == 37 {
                key.src_addr.copy_from_slice(&tail[..16]);
                key.dst_addr.copy_from_slice(&tail[16..32]);
                key.src_port = u16::from_be_bytes([tail[32], tail[33]]);
                key.dst_port = u16::from_be_bytes([tail[34], tail[35]]);
                key.protocol = tail[36];
            }
            (kind, key)
        }
    };
    let record = craft::wire_event(kind, key, direction, 1_000_000_000, frame);
    let decoded = decode::decode(&record);
    match (&parsed, &decoded) {
        // Bytes the agent cannot parse are rejected for that reason.
        (Err(parse_error), Err(error)) if decode::flow_from_key(&key).is_ok() => {
            assert_eq!(parse_error, error)
        }
        (Err(_), Ok(packet)) => panic!("decoded {packet:?} from bytes that do not parse"),
        _ => {}
    }
    // A tuple that is not the packet's (as on the wire) is refused: no reversal.
    if let Ok(packet) = &decoded {
        assert_eq!(
            Some(packet.tuple),
            parsed.as_ref().ok().and_then(|p| p.tuple).map(|t| {
                let mut t = t;
                t.src_ip = t.src_ip.to_canonical();
                t.dst_ip = t.dst_ip.to_canonical();
                t
            })
        );
    }
    if let (Some((_, tuple)), true) = (reading, kernel_like) {
        let packet = decoded.unwrap_or_else(|error| {
            panic!("the kernel's record for {reading:?} does not decode: {error}")
        });
        let parsed = parsed.as_ref().expect("parsed");
        assert_eq!(packet.kind, kind);
        assert_eq!(packet.hook.tuple, key);
        assert_eq!(packet.hook.ifindex, CRAFT_IFINDEX);
        assert_eq!(packet.hook.direction, direction as u32);
        assert_eq!(packet.counted, decode::HookCount::default());
        assert_eq!(decode::flow_from_key(&key), Ok(packet.tuple));
        assert_eq!(packet.tuple.protocol, tuple.protocol);
        assert_eq!(packet.direction, direction);
        // The pod end at the hook: the sender of what leaves a pod, else the receiver.
        let (src, dst) = parsed.outer.expect("an IP header");
        let pod = match direction {
            Direction::FromPod => src,
            Direction::ToPod => dst,
        };
        assert_eq!(packet.pod, pod.to_canonical());
        if kind == EventKind::DnsTcpSegment {
            let tcp = packet.tcp.as_ref().expect("TCP facts");
            assert!(tcp.payload_len > 0);
            assert_eq!(Some(tcp), parsed.tcp.as_ref());
        }
    }
});
