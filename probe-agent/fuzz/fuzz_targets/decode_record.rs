//! Any bytes as a ring-buffer record: `decode` returns a packet or an error, never
//! panics, and a packet it returns is consistent with its own hook and tuple.
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_agent::decode;
use probe_ebpf::EventKind;

fuzz_target!(|record: &[u8]| {
    if let Ok(packet) = decode::decode(record) {
        assert_eq!(decode::flow_from_key(&packet.hook.tuple), Ok(packet.tuple));
        assert_eq!(packet.direction as u32, packet.hook.direction);
        assert_eq!(packet.ifindex, packet.hook.ifindex);
        assert_eq!(packet.pod, packet.pod.to_canonical());
        if matches!(packet.kind, EventKind::DnsQuery | EventKind::DnsResponse) {
            assert!(packet.dns.is_some(), "a DNS event without DNS: {packet:?}");
        }
        match (&packet.tcp, packet.kind) {
            // DNS over TCP: a segment with payload; only its payload is kept.
            (Some(tcp), EventKind::DnsTcpSegment) => {
                assert!(
                    tcp.payload_len > 0,
                    "a DNS-over-TCP segment without payload"
                );
                assert!(tcp.payload.len() <= tcp.payload_len as usize);
            }
            (None, EventKind::DnsTcpSegment) => panic!("a DNS-over-TCP segment without TCP"),
            (Some(tcp), _) => assert!(tcp.payload.is_empty(), "payload kept: {packet:?}"),
            (None, _) => {}
        }
    }
});
