//! Any bytes as a DNS message: `decode_dns` never panics, and reads the header exactly
//! as the kernel program does (RFC 1035 §4.1.1): any 12 bytes are a header, QR is bit 7
//! of byte 2, RCODE the low 4 bits of byte 3. The name comes only with a full parse.
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use probe_agent::decode;

fuzz_target!(|message: &[u8]| {
    let dns = decode::decode_dns(message);
    assert_eq!(dns.is_some(), message.len() >= 12, "{dns:?}");
    let Some(dns) = dns else {
        return;
    };
    assert_eq!(dns.id, u16::from_be_bytes([message[0], message[1]]));
    assert_eq!(dns.is_response, message[2] & 0x80 != 0);
    assert_eq!(u16::from(dns.rcode), u16::from(message[3] & 0x0f));
    assert_eq!(dns.qname.is_some(), dns.qtype.is_some());
    if dns.qname.is_some() {
        assert!(Message::from_vec(message).is_ok());
    }
    let name = decode::rcode_name(dns.rcode);
    assert!(!name.is_empty());
});
