//! A real DNS server for the lab (Debian's dnsmasq in a pod), and a one-shot DNS client.

use std::{
    io::{self, BufRead, BufReader},
    net::{IpAddr, SocketAddr, UdpSocket},
    os::unix::process::CommandExt,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};

use super::Pod;
use crate::exec;

/// dnsmasq running in a pod, authoritative for everything: the given records answer, every
/// other name is NXDOMAIN (never REFUSED, never forwarded). Killed on drop.
#[derive(Debug)]
pub struct DnsServer {
    child: Child,
    /// Where it listens (port 53): the pod's addresses.
    pub addrs: Vec<IpAddr>,
    log: Arc<Mutex<Vec<String>>>,
    log_thread: Option<JoinHandle<()>>,
}

/// The dnsmasq command line (after the program name) for `records`, listening on `listen`:
/// authoritative for every name, nothing taken from the machine's configuration.
pub fn dnsmasq_args(listen: &[IpAddr], records: &[(&str, IpAddr)]) -> Result<Vec<String>> {
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        // Nothing from the machine's own configuration: no /etc/dnsmasq.conf, resolv.conf
        // (no upstream servers), /etc/hosts; no pid file, no polling.
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--pid-file=",
        // Every domain is "local": a name without a record is NXDOMAIN. Without this, names
        // dnsmasq cannot forward (no upstream) would be REFUSED.
        "--local=/#/",
        // Answers must reflect the records now, not a cached negative answer.
        "--no-negcache",
        "--log-facility=-",
        "--log-queries",
    ]
    .map(String::from)
    .to_vec();
    for ip in listen {
        args.push(format!("--listen-address={ip}"));
    }
    for (name, ip) in records {
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "DNS name {name:?} must be letters, digits, '-' and '.'"
        );
        args.push(format!("--host-record={},{ip}", name.trim_end_matches('.')));
    }
    Ok(args)
}

/// Starts dnsmasq as a child in `pod`'s namespace, listening on the pod's IPv4 and IPv6
/// addresses (port 53, UDP and TCP), answering `records` (A for IPv4, AAAA for IPv6; a
/// name may appear several times) and NXDOMAIN for every other name. To serve a Service IP
/// (10.96.0.10), DNAT it to the pod with [`super::Node::add_service`]. Returns once it
/// answers queries.
pub fn start_dns(pod: &Pod, records: &[(&str, IpAddr)]) -> Result<DnsServer> {
    let addrs = vec![IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)];
    let mut cmd = pod.command(&exec::tool("dnsmasq").to_string_lossy());
    cmd.args(dnsmasq_args(&addrs, records)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C in the terminal must not kill it before the
        // program that started it has finished with it.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", exec::describe(&cmd)))?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let log_thread = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded: a long test must not grow it forever.
                if log.len() >= 10_000 {
                    log.remove(0);
                }
                log.push(line);
            }
        })
    };
    let mut server = DnsServer {
        child,
        addrs,
        log,
        log_thread: Some(log_thread),
    };
    server
        .wait_ready(pod)
        .with_context(|| format!("starting dnsmasq in pod {}", pod.name))?;
    Ok(server)
}

impl DnsServer {
    /// Waits until it answers a query sent from inside its pod (over the pod's loopback, so
    /// the probe on the pod's veth never sees it).
    fn wait_ready(&mut self, pod: &Pod) -> Result<()> {
        let server = SocketAddr::new(IpAddr::V4(pod.ipv4), 53);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = pod.dns_query(
                server,
                "readiness.check.",
                QueryType::A,
                Duration::from_millis(200),
            );
            if reply.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100)); // let the log thread catch up
                bail!("dnsmasq exited ({status}):\n{}", self.log().join("\n"));
            }
            if Instant::now() > deadline {
                bail!(
                    "dnsmasq does not answer on {server} ({:?}):\n{}",
                    reply.unwrap_err(),
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// dnsmasq's log so far (it logs every query): handy in a failing test's message.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Process id of dnsmasq.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        crate::exec::terminate(&mut self.child, Duration::from_secs(2));
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}

/// DNS query types the lab sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    A,
    Aaaa,
}

impl From<QueryType> for RecordType {
    fn from(qtype: QueryType) -> Self {
        match qtype {
            QueryType::A => RecordType::A,
            QueryType::Aaaa => RecordType::AAAA,
        }
    }
}

/// What came back for a [`super::Pod::dns_query`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsReply {
    /// Transaction id of the query (and of the reply).
    pub id: u16,
    /// Response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED (RFC 1035 §4.1.1).
    pub rcode: u8,
    /// Number of answer records.
    pub answers: u16,
}

/// A standard query with recursion desired (RFC 1035 §4.1).
pub(crate) fn encode_query(id: u16, name: &str, qtype: QueryType) -> io::Result<Vec<u8>> {
    let bad_name = |err| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad DNS name {name:?}: {err}"),
        )
    };
    let name = Name::from_ascii(name).map_err(bad_name)?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, qtype.into()));
    message
        .to_vec()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
}

/// The reply to query `id`; `None` if `packet` is not one.
pub(crate) fn decode_reply(packet: &[u8], id: u16) -> Option<DnsReply> {
    let message = Message::from_vec(packet).ok()?;
    let metadata = &message.metadata;
    (metadata.id == id && metadata.message_type == MessageType::Response).then(|| DnsReply {
        id,
        rcode: u16::from(metadata.response_code) as u8,
        answers: u16::try_from(message.answers.len()).unwrap_or(u16::MAX),
    })
}

/// One query, one answer (or `TimedOut`), from the calling thread's namespace.
pub(crate) fn query(
    server: SocketAddr,
    name: &str,
    qtype: QueryType,
    timeout: Duration,
) -> io::Result<DnsReply> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("valid"),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    // Not cryptographic, just different per query (like a resolver's).
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        ^ std::process::id()) as u16;
    socket.send(&encode_query(id, name, qtype)?)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no DNS answer from {server} in {timeout:?}"),
            ));
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                if let Some(reply) = decode_reply(&buf[..n], id) {
                    return Ok(reply);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding_matches_rfc1035() {
        let p = encode_query(0x1234, "a.bc.", QueryType::Aaaa).unwrap();
        assert_eq!(
            p,
            [
                0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header
                1, b'a', 2, b'b', b'c', 0, // name
                0, 28, 0, 1, // AAAA IN
            ]
        );
        assert!(encode_query(1, "a..b", QueryType::A).is_err());
        assert!(encode_query(1, &"x".repeat(64), QueryType::A).is_err());
    }

    #[test]
    fn reply_decoding() {
        let mut r = encode_query(7, "x.", QueryType::A).unwrap();
        assert_eq!(decode_reply(&r, 7), None, "a query is not a reply");
        r[2] |= 0x80;
        r[3] = 0x83;
        assert_eq!(
            decode_reply(&r, 7),
            Some(DnsReply {
                id: 7,
                rcode: 3,
                answers: 0
            })
        );
        assert_eq!(decode_reply(&r, 8), None, "other id");
        assert_eq!(decode_reply(&r[..5], 7), None, "runt");
    }

    #[test]
    fn dnsmasq_is_authoritative_for_everything() {
        let args = dnsmasq_args(
            &[
                "10.244.0.2".parse().unwrap(),
                "fd00:10:244::2".parse().unwrap(),
            ],
            &[
                (
                    "payment-service.production.svc.cluster.local",
                    "10.96.0.20".parse().unwrap(),
                ),
                (
                    "db.production.svc.cluster.local.",
                    "fd00:10:244::4".parse().unwrap(),
                ),
            ],
        )
        .unwrap();
        for want in [
            "--local=/#/",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--listen-address=10.244.0.2",
            "--listen-address=fd00:10:244::2",
            "--host-record=payment-service.production.svc.cluster.local,10.96.0.20",
            "--host-record=db.production.svc.cluster.local,fd00:10:244::4",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        assert!(dnsmasq_args(&[], &[("a,b", "1.2.3.4".parse().unwrap())]).is_err());
    }
}
