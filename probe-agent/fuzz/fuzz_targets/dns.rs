//! Any bytes as a DNS message: `decode_dns` never panics, and reads the header exactly
//! as the kernel program does (RFC 1035 §4.1.1): any 12 bytes are a header, QR is bit 7
//! of byte 2, RCODE's low 4 bits are those of byte 3 (its high bits come from an EDNS OPT
//! record, RFC 6891 §6.1.3, only in a message that parses whole). The name is the first
//! question's, when there is one that parses.
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
    assert_eq!(u16::from(dns.rcode) & 0x0f, u16::from(message[3] & 0x0f));
    assert_eq!(dns.truncated, message[2] & 0x02 != 0);
    assert_eq!(dns.qname.is_some(), dns.qtype.is_some());
    let qdcount = u16::from_be_bytes([message[4], message[5]]);
    if dns.qname.is_some() {
        assert!(qdcount > 0);
    }
    match Message::from_vec(message) {
        Ok(whole) => {
            assert_eq!(dns.rcode, whole.metadata.response_code);
            if let Some(query) = whole.queries.first() {
                assert_eq!(dns.qname, Some(query.name().to_string()));
            }
        }
        // Only a whole message carries extended rcode bits.
        Err(_) => assert!(u16::from(dns.rcode) < 16),
    }
    let name = decode::rcode_name(dns.rcode);
    assert!(!name.is_empty());
});
