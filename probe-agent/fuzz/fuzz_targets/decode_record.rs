//! Any bytes as a ring-buffer record: `decode` returns a packet or an error, never
//! panics, and a packet it returns is consistent with its own key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_agent::decode;
use probe_ebpf::EventKind;

fuzz_target!(|record: &[u8]| {
    if let Ok(packet) = decode::decode(record) {
        assert_eq!(decode::flow_from_key(&packet.key), Ok(packet.flow));
        if matches!(packet.kind, EventKind::DnsQuery | EventKind::DnsResponse) {
            assert!(packet.dns.is_some(), "a DNS event without DNS: {packet:?}");
        }
    }
});
