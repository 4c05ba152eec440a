//! Kernel-shaped records: a valid header (version, kind, direction, captured length) and
//! fuzzed packet bytes. The kind and flow key are what the kernel would have written for
//! those bytes (the agent's own reading of them), or arbitrary ones; `decode` must accept
//! the first and may only reject the second, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_agent::{craft, decode};
use probe_agent_fuzz::kernel_key;
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
        Some((kind, tuple)) if kernel_like => (kind, kernel_key(kind, &tuple, selector & 2 != 0)),
        _ => {
            let kind = EventKind::try_from(u32::from(selector >> 1 & 7)).unwrap_or(EventKind::Rst);
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
    if reading.is_some() && kernel_like {
        let packet = decoded.unwrap_or_else(|error| {
            panic!("the kernel's record for {reading:?} does not decode: {error}")
        });
        assert_eq!(packet.kind, kind);
        assert_eq!(packet.key, key);
        assert_eq!(decode::flow_from_key(&key), Ok(packet.flow));
        assert_eq!(packet.direction, direction);
    }
});
