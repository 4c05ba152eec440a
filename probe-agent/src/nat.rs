//! NAT as the kernel's connection tracking records it, so the agent can pair the two views of
//! one connection: the client's (`client → ClusterIP:80`, before kube-proxy's DNAT) and the
//! server's (`client → podIP:8080`, or `nodeIP:port' → podIP:8080` after SNAT).
//!
//! One `IPCTNL_MSG_CT_GET` request and its answer per lookup, on an NFNETLINK socket kept
//! open; netlink-packet-netfilter encodes and decodes the messages.

use std::{
    io,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{self as ct, ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::{
    socket::{setsockopt, sockopt::ReceiveTimeout},
    time::{TimeVal, TimeValLike},
};

use crate::model::{Flow, Protocol};

/// The longest a lookup waits for the kernel's answer. The kernel queues its answer before
/// `send` returns, so this only bounds the unexpected (an answer it could not queue).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(50);

/// Room for one answer: an entry with every optional attribute (counters, labels,
/// security context, helper) is well under 1 KiB.
const BUFFER_SIZE: usize = 8192;

/// One conntrack entry: the tuple as the client sent it and as the reply comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// Client → the address it asked for (a ClusterIP before DNAT).
    pub original: Flow,
    /// Server → client as the answer leaves the server (after DNAT/SNAT).
    pub reply: Flow,
}

impl Translation {
    /// Whether NAT rewrote the connection: the reply is not simply the original reversed.
    pub fn is_nat(&self) -> bool {
        self.reply != reversed(&self.original)
    }
}

fn reversed(flow: &Flow) -> Flow {
    Flow {
        protocol: flow.protocol,
        src_ip: flow.dst_ip,
        src_port: flow.dst_port,
        dst_ip: flow.src_ip,
        dst_port: flow.src_port,
    }
}

/// A lookup error, carried inside the `io::Error` (same kind as its source) so callers
/// see what was asked for.
#[derive(Debug, thiserror::Error)]
#[error("conntrack: {what}: {source}")]
struct ContextError {
    what: String,
    #[source]
    source: io::Error,
}

fn context(what: impl Into<String>, source: io::Error) -> io::Error {
    io::Error::new(
        source.kind(),
        ContextError {
            what: what.into(),
            source,
        },
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Which side of an entry a lookup names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Original,
    Reply,
}

impl Direction {
    /// Whether `flow` is this side of `translation`. The kernel matches a tuple against both
    /// directions of every entry, so an answer can hold `flow` on the other side.
    fn names(self, translation: &Translation, flow: &Flow) -> bool {
        match self {
            Self::Original => translation.original == *flow,
            Self::Reply => translation.reply == *flow,
        }
    }
}

/// Queries the kernel's connection tracking table of the current network namespace
/// (NFNETLINK, `IPCTNL_MSG_CT_GET`).
///
/// The socket belongs to the namespace of the thread that calls [`Conntrack::open`]; it keeps
/// querying that namespace from any thread. Lookups are blocking calls of about 10 µs,
/// never waiting longer than [`LOOKUP_TIMEOUT`], serialised by a lock so that concurrent
/// callers never read each other's answers. Needs CAP_NET_ADMIN.
#[derive(Debug)]
pub struct Conntrack {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    sequence: u32,
    /// The request is written here, then the answer read into it: no allocation per lookup.
    buffer: Vec<u8>,
    /// SO_RCVTIMEO as last set, so it is set again only when a retry needs less.
    receive_timeout: Duration,
}

impl Conntrack {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| context("opening a NETLINK_NETFILTER socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| context("binding the netlink socket", e))?;
        // Connected to the kernel: nothing but the kernel's answers can arrive.
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| context("connecting the netlink socket", e))?;
        let mut inner = Inner {
            socket,
            sequence: 0,
            buffer: vec![0; BUFFER_SIZE],
            receive_timeout: Duration::ZERO,
        };
        inner
            .set_receive_timeout(LOOKUP_TIMEOUT)
            .map_err(|e| context("setting SO_RCVTIMEO", e))?;
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// The entry whose original direction is `original` (client → address it asked for), if
    /// conntrack has it.
    pub fn by_original(&self, original: &Flow) -> io::Result<Option<Translation>> {
        self.lookup(Direction::Original, original)
    }

    /// The entry whose reply direction is `reply` (as the server's answer leaves it: server →
    /// client, after NAT), if any.
    pub fn by_reply(&self, reply: &Flow) -> io::Result<Option<Translation>> {
        self.lookup(Direction::Reply, reply)
    }

    fn lookup(&self, direction: Direction, flow: &Flow) -> io::Result<Option<Translation>> {
        let what = || match direction {
            Direction::Original => format!("looking up original tuple {flow}"),
            Direction::Reply => format!("looking up reply tuple {flow}"),
        };
        // The state stays consistent even if a holder panicked: each lookup starts afresh.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let found = inner
            .exchange(direction, flow)
            .map_err(|e| context(what(), e))?;
        Ok(found.filter(|t| direction.names(t, flow)))
    }
}

impl Inner {
    fn set_receive_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        if timeout != self.receive_timeout {
            // Never more than 50 ms: the cast cannot truncate.
            let micros = timeout.min(LOOKUP_TIMEOUT).as_micros() as i64;
            setsockopt(&self.socket, ReceiveTimeout, &TimeVal::microseconds(micros))?;
            self.receive_timeout = timeout;
        }
        Ok(())
    }

    fn exchange(&mut self, direction: Direction, flow: &Flow) -> io::Result<Option<Translation>> {
        self.sequence = self.sequence.wrapping_add(1);
        let request = request(direction, flow, self.sequence)?;
        let len = request.buffer_len();
        request.serialize(&mut self.buffer[..len]);
        self.socket.send(&self.buffer[..len], 0)?;
        let deadline = Instant::now() + LOOKUP_TIMEOUT;
        let mut wait = LOOKUP_TIMEOUT;
        loop {
            self.set_receive_timeout(wait)?;
            if let Some(answer) = self.receive()? {
                return answer;
            }
            // An answer to an earlier lookup that gave up: wait only for what is left.
            wait = deadline.saturating_duration_since(Instant::now());
            // SO_RCVTIMEO rounds to microseconds, and zero would mean "wait forever".
            if wait < Duration::from_micros(1) {
                return Err(timed_out());
            }
        }
    }

    /// Reads one datagram: the answer to the current request, or `None` if it held only
    /// answers to earlier ones (or a signal interrupted the wait).
    fn receive(&mut self) -> io::Result<Option<io::Result<Option<Translation>>>> {
        // MSG_TRUNC: the real length comes back even when it does not fit.
        let n = match self.socket.recv(&mut &mut self.buffer[..], libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
            // A signal: try again with the time left.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e),
        };
        if n > self.buffer.len() {
            return Err(invalid(format!(
                "a {n}-byte answer does not fit in {} bytes",
                self.buffer.len()
            )));
        }
        Ok(answer(&self.buffer[..n], self.sequence))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer within {LOOKUP_TIMEOUT:?}"),
    )
}

/// The `IPCTNL_MSG_CT_GET` request naming `flow` as the entry's `direction` tuple.
fn request(
    direction: Direction,
    flow: &Flow,
    sequence: u32,
) -> io::Result<NetlinkMessage<NetfilterMessage>> {
    let family = match (flow.src_ip, flow.dst_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => NetfilterProtoFamily::IPv4,
        (IpAddr::V6(_), IpAddr::V6(_)) => NetfilterProtoFamily::IPv6,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination are not the same IP family",
            ));
        }
    };
    let tuple = tuple(flow);
    let attribute = match direction {
        Direction::Original => ConntrackAttribute::CtaTupleOrig(tuple),
        Direction::Reply => ConntrackAttribute::CtaTupleReply(tuple),
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(vec![attribute]),
        )),
    );
    message.finalize();
    Ok(message)
}

fn tuple(flow: &Flow) -> Vec<Tuple> {
    let protocol = match flow.protocol {
        Protocol::Tcp => ct::Protocol::Tcp,
        Protocol::Udp => ct::Protocol::Udp,
    };
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(flow.src_ip),
            IPTuple::DestinationAddress(flow.dst_ip),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(protocol),
            ProtoTuple::SourcePort(flow.src_port),
            ProtoTuple::DestinationPort(flow.dst_port),
        ]),
    ]
}

/// What a datagram says about request `sequence`: `None` if no message in it answers that
/// request; `Some(Ok(None))` for ENOENT.
fn answer(datagram: &[u8], sequence: u32) -> Option<io::Result<Option<Translation>>> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let header = match NetlinkBuffer::new_checked(rest) {
            Ok(header) => header,
            Err(e) => return Some(Err(invalid(format!("bad netlink message: {e}")))),
        };
        let len = header.length() as usize;
        if header.sequence_number() == sequence {
            return Some(message(&rest[..len]));
        }
        // Messages are padded to 4 bytes (NLMSG_ALIGN).
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

fn message(bytes: &[u8]) -> io::Result<Option<Translation>> {
    let message = NetlinkMessage::<NetfilterMessage>::deserialize(bytes)
        .map_err(|e| invalid(format!("bad conntrack message: {e}")))?;
    match message.payload {
        NetlinkPayload::Error(error) => match error.code {
            Some(code) if code.get() == -libc::ENOENT => Ok(None),
            Some(_) => Err(error.to_io()),
            None => Err(invalid("an acknowledgement without the entry".to_owned())),
        },
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
            ..
        }) => translation(&attributes).map(Some),
        other => Err(invalid(format!("unexpected answer {other:?}"))),
    }
}

fn translation(attributes: &[ConntrackAttribute]) -> io::Result<Translation> {
    let (mut original, mut reply) = (None, None);
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuple) => original = Some(flow(tuple)?),
            ConntrackAttribute::CtaTupleReply(tuple) => reply = Some(flow(tuple)?),
            _ => {}
        }
    }
    match (original, reply) {
        (Some(original), Some(reply)) => Ok(Translation { original, reply }),
        _ => Err(invalid(
            "an entry without both its original and reply tuples".to_owned(),
        )),
    }
}

fn flow(tuple: &[Tuple]) -> io::Result<Flow> {
    let (mut src_ip, mut dst_ip, mut protocol, mut src_port, mut dst_port) =
        (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src_ip = Some(*a),
                        IPTuple::DestinationAddress(a) => dst_ip = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => {
                for field in fields {
                    match field {
                        ProtoTuple::Protocol(p) => protocol = Some(*p),
                        ProtoTuple::SourcePort(p) => src_port = Some(*p),
                        ProtoTuple::DestinationPort(p) => dst_port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let protocol = match protocol {
        Some(ct::Protocol::Tcp) => Protocol::Tcp,
        Some(ct::Protocol::Udp) => Protocol::Udp,
        other => return Err(invalid(format!("a tuple of protocol {other:?}"))),
    };
    match (src_ip, src_port, dst_ip, dst_port) {
        (Some(src_ip), Some(src_port), Some(dst_ip), Some(dst_port)) => Ok(Flow {
            protocol,
            src_ip,
            src_port,
            dst_ip,
            dst_port,
        }),
        _ => Err(invalid(format!("an incomplete tuple {tuple:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use netlink_packet_core::{DefaultNla, ErrorMessage};
    use netlink_packet_netfilter::conntrack::Status;

    use super::*;

    fn tcp(src: &str, src_port: u16, dst: &str, dst_port: u16) -> Flow {
        Flow {
            protocol: Protocol::Tcp,
            src_ip: src.parse().unwrap(),
            src_port,
            dst_ip: dst.parse().unwrap(),
            dst_port,
        }
    }

    fn bytes(message: &NetlinkMessage<NetfilterMessage>) -> Vec<u8> {
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        buf
    }

    /// The kernel's answer to request `sequence`: an IPCTNL_MSG_CT_NEW as ctnetlink
    /// writes it, with attributes this module ignores around the tuples.
    fn entry(sequence: u32, original: &Flow, reply: &Flow) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                ConntrackMessage::New(vec![
                    ConntrackAttribute::CtaTupleOrig(tuple(original)),
                    ConntrackAttribute::CtaTupleReply(tuple(reply)),
                    ConntrackAttribute::CtaStatus(Status::Confirmed | Status::DstNat),
                    ConntrackAttribute::CtaTimeout(120),
                    // CTA_ID
                    ConntrackAttribute::Other(DefaultNla::new(12, vec![0, 0, 0, 7])),
                ]),
            )),
        );
        message.finalize();
        bytes(&message)
    }

    fn error(sequence: u32, errno: i32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut error = ErrorMessage::default();
        error.code = NonZeroI32::new(-errno);
        let mut message =
            NetlinkMessage::<NetfilterMessage>::new(header, NetlinkPayload::Error(error));
        message.finalize();
        bytes(&message)
    }

    #[test]
    fn request_matches_what_conntrack_tools_sends() {
        // `conntrack -G -p tcp -s 10.57.97.124 -d 148.113.20.105 --sport 39600 --dport 443`
        // captured with nlmon (netlink-packet-netfilter's test vector): the nfgenmsg and
        // CTA_TUPLE_ORIG; conntrack-tools then adds a CTA_PROTOINFO the kernel ignores here.
        let captured: [u8; 56] = [
            0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00,
            0x01, 0x00, 0x0a, 0x39, 0x61, 0x7c, 0x08, 0x00, 0x02, 0x00, 0x94, 0x71, 0x14, 0x69,
            0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00,
            0x02, 0x00, 0x9a, 0xb0, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x01, 0xbb, 0x00, 0x00,
        ];
        let flow = tcp("10.57.97.124", 39600, "148.113.20.105", 443);
        let wire = bytes(&request(Direction::Original, &flow, 7).unwrap());
        let header = NetlinkBuffer::new_checked(&wire[..]).unwrap();
        assert_eq!(header.length() as usize, wire.len());
        // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET, a plain request (no dump, no ack).
        assert_eq!(header.message_type(), 0x0101);
        assert_eq!(header.flags(), NLM_F_REQUEST);
        assert_eq!(header.sequence_number(), 7);
        assert_eq!(header.payload(), captured);
    }

    #[test]
    fn reply_requests_name_cta_tuple_reply_and_ipv6_addresses() {
        let flow = Flow {
            protocol: Protocol::Udp,
            ..tcp("fd00:10:244::9", 53, "fd00:10:244::5", 40000)
        };
        let wire = bytes(&request(Direction::Reply, &flow, 1).unwrap());
        let payload = NetlinkBuffer::new_checked(&wire[..]).unwrap().payload();
        // nfgenmsg family AF_INET6; CTA_TUPLE_REPLY (2) nested; CTA_TUPLE_IP nested; then
        // CTA_IP_V6_SRC (3), 4 + 16 bytes.
        assert_eq!(payload[0], 10);
        assert_eq!(&payload[4 + 2..4 + 4], [0x02, 0x80]);
        assert_eq!(&payload[8 + 2..8 + 4], [0x01, 0x80]);
        assert_eq!(&payload[12..16], [20, 0, 3, 0]);
        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&wire).unwrap();
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Get(attributes)),
            ..
        }) = parsed.payload
        else {
            panic!("not a CT_GET: {parsed:?}");
        };
        assert_eq!(
            attributes,
            [ConntrackAttribute::CtaTupleReply(tuple(&flow))]
        );
    }

    #[test]
    fn mixed_families_are_refused() {
        let flow = tcp("10.0.0.1", 1, "fd00::1", 2);
        let err = request(Direction::Original, &flow, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn an_entry_is_parsed_into_both_tuples() {
        let original = tcp("10.244.0.5", 40000, "10.96.0.20", 80);
        let reply = tcp("10.244.0.9", 8080, "10.244.0.5", 40000);
        let translation = answer(&entry(3, &original, &reply), 3)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(translation, Translation { original, reply });
        assert!(translation.is_nat());
    }

    #[test]
    fn enoent_is_none_and_other_errors_keep_their_errno() {
        assert!(
            answer(&error(4, libc::ENOENT), 4)
                .unwrap()
                .unwrap()
                .is_none()
        );
        let err = answer(&error(4, libc::EPERM), 4).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let wrapped = context("looking up original tuple x", err);
        assert_eq!(wrapped.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            wrapped
                .to_string()
                .starts_with("conntrack: looking up original tuple x: ")
        );
        let source = wrapped.get_ref().unwrap().source().unwrap();
        let source = source.downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn answers_to_earlier_requests_are_skipped() {
        let original = tcp("10.244.0.5", 40000, "10.96.0.20", 80);
        let reply = tcp("10.244.0.9", 8080, "10.244.0.5", 40000);
        assert!(answer(&entry(1, &original, &reply), 2).is_none());
        // Several messages in one datagram: the stale one first, padded to 4 bytes.
        let mut datagram = error(1, libc::ENOENT);
        datagram.extend(entry(2, &original, &reply));
        let found = answer(&datagram, 2).unwrap().unwrap();
        assert_eq!(found, Some(Translation { original, reply }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(answer(&[1, 2, 3], 1).unwrap().is_err());
        let mut short = entry(
            1,
            &tcp("10.0.0.1", 1, "10.0.0.2", 2),
            &tcp("10.0.0.2", 2, "10.0.0.1", 1),
        );
        // The last attribute cut short, the header's length fixed up to match.
        short.truncate(short.len() - 2);
        let len = short.len() as u32;
        short[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(answer(&short, 1).unwrap().is_err());
    }

    #[test]
    fn is_nat_compares_the_reply_with_the_reversed_original() {
        let direct = Translation {
            original: tcp("10.244.0.5", 40000, "10.244.0.9", 8080),
            reply: tcp("10.244.0.9", 8080, "10.244.0.5", 40000),
        };
        assert!(!direct.is_nat());
        let hairpin = Translation {
            original: tcp("10.244.0.7", 40000, "10.96.0.21", 80),
            reply: tcp("10.244.0.7", 8080, "10.244.0.1", 61000),
        };
        assert!(hairpin.is_nat());
        let snat_only = Translation {
            original: tcp("10.244.0.5", 40000, "10.0.0.9", 443),
            reply: tcp("10.0.0.9", 443, "192.168.1.2", 40000),
        };
        assert!(snat_only.is_nat());
    }

    #[test]
    fn an_entry_found_by_its_other_side_is_not_the_one_asked_for() {
        let t = Translation {
            original: tcp("10.244.0.5", 40000, "10.96.0.20", 80),
            reply: tcp("10.244.0.9", 8080, "10.244.0.5", 40000),
        };
        assert!(Direction::Original.names(&t, &t.original));
        assert!(Direction::Reply.names(&t, &t.reply));
        assert!(!Direction::Original.names(&t, &t.reply));
        assert!(!Direction::Reply.names(&t, &t.original));
    }

    #[test]
    fn a_receive_gives_up_after_the_timeout() {
        // Any user may open a netlink socket; with no request sent, no answer comes.
        let conntrack = Conntrack::open().unwrap();
        let mut inner = conntrack.inner.lock().unwrap();
        let start = Instant::now();
        let err = inner.receive().unwrap_err();
        let waited = start.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(
            waited >= LOOKUP_TIMEOUT - Duration::from_millis(5)
                && waited < LOOKUP_TIMEOUT + Duration::from_millis(100),
            "{waited:?}"
        );
    }
}
