//! The agent binary on a simulated node (network namespaces, veths, nftables, dnsmasq)
//! with real TCP stacks and a real DNS server: exact verdicts, counts and 5-tuples.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use lab::{self, Node, Pod, Proto, QueryType};
use probe_agent::model::{AttachMode, Cause, InterfaceStatus, Protocol, Verdict, VerdictKind};
use serde::de::DeserializeOwned;

const SYN_TIMEOUT: Duration = Duration::from_secs(1);

/// A running `probe-agent run` for a node (the lab's supervisor), with the typed answers
/// the tests read; SIGTERM and wait on drop, its log printed if the test failed.
pub(crate) struct Agent(lab::Agent);

impl std::ops::Deref for Agent {
    type Target = lab::Agent;
    fn deref(&self) -> &lab::Agent {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut lab::Agent {
        &mut self.0
    }
}

impl Agent {
    pub(crate) fn start(node: &Node, extra: &[&str]) -> Agent {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "netprobe-agent-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        // Short timeouts keep the tests quick, unless a test sets its own.
        let defaults = [("--syn-timeout", "1s"), ("--dns-timeout", "1s")]
            .into_iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [flag, value]);
        let mut agent =
            lab::AgentCommand::new(Path::new(env!("CARGO_BIN_EXE_probe-agent")), node, &log)
                .args(defaults)
                .args(extra)
                .env(
                    "RUST_LOG",
                    "info,netlink_packet_route=error,probe_ebpf=debug",
                )
                .remove_log()
                .start()
                .expect("start probe-agent");
        agent
            .wait_ready(Duration::from_secs(15))
            .unwrap_or_else(|err| panic!("{err:#}"));
        Agent(agent)
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> T {
        self.0
            .get_json(path_and_query)
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// The `/metrics` exposition.
    pub(crate) fn metrics(&self) -> String {
        self.0
            .metrics_text()
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// The value of the series `name{labels}` (exactly as exposed), if exposed.
    pub(crate) fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.trim().parse().expect("a sample value"))
    }

    pub(crate) fn verdicts(&self, query: &str) -> Vec<Verdict> {
        #[derive(serde::Deserialize)]
        struct Body {
            verdicts: Vec<Verdict>,
        }
        self.get::<Body>(&format!("/v1/verdicts?limit=10000&{query}"))
            .verdicts
    }

    pub(crate) fn flow_events(&self, query: &str) -> Vec<probe_agent::model::FlowEvent> {
        #[derive(serde::Deserialize)]
        struct Body {
            flows: Vec<probe_agent::model::FlowEvent>,
        }
        self.get::<Body>(&format!("/v1/flows?limit=1000&{query}"))
            .flows
    }

    pub(crate) fn interfaces(&self) -> Vec<InterfaceStatus> {
        #[derive(serde::Deserialize)]
        struct Body {
            interfaces: Vec<InterfaceStatus>,
        }
        self.get::<Body>("/v1/interfaces").interfaces
    }

    /// Polls until exactly one verdict of `flow_query` is final, and returns it.
    pub(crate) fn settled(&self, flow_query: &str) -> Verdict {
        self.settled_when(flow_query, |_| true)
    }

    /// Polls until exactly one verdict of `flow_query` is final and `done`, and returns it:
    /// a final verdict can still take in later packets (a RST after an OK handshake).
    pub(crate) fn settled_when(
        &self,
        flow_query: &str,
        done: impl Fn(&Verdict) -> bool,
    ) -> Verdict {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let verdicts = self.verdicts(flow_query);
            if let [verdict] = verdicts.as_slice()
                && verdict.verdict != VerdictKind::Pending
                && done(verdict)
            {
                return verdict.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no settled verdict for {flow_query}: {verdicts:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and how long the agent took to exit.
    pub(crate) fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("wait for the agent");
        assert!(status.success(), "agent exited with {status}");
        started.elapsed()
    }
}

pub(crate) fn node(tag: &str) -> Node {
    Node::new(&lab::unique_prefix(tag)).expect("build the simulated node")
}

pub(crate) fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

pub(crate) fn counts(v: &Verdict) -> (u64, u64, u64, u64) {
    (
        v.counts.syn,
        v.counts.syn_ack,
        v.counts.rst,
        v.counts.icmp_unreachable,
    )
}

fn expect_err(result: io::Result<()>, kind: io::ErrorKind) {
    match result {
        Err(err) => assert_eq!(err.kind(), kind, "{err}"),
        Ok(()) => panic!("expected {kind:?}, connected"),
    }
}

/// The TCP incidents of docs/verdicts.md over IPv4, through a kube-proxy-style Service.
#[test]
fn tcp_verdicts_ipv4() {
    let mut node = node("tcp4");
    let client = node.add_pod("checkout", "production", 5).unwrap();
    let server = node.add_pod("payment", "production", 9).unwrap();
    let _http = server.listen_tcp(8080).unwrap();
    let _db = server.listen_tcp(5432).unwrap();
    let service: IpAddr = "10.96.0.20".parse().unwrap();
    let empty_service: IpAddr = "10.96.0.30".parse().unwrap();
    node.add_service(Proto::Tcp, service, 80, sock(server.ipv4, 8080))
        .unwrap();
    node.reject_service(Proto::Tcp, empty_service, 80).unwrap();
    node.drop_traffic(
        Proto::Tcp,
        Some(client.ipv4.into()),
        Some(server.ipv4.into()),
        Some(5432),
    )
    .unwrap();
    let agent = Agent::start(&node, &[]);

    // Healthy, through the Service: one flow, named by the ClusterIP the client used.
    client
        .connect_tcp(sock(service, 80), Duration::from_secs(2))
        .unwrap();
    let ok = agent.settled("port=80");
    assert_eq!(ok.verdict, VerdictKind::Ok);
    assert_eq!(ok.flow.protocol, Protocol::Tcp);
    assert_eq!(ok.flow.src_ip, IpAddr::from(client.ipv4));
    assert_eq!((ok.flow.dst_ip, ok.flow.dst_port), (service, 80));
    assert_eq!(counts(&ok), (1, 1, 0, 0));
    assert_eq!(&*ok.interface, client.host_if);

    // Nothing listening: REFUSED, answered by RST. Pod to pod on one node: one flow.
    expect_err(
        client.connect_tcp(sock(server.ipv4, 9090), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    let refused = agent.settled("port=9090");
    assert_eq!(refused.verdict, VerdictKind::Refused);
    assert_eq!(counts(&refused), (1, 0, 1, 0));
    assert_eq!(refused.flow.dst_ip, IpAddr::from(server.ipv4));
    assert_eq!(&*refused.interface, client.host_if);

    // A Service without endpoints: kube-proxy's REJECT, an ICMP port unreachable.
    expect_err(
        client.connect_tcp(sock(empty_service, 80), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    let unreachable = agent.settled(&format!("dst_ip={empty_service}"));
    assert_eq!(unreachable.verdict, VerdictKind::Unreachable);
    assert_eq!(counts(&unreachable), (1, 0, 0, 1));

    // A NetworkPolicy-style drop: within 1.5 s, the SYN at 0 s and its retransmission at 1 s.
    expect_err(
        client.connect_tcp(sock(server.ipv4, 5432), Duration::from_millis(1500)),
        io::ErrorKind::TimedOut,
    );
    let timeout = agent.settled("port=5432");
    assert_eq!(timeout.verdict, VerdictKind::Timeout);
    assert_eq!(counts(&timeout), (2, 0, 0, 0));
    assert!(timeout.reason.contains("no answer"), "{}", timeout.reason);

    // Nothing else was seen: no stray flows from the server's veth.
    assert_eq!(
        agent.verdicts("protocol=tcp").len(),
        4,
        "{:#?}",
        agent.verdicts("")
    );

    // The metrics agree.
    let metrics = agent.metrics();
    for verdict in ["OK", "REFUSED", "UNREACHABLE", "TIMEOUT"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("netprobe_verdicts_total{")
                    && l.contains(&format!("verdict=\"{verdict}\""))
            })
            .unwrap_or_else(|| panic!("no {verdict} series in\n{metrics}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
    assert!(
        metrics.contains("netprobe_attached_interfaces 2"),
        "{metrics}"
    );
}

/// Slow but successful: the first SYN is dropped, the retransmission gets through.
#[test]
fn slow_handshake_is_ok_not_timeout() {
    let mut node = node("slow");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let _listener = server.listen_tcp(8443).unwrap();
    // Drop every other SYN to the port: the first one is lost, its retransmission not.
    node.nft(&format!(
        "table inet slow {{\n chain forward {{\n  type filter hook forward priority -10;\n  \
         ip daddr {} tcp dport 8443 tcp flags syn numgen inc mod 2 0 drop\n }}\n}}\n",
        server.ipv4
    ))
    .unwrap();
    let agent = Agent::start(&node, &[]);
    client
        .connect_tcp(sock(server.ipv4, 8443), Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(SYN_TIMEOUT * 2);
    let verdict = agent.settled("port=8443");
    assert_eq!(verdict.verdict, VerdictKind::Ok);
    assert_eq!(counts(&verdict), (2, 1, 0, 0));
}

/// The same incidents over IPv6.
#[test]
fn tcp_verdicts_ipv6() {
    let mut node = node("tcp6");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let _listener = server.listen_tcp(8080).unwrap();
    node.drop_traffic(
        Proto::Tcp,
        Some(client.ipv6.into()),
        Some(server.ipv6.into()),
        Some(8081),
    )
    .unwrap();
    let agent = Agent::start(&node, &[]);

    client
        .connect_tcp(sock(server.ipv6, 8080), Duration::from_secs(2))
        .unwrap();
    let ok = agent.settled("port=8080");
    assert_eq!((ok.verdict, counts(&ok)), (VerdictKind::Ok, (1, 1, 0, 0)));
    assert_eq!(ok.flow.src_ip, IpAddr::from(client.ipv6));
    assert_eq!(ok.flow.dst_ip, IpAddr::from(server.ipv6));

    expect_err(
        client.connect_tcp(sock(server.ipv6, 9090), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    let refused = agent.settled("port=9090");
    assert_eq!(
        (refused.verdict, counts(&refused)),
        (VerdictKind::Refused, (1, 0, 1, 0))
    );

    expect_err(
        client.connect_tcp(sock(server.ipv6, 8081), Duration::from_millis(1500)),
        io::ErrorKind::TimedOut,
    );
    let timeout = agent.settled("port=8081");
    assert_eq!(
        (timeout.verdict, counts(&timeout)),
        (VerdictKind::Timeout, (2, 0, 0, 0))
    );
    assert_eq!(agent.verdicts(&format!("ip={}", server.ipv6)).len(), 3);

    // A Service without endpoints, over IPv6: ICMPv6 port unreachable.
    let empty_service: IpAddr = "fd00:10:96::30".parse().unwrap();
    node.reject_service(Proto::Tcp, empty_service, 80).unwrap();
    expect_err(
        client.connect_tcp(sock(empty_service, 80), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    let unreachable = agent.settled(&format!("dst_ip={empty_service}"));
    assert_eq!(unreachable.verdict, VerdictKind::Unreachable);
    // Linux may take the first ICMPv6 error as soft (the socket is busy in connect())
    // and retransmit: every SYN is answered by one error, never by anything else.
    let (syn, syn_ack, rst, icmp) = counts(&unreachable);
    assert!(
        syn >= 1 && icmp == syn && syn_ack == 0 && rst == 0,
        "{:?}",
        counts(&unreachable)
    );
    assert_eq!(unreachable.flow.src_ip, IpAddr::from(client.ipv6));
}

/// Connects, then closes with SO_LINGER 0: the kernel ends the connection with a RST.
fn connect_and_reset(pod: &Pod, to: SocketAddr) {
    pod.in_netns(move || {
        let stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger).unwrap();
        drop(stream);
    });
}

/// Accepts one connection on `port` in `pod` and closes it with SO_LINGER 0: the server
/// resets it.
fn serve_one_and_reset(pod: &Pod, port: u16) -> std::thread::JoinHandle<()> {
    let listener = pod.in_netns(move || TcpListener::bind(("::", port)).unwrap());
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger).unwrap();
        drop(stream);
    })
}

/// Who sent the RST decides: the server resetting an established connection is RESET;
/// a client aborting its own (SO_LINGER 0, a pool closing) is no failure of the server.
#[test]
fn reset_after_the_handshake_is_the_senders() {
    let mut node = node("reset");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let _listener = server.listen_tcp(8080).unwrap();
    let agent = Agent::start(&node, &[]);
    for (ip, family) in [
        (IpAddr::from(server.ipv4), "v4"),
        (IpAddr::from(server.ipv6), "v6"),
    ] {
        connect_and_reset(&client, sock(ip, 8080));
        let aborted = agent.settled_when(&format!("dst_ip={ip}&port=8080"), |v| v.counts.rst > 0);
        assert_eq!(aborted.verdict, VerdictKind::Ok, "{family}: {aborted:#?}");
        assert_eq!(aborted.cause, None, "{family}");
        assert!(
            aborted
                .reason
                .contains("the client then aborted the connection (RST)"),
            "{family}: {}",
            aborted.reason
        );
        assert_eq!(counts(&aborted), (1, 1, 1, 0), "{family}");
        assert_eq!(&*aborted.interface, client.host_if);
    }
    // The server resets: RESET, and one flow though both veths saw the RST.
    let server_side = serve_one_and_reset(&server, 8081);
    let to = sock(server.ipv4, 8081);
    client.in_netns(move || {
        use std::io::Read;
        // The reset may come before connect returns: either way the handshake completed.
        if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            let _ = stream.read(&mut [0; 1]);
        }
    });
    server_side.join().unwrap();
    let reset = agent.settled("port=8081");
    assert_eq!(reset.verdict, VerdictKind::Reset, "{reset:#?}");
    assert_eq!(reset.cause, Some(Cause::ConnectionReset));
    assert_eq!(counts(&reset), (1, 1, 1, 0));
    assert_eq!(&*reset.interface, client.host_if);
}

/// A DNS server answering by the first label of the name: `servfail.…` SERVFAIL,
/// `refused.…` REFUSED, `formerr.…` FORMERR, `ok.…` NOERROR, anything else NXDOMAIN.
/// Runs in `pod`
/// (IPv4 and IPv6, port 53) until dropped.
pub(crate) struct RcodeServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RcodeServer {
    pub(crate) fn start(pod: &Pod) -> Self {
        let socket = pod
            .in_netns(|| UdpSocket::bind("[::]:53"))
            .expect("bind :53");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let first_label = query
                    .queries
                    .first()
                    .and_then(|q| {
                        q.name()
                            .iter()
                            .next()
                            .map(|l| String::from_utf8_lossy(l).into_owned())
                    })
                    .unwrap_or_default();
                let rcode = match first_label.as_str() {
                    "servfail" => ResponseCode::ServFail,
                    "refused" => ResponseCode::Refused,
                    "formerr" => ResponseCode::FormErr,
                    "ok" => ResponseCode::NoError,
                    _ => ResponseCode::NXDomain,
                };
                let mut response =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                response.metadata.response_code = rcode;
                response.add_queries(query.queries.clone());
                let _ = socket.send_to(&response.to_vec().unwrap(), from);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RcodeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SERVFAIL, DNS_REFUSED and DNS_ERROR, over IPv4 and IPv6.
#[test]
fn dns_server_errors() {
    let mut node = node("rcode");
    let dns_pod = node.add_pod("dns", "kube-system", 10).unwrap();
    let client = node.add_pod("client", "default", 5).unwrap();
    let _server = RcodeServer::start(&dns_pod);
    let agent = Agent::start(&node, &[]);
    let cases = [
        ("servfail.example.", 2, VerdictKind::Servfail, "SERVFAIL"),
        ("refused.example.", 5, VerdictKind::DnsRefused, "REFUSED"),
        ("formerr.example.", 1, VerdictKind::DnsError, "FORMERR"),
    ];
    for (server, client_ip) in [
        (IpAddr::from(dns_pod.ipv4), IpAddr::from(client.ipv4)),
        (IpAddr::from(dns_pod.ipv6), IpAddr::from(client.ipv6)),
    ] {
        for (name, rcode, verdict, rcode_name) in cases {
            let reply = client
                .dns_query(
                    sock(server, 53),
                    name,
                    QueryType::Aaaa,
                    Duration::from_secs(2),
                )
                .unwrap();
            assert_eq!(reply.rcode, rcode);
            let got = agent.settled(&format!("dst_ip={server}&verdict={}", verdict.as_str()));
            assert_eq!((got.counts.dns_queries, got.counts.dns_responses), (1, 1));
            assert_eq!(got.flow.src_ip, client_ip);
            let dns = got.dns.clone().unwrap();
            assert_eq!(
                (dns.id, dns.qname.as_str(), dns.qtype.as_str()),
                (reply.id, name, "AAAA")
            );
            assert_eq!(dns.rcode.as_deref(), Some(rcode_name));
            assert_eq!(got.cause, Some(Cause::DnsServerError), "{got:#?}");
            assert!(
                got.reason.ends_with(&format!(
                    ": the DNS server {server} cannot resolve it: it cannot reach its upstream, or refuses this client"
                )),
                "{got:#?}"
            );
        }
    }
}

/// DNS through a real dnsmasq behind a kube-dns-style Service.
#[test]
fn dns_verdicts() {
    let mut node = node("dns");
    let dns_pod = node.add_pod("coredns", "kube-system", 10).unwrap();
    let client = node.add_pod("checkout", "production", 5).unwrap();
    let blocked = node.add_pod("batch", "jobs", 6).unwrap();
    let _dns = lab::start_dns(
        &dns_pod,
        &[(
            "payment-service.production.svc.cluster.local",
            "10.96.0.20".parse().unwrap(),
        )],
    )
    .unwrap();
    let kube_dns: IpAddr = lab::DEFAULT_DNS.into();
    node.add_service(Proto::Udp, kube_dns, 53, sock(dns_pod.ipv4, 53))
        .unwrap();
    node.drop_traffic(Proto::Udp, Some(blocked.ipv4.into()), None, Some(53))
        .unwrap();
    let agent = Agent::start(&node, &[]);
    let server = sock(kube_dns, 53);

    let reply = client
        .dns_query(
            server,
            "payment-service.production.svc.cluster.local.",
            QueryType::A,
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!((reply.rcode, reply.answers), (0, 1));
    let ok = agent.settled(&format!("src_ip={}&verdict=OK,PENDING", client.ipv4));
    assert_eq!(ok.verdict, VerdictKind::Ok);
    assert_eq!(
        (ok.flow.protocol, ok.flow.dst_ip, ok.flow.dst_port),
        (Protocol::Udp, kube_dns, 53)
    );
    assert_eq!((ok.counts.dns_queries, ok.counts.dns_responses), (1, 1));
    let dns = ok.dns.unwrap();
    assert_eq!(dns.id, reply.id);
    assert_eq!(dns.qname, "payment-service.production.svc.cluster.local.");
    assert_eq!(
        (dns.qtype.as_str(), dns.rcode.as_deref()),
        ("A", Some("NOERROR"))
    );

    let reply = client
        .dns_query(
            server,
            "paymnt-service.production.svc.cluster.local.",
            QueryType::A,
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(reply.rcode, 3);
    let nxdomain = agent.settled("verdict=NXDOMAIN");
    assert_eq!(
        (nxdomain.counts.dns_queries, nxdomain.counts.dns_responses),
        (1, 1)
    );
    let dns = nxdomain.dns.unwrap();
    assert_eq!(
        (dns.qname.as_str(), dns.rcode.as_deref()),
        (
            "paymnt-service.production.svc.cluster.local.",
            Some("NXDOMAIN")
        )
    );

    // Port 53 blocked: the query goes out, nothing comes back.
    let err = blocked
        .dns_query(
            server,
            "payment-service.production.svc.cluster.local.",
            QueryType::A,
            Duration::from_millis(1500),
        )
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ),
        "{err}"
    );
    let timeout = agent.settled(&format!("src_ip={}", blocked.ipv4));
    assert_eq!(timeout.verdict, VerdictKind::DnsTimeout);
    assert_eq!(
        (timeout.counts.dns_queries, timeout.counts.dns_responses),
        (1, 0)
    );
    assert_eq!(timeout.dns.unwrap().rcode, None);

    // The libc resolver with the pod's search path: the expansions of a wrong name are
    // no failures, the lookup is (on its last name, naming what was asked).
    let output = client
        .command("getent")
        .args(["hosts", "paymnt-service"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "getent found a wrong name");
    let expanded = [
        "paymnt-service.production.svc.cluster.local.",
        "paymnt-service.svc.cluster.local.",
        "paymnt-service.cluster.local.",
    ];
    let qnames = |verdicts: &[Verdict], keep: &dyn Fn(&Verdict) -> bool| -> Vec<String> {
        verdicts
            .iter()
            .filter(|v| keep(v))
            .filter_map(|v| v.dns.as_ref().map(|d| d.qname.clone()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (expansions, mut failed) = loop {
        let verdicts = agent.verdicts(&format!("src_ip={}&protocol=udp", client.ipv4));
        let expansions = qnames(&verdicts, &|v| v.cause == Some(Cause::SearchPathExpansion));
        let failed = qnames(&verdicts, &|v| v.verdict == VerdictKind::Nxdomain);
        // Both lookups (AAAA then A) must be in before the check, not just the first.
        let done = expanded.iter().all(|e| expansions.iter().any(|n| n == e))
            && failed.iter().filter(|n| *n == "paymnt-service.").count() == 2;
        if done || Instant::now() > deadline {
            break (expansions, failed);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for expected in expanded {
        assert!(
            expansions.iter().any(|n| n == expected),
            "{expected} not in {expansions:?}"
        );
    }
    // The single query of the name above was a lookup of its own, which failed.
    failed.sort_unstable();
    assert_eq!(
        failed,
        [
            "paymnt-service.",
            "paymnt-service.",
            "paymnt-service.production.svc.cluster.local."
        ],
        "AAAA then A: two lookups of paymnt-service failed"
    );
    // The DNS server's own veth never adds a second copy of any flow.
    assert!(
        agent
            .verdicts(&format!("src_ip={}", dns_pod.ipv4))
            .is_empty()
    );
}

/// New pod veths are attached within a second; removed ones are forgotten.
#[test]
fn interfaces_follow_pods_coming_and_going() {
    let mut node = node("churn");
    let first = node.add_pod("first", "default", 5).unwrap();
    let agent = Agent::start(&node, &[]);
    let names = |agent: &Agent| {
        agent
            .interfaces()
            .into_iter()
            .map(|i| i.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&agent), std::slice::from_ref(&first.host_if));

    let created = Instant::now();
    let second = node.add_pod("second", "default", 6).unwrap();
    loop {
        if names(&agent).contains(&second.host_if) {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "not attached within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    expect_err(
        second.connect_tcp(sock(first.ipv4, 7), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    assert_eq!(&*agent.settled("port=7").interface, second.host_if);

    node.remove_pod(&second).unwrap();
    let removed = Instant::now();
    while names(&agent).contains(&second.host_if) {
        assert!(
            removed.elapsed() < Duration::from_secs(1),
            "not forgotten within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(names(&agent), std::slice::from_ref(&first.host_if));
}

/// Without TCX: clsact filters, removed again on SIGTERM.
#[test]
fn clsact_mode_attaches_and_detaches_cleanly() {
    let mut node = node("clsact");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let mut agent = Agent::start(&node, &["--attach-mode", "clsact"]);
    let interfaces = agent.interfaces();
    assert_eq!(interfaces.len(), 2);
    assert!(interfaces.iter().all(|i| i.mode == AttachMode::Clsact));
    let filters = |dev: &str| {
        let out = node
            .command("tc")
            .args(["filter", "show", "dev", dev, "ingress"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        filters(&client.host_if).contains("netprobe_ingress"),
        "{}",
        filters(&client.host_if)
    );

    expect_err(
        client.connect_tcp(sock(server.ipv4, 9), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    let refused = agent.settled("port=9");
    assert_eq!(
        (refused.verdict, counts(&refused)),
        (VerdictKind::Refused, (1, 0, 1, 0))
    );

    let took = agent.stop();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    for pod in [&client, &server] {
        assert_eq!(
            filters(&pod.host_if).trim(),
            "",
            "filters left on {}",
            pod.host_if
        );
    }
}

/// The API of a live agent rejects bad parameters with a JSON error; `--kernel-log`
/// forwards the kernel program's own log.
#[test]
fn live_api_rejects_bad_parameters_and_kernel_log_flows() {
    let mut node = node("api");
    let client = node.add_pod("client", "default", 5).unwrap();
    let agent = Agent::start(&node, &["--kernel-log"]);
    for query in [
        "verdict=TIMEOUTS",
        "src_ip=10.0.0.300",
        "since=yesterday",
        "limit=0",
        "colour=blue",
    ] {
        let response = ureq::get(&format!("{}/v1/verdicts?{query}", agent.base))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value =
            serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{query}: {body}"
        );
    }
    let health: serde_json::Value = agent.get("/healthz");
    assert_eq!(health, serde_json::json!({"status": "ok"}));

    expect_err(
        client.connect_tcp(sock(lab::GATEWAY_V4, 1), Duration::from_secs(2)),
        io::ErrorKind::ConnectionRefused,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
        if log.contains("event kind 1 on ifindex") {
            break;
        }
        assert!(Instant::now() < deadline, "no kernel log line in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
