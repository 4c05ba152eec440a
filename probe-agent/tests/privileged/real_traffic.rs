//! Patterns real nodes carry that a lab script rarely does: a Service whose targetPort
//! is above the ephemeral range, hairpin through a Service, a 5-tuple reused by a new
//! connection, one DNS socket for many queries, DNS over TCP. One flow per connection,
//! keyed by what the client asked for, with exact counts.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use lab::{self, Capture, Proto};
use probe_agent::model::{Cause, Protocol, VerdictKind};

use crate::e2e::{Agent, RcodeServer, counts, node, sock};

/// A Service 10.96.0.40:80 → pod:50051 (above every client port): one flow at the
/// client's ClusterIP, its backend named, and a RST from the backend is one REFUSED
/// flow, not a second one with the ends swapped at the server's veth.
#[test]
fn a_service_with_a_high_target_port_is_one_flow() {
    let mut node = node("hiport");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("grpc", "default", 9).unwrap();
    let _grpc = server.listen_tcp(50051).unwrap();
    let vip: IpAddr = "10.96.0.40".parse().unwrap();
    let closed: IpAddr = "10.96.0.41".parse().unwrap();
    node.add_service(Proto::Tcp, vip, 80, sock(server.ipv4, 50051))
        .unwrap();
    node.add_service(Proto::Tcp, closed, 80, sock(server.ipv4, 50052))
        .unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();

    client
        .connect_tcp(sock(vip, 80), Duration::from_secs(2))
        .unwrap();
    let ok = agent.settled(&format!("dst_ip={vip}"));
    assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
    assert_eq!(counts(&ok), (1, 1, 0, 0));
    // What the client's veth carried, by tshark.
    let carried = capture
        .finish(&[
            &format!("ip.dst == {vip} && tcp.flags.syn == 1 && tcp.flags.ack == 0"),
            &format!("ip.src == {vip} && tcp.flags.syn == 1 && tcp.flags.ack == 1"),
        ])
        .unwrap();
    assert_eq!(
        carried,
        [ok.counts.syn as usize, ok.counts.syn_ack as usize]
    );
    assert_eq!(ok.backend, Some(sock(server.ipv4, 50051)));
    assert_eq!(&*ok.interface, client.host_if);

    assert!(
        client
            .connect_tcp(sock(closed, 80), Duration::from_secs(2))
            .is_err()
    );
    let refused = agent.settled(&format!("dst_ip={closed}"));
    assert_eq!(refused.verdict, VerdictKind::Refused, "{refused:#?}");
    assert_eq!(counts(&refused), (1, 0, 1, 0));
    assert_eq!(refused.backend, Some(sock(server.ipv4, 50052)));
    let all = agent.verdicts("protocol=tcp");
    assert_eq!(all.len(), 2, "{all:#?}");
}

/// A pod reaching itself through its Service, masqueraded to the node (kube-proxy's
/// hairpin): one flow, counted once, paired across the SNAT through conntrack.
#[test]
fn hairpin_through_a_service_is_one_flow() {
    hairpin("hairpin", false);
}

/// The same over IPv6.
#[test]
fn hairpin_over_ipv6_is_one_flow() {
    hairpin("hairpin6", true);
}

fn hairpin(tag: &str, v6: bool) {
    let mut node = node(tag);
    let pod = node.add_pod("web", "default", 7).unwrap();
    let _web = pod.listen_tcp(8080).unwrap();
    let (ip, vip, family) = if v6 {
        (
            IpAddr::from(pod.ipv6),
            "fd00:96::50".parse().unwrap(),
            "ip6",
        )
    } else {
        (IpAddr::from(pod.ipv4), "10.96.0.50".parse().unwrap(), "ip")
    };
    let (daddr, saddr) = if v6 {
        ("ipv6.dst", "ipv6.src")
    } else {
        ("ip.dst", "ip.src")
    };
    node.add_service(Proto::Tcp, vip, 80, sock(ip, 8080))
        .unwrap();
    node.nft(&format!(
        "table {family} hairpin {{\n chain post {{\n  type nat hook postrouting priority 100;\n  \
         {family} saddr {ip} {family} daddr {ip} masquerade\n }}\n}}\n"
    ))
    .unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &pod).unwrap();
    pod.connect_tcp(sock(vip, 80), Duration::from_secs(2))
        .unwrap();
    let ok = agent.settled(&format!("dst_ip={vip}"));
    assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
    assert_eq!(counts(&ok), (1, 1, 0, 0));
    // The pod's veth carried the SYN twice (out to the ClusterIP, back in masqueraded),
    // and the SYN-ACK twice: one connection, counted once. (Not counting the copies that
    // IPv6 redirects quote: the node sends one for each packet it hairpins.)
    let tcp = "!icmp && !icmpv6 && tcp.flags.syn == 1";
    let carried = capture
        .finish(&[
            &format!("{tcp} && tcp.flags.ack == 0"),
            &format!("{tcp} && tcp.flags.ack == 0 && {daddr} == {vip}"),
            &format!("{tcp} && tcp.flags.ack == 1"),
            &format!("{tcp} && tcp.flags.ack == 1 && {saddr} == {vip}"),
        ])
        .unwrap();
    assert_eq!(carried, [2, 1, 2, 1]);
    assert_eq!(ok.flow.src_ip, ip);
    assert_eq!(ok.backend, Some(sock(ip, 8080)));
    let all = agent.verdicts("protocol=tcp");
    assert_eq!(all.len(), 1, "{all:#?}");
}

/// A client on another node reaching a NodePort, DNATed to a pod here and SNATed to the
/// node (externalTrafficPolicy: Cluster): the pod's veth sees only the node's address.
/// One flow, keyed by what the client asked for (node:30080), the backend named; a
/// backend whose firewall drops the SYNs is one TIMEOUT flow, the server silent.
#[test]
fn a_nodeport_with_snat_is_keyed_by_what_the_client_asked_for() {
    let mut node = node("nodeport");
    let server = node.add_pod("web", "default", 7).unwrap();
    let far = node.add_remote_host("far", 20).unwrap();
    let _web = server.listen_tcp(8080).unwrap();
    let _silent = server.listen_tcp(8081).unwrap();
    server.drop_tcp_in(8081).unwrap();
    let node_ip = IpAddr::from(lab::GATEWAY_V4);
    node.add_service(Proto::Tcp, node_ip, 30080, sock(server.ipv4, 8080))
        .unwrap();
    node.add_service(Proto::Tcp, node_ip, 30081, sock(server.ipv4, 8081))
        .unwrap();
    node.nft(&format!(
        "table ip nodeport {{\n chain post {{\n  type nat hook postrouting priority 100;\n  \
         ip saddr {} ip daddr {} masquerade\n }}\n}}\n",
        far.ipv4, server.ipv4
    ))
    .unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &server).unwrap();

    far.connect_tcp(sock(node_ip, 30080), Duration::from_secs(2))
        .unwrap();
    let ok = agent.settled("port=30080");
    assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
    assert_eq!(
        (ok.flow.src_ip, ok.flow.dst_ip, ok.flow.dst_port),
        (IpAddr::from(far.ipv4), node_ip, 30080)
    );
    assert_eq!(counts(&ok), (1, 1, 0, 0));
    assert_eq!(ok.backend, Some(sock(server.ipv4, 8080)));
    assert_eq!(&*ok.interface, server.host_if);

    // Its SYN at 0 s and the retransmission at 1 s.
    assert!(
        far.connect_tcp(sock(node_ip, 30081), Duration::from_millis(1500))
            .is_err()
    );
    let silent = agent.settled("port=30081");
    assert_eq!(
        (silent.verdict, silent.cause),
        (VerdictKind::Timeout, Some(Cause::ServerSilent)),
        "{silent:#?}"
    );
    assert_eq!(silent.flow.src_ip, IpAddr::from(far.ipv4));
    assert_eq!(counts(&silent), (2, 0, 0, 0));
    assert_eq!(silent.backend, Some(sock(server.ipv4, 8081)));

    // The pod's veth carried them from the node's address, SNATed.
    let carried = capture
        .finish(&[
            &format!("ip.src == {node_ip} && tcp.flags.syn == 1 && tcp.flags.ack == 0"),
            "tcp.flags.syn == 1 && tcp.flags.ack == 1",
        ])
        .unwrap();
    assert_eq!(carried, [3, 1]);
    let all = agent.verdicts("protocol=tcp");
    assert_eq!(all.len(), 2, "{all:#?}");
}

/// A client that sends a SYN and then its own RST before any answer (a scanner, a
/// userspace stack giving up; hping3 here) aborted: ABORTED, no failure of the server,
/// and not REFUSED, which is the server's RST.
#[test]
fn a_client_rst_before_any_answer_is_aborted_not_refused() {
    let mut node = node("abort");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let _silent = server.listen_tcp(7000).unwrap();
    server.drop_tcp_in(7000).unwrap();
    // hping3 waits a second for an answer before it exits and the RST can follow, so
    // the SYN must not time out in between: that would be a TIMEOUT, rightly.
    let agent = Agent::start(&node, &["--syn-timeout", "30s"]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    for flag in ["-S", "-R"] {
        let out = client
            .command("hping3")
            .args([flag, "-c", "1", "-k", "-s", "40000", "-p", "7000"])
            .arg(server.ipv4.to_string())
            .output()
            .expect("hping3 (`cargo xtask bootstrap` installs it)");
        // hping3 exits 1 when nothing answered, which is the point here.
        assert!(out.status.code().is_some(), "{out:?}");
    }
    let flow = agent.settled("port=7000");
    assert_eq!(
        (flow.verdict, flow.cause),
        (VerdictKind::Aborted, None),
        "{flow:#?}"
    );
    assert_eq!(counts(&flow), (1, 0, 1, 0));
    let carried = capture
        .finish(&[
            "tcp.dstport == 7000 && tcp.flags.syn == 1",
            "tcp.dstport == 7000 && tcp.flags.reset == 1",
            "tcp.srcport == 7000",
        ])
        .unwrap();
    assert_eq!(carried, [1, 1, 0]);
    assert!(!flow.verdict.is_failure());
}

/// Two connections from one fixed source port (the first aborted, so no TIME_WAIT):
/// the second is a new connection with its own counts and verdict, told by its ISN.
#[test]
fn a_reused_five_tuple_is_a_new_connection() {
    let mut node = node("reuse");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let _listener = server.listen_tcp(8080).unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let to = sock(server.ipv4, 8080);
    let from = sock(client.ipv4, 41000);
    for _ in 0..2 {
        client.in_netns(move || {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .unwrap();
            socket.set_reuse_address(true).unwrap();
            socket.bind(&from.into()).unwrap();
            socket
                .connect_timeout(&to.into(), Duration::from_secs(2))
                .unwrap();
            // Closed with a RST: the port is free at once for the next connection.
            socket.set_linger(Some(Duration::ZERO)).unwrap();
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metric = verdicts_counted(&agent, "OK");
        if metric >= 2.0 {
            assert_eq!(metric, 2.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "OK counted {metric} times"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let flow = agent.settled_when("port=8080", |v| v.counts.rst > 0);
    assert_eq!(flow.flow.src_port, 41000);
    assert_eq!(flow.verdict, VerdictKind::Ok);
    // The second connection's own counts: its SYN, SYN-ACK and the client's RST.
    assert_eq!(counts(&flow), (1, 1, 1, 0), "{flow:#?}");
    // Two of each on the wire, two distinct initial sequence numbers.
    let carried = capture
        .finish(&[
            "tcp.srcport == 41000 && tcp.flags.syn == 1 && tcp.flags.ack == 0",
            "tcp.dstport == 41000 && tcp.flags.syn == 1 && tcp.flags.ack == 1",
            "tcp.srcport == 41000 && tcp.flags.reset == 1",
        ])
        .unwrap();
    assert_eq!(carried, [2, 2, 2]);
}

/// `netprobe_verdicts_total` of `verdict`, summed over every label set.
fn verdicts_counted(agent: &Agent, verdict: &str) -> f64 {
    agent
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("netprobe_verdicts_total{")
                && l.contains(&format!("verdict=\"{verdict}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// tshark's count of DNS queries and responses, over UDP and TCP.
const DNS_CARRIED: [&str; 2] = ["dns.flags.response == 0", "dns.flags.response == 1"];

/// The queries and responses of every flow that `query` selects, summed.
fn dns_counted(agent: &Agent, query: &str) -> Vec<usize> {
    let flows = agent.verdicts(query);
    vec![
        flows.iter().map(|f| f.counts.dns_queries as usize).sum(),
        flows.iter().map(|f| f.counts.dns_responses as usize).sum(),
    ]
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

/// A resolver that keeps one socket (c-ares, a forwarder): SERVFAIL, then NOERROR on
/// the same socket. Each query is judged on its own and the SERVFAIL is counted once.
#[test]
fn queries_on_one_socket_are_judged_one_by_one() {
    let mut node = node("pooled");
    let dns_pod = node.add_pod("dns", "kube-system", 10).unwrap();
    let client = node.add_pod("client", "default", 5).unwrap();
    let _server = RcodeServer::start(&dns_pod);
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let server = sock(dns_pod.ipv4, 53);
    let answers = client.in_netns(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut rcodes = Vec::new();
        for (id, name) in [
            (1, "servfail.example."),
            (2, "ok.example."),
            (3, "ok.example."),
        ] {
            socket.send_to(&query(id, name), server).unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = socket.recv_from(&mut buf).unwrap();
            rcodes.push(Message::from_vec(&buf[..n]).unwrap().metadata.response_code);
            std::thread::sleep(Duration::from_millis(20));
        }
        rcodes
    });
    assert_eq!(
        answers,
        [
            ResponseCode::ServFail,
            ResponseCode::NoError,
            ResponseCode::NoError
        ]
    );
    let flow = agent.settled_when(&format!("dst_ip={}&protocol=udp", dns_pod.ipv4), |v| {
        v.counts.dns_responses == 3
    });
    assert_eq!(flow.verdict, VerdictKind::Ok, "{flow:#?}");
    assert_eq!((flow.counts.dns_queries, flow.counts.dns_responses), (3, 3));
    assert_eq!(capture.finish(&DNS_CARRIED).unwrap(), [3, 3]);
    assert_eq!(verdicts_counted(&agent, "SERVFAIL"), 1.0);
    assert_eq!(verdicts_counted(&agent, "OK"), 2.0);
}

/// A forwarder (CoreDNS upstream, NodeLocal DNSCache) always has a query in flight on its
/// socket: each answer is judged when it comes, and a SERVFAIL in the middle is counted
/// once and does not stay the flow's verdict.
#[test]
fn a_busy_forwarder_socket_is_judged_answer_by_answer() {
    let mut node = node("fwd");
    let dns_pod = node.add_pod("dns", "kube-system", 10).unwrap();
    let client = node.add_pod("client", "default", 5).unwrap();
    let _server = RcodeServer::start(&dns_pod);
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let server = sock(dns_pod.ipv4, 53);
    let names = ["ok.a.", "ok.b.", "servfail.c.", "ok.d.", "ok.e.", "ok.f."];
    let rcodes = client.in_netns(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // All in flight before the first answer: the socket is never idle.
        for (id, name) in (1..).zip(names) {
            socket.send_to(&query(id, name), server).unwrap();
        }
        let mut buf = [0u8; 512];
        (0..names.len())
            .map(|_| {
                let (n, _) = socket.recv_from(&mut buf).unwrap();
                Message::from_vec(&buf[..n]).unwrap().metadata.response_code
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(rcodes[2], ResponseCode::ServFail);
    let flow = agent.settled_when(&format!("dst_ip={}&protocol=udp", dns_pod.ipv4), |v| {
        v.counts.dns_responses == 6
    });
    assert_eq!(flow.verdict, VerdictKind::Ok, "{flow:#?}");
    assert_eq!(flow.dns.as_ref().unwrap().qname, "ok.f.");
    assert_eq!(capture.finish(&DNS_CARRIED).unwrap(), [6, 6]);
    assert_eq!(dns_counted(&agent, "protocol=udp"), [6, 6]);
    assert_eq!(verdicts_counted(&agent, "SERVFAIL"), 1.0);
    let events = agent.flow_events(&format!("dst_ip={}", dns_pod.ipv4));
    assert!(
        events.iter().any(|e| e.verdict == VerdictKind::Servfail),
        "{events:#?}"
    );
}

/// Node.js's resolver (c-ares) sends concurrent queries on one UDP socket: one SERVFAIL
/// among NOERRORs. One flow; each query judged on its own, the SERVFAIL counted once and
/// not the flow's verdict once later answers came.
#[test]
fn c_ares_queries_on_its_one_socket_are_judged_one_by_one() {
    let mut node = node("cares");
    let dns_pod = node.add_pod("dns", "kube-system", 10).unwrap();
    let client = node.add_pod("client", "default", 5).unwrap();
    let _server = RcodeServer::start(&dns_pod);
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let script = format!(
        "const r = new (require('dns').promises.Resolver)({{ timeout: 2000, tries: 1 }});\n\
         r.setServers(['{}']);\n\
         (async () => {{\n\
           const names = ['ok.example', 'servfail.example', 'ok.example', 'ok.example'];\n\
           const codes = await Promise.all(names.map((name) =>\n\
             r.resolve4(name).then(() => 'answered', (e) => e.code)));\n\
           codes.forEach((code) => console.log(code));\n\
         }})();\n",
        dns_pod.ipv4
    );
    let out = client
        .command(&lab::exec::tool("node").to_string_lossy())
        .args(["-e", &script])
        .output()
        .expect("running node: Node.js is on every machine of this kind");
    assert!(out.status.success(), "{out:?}");
    // NOERROR without an A record is ENODATA to c-ares.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["ENODATA", "ESERVFAIL", "ENODATA", "ENODATA"]
    );
    let flow = agent.settled_when(&format!("dst_ip={}&protocol=udp", dns_pod.ipv4), |v| {
        v.counts.dns_responses == 4
    });
    assert_eq!(flow.verdict, VerdictKind::Ok, "{flow:#?}");
    let carried = capture
        .finish(&[
            DNS_CARRIED[0],
            DNS_CARRIED[1],
            "dns.flags.rcode == 2",
            "dns.flags.response == 1 && dns.flags.rcode == 0",
        ])
        .unwrap();
    assert_eq!(carried, [4, 4, 1, 3]);
    let flows = agent.verdicts("protocol=udp");
    assert_eq!(flows.len(), 1, "one socket, one flow: {flows:#?}");
    assert_eq!(dns_counted(&agent, "protocol=udp"), [4, 4]);
    // How often OK is reached depends on how c-ares interleaves sends and answers.
    assert_eq!(verdicts_counted(&agent, "SERVFAIL"), 1.0);
}

/// busybox's nslookup asks for A and AAAA at once, on one socket: two queries in
/// flight on one flow, each matched to its own answer.
#[test]
fn busybox_asks_a_and_aaaa_at_once_on_one_socket() {
    let mut node = node("bbox");
    let dns_pod = node.add_pod("dns", "kube-system", 10).unwrap();
    let client = node.add_pod("client", "default", 5).unwrap();
    let _server = RcodeServer::start(&dns_pod);
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let lookup = |name: &str| {
        client
            .command(&lab::exec::tool("busybox").to_string_lossy())
            .args(["nslookup", name, &dns_pod.ipv4.to_string()])
            .output()
            .unwrap()
    };
    let ok = lookup("ok.example.");
    assert!(ok.status.success(), "{ok:?}");
    let flow = agent.settled_when(&format!("dst_ip={}&protocol=udp", dns_pod.ipv4), |v| {
        v.counts.dns_responses == 2
    });
    assert_eq!(flow.verdict, VerdictKind::Ok, "{flow:#?}");
    assert_eq!((flow.counts.dns_queries, flow.counts.dns_responses), (2, 2));
    let refused = lookup("refused.example.");
    assert!(!refused.status.success(), "{refused:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let found = agent
            .verdicts("protocol=udp")
            .into_iter()
            .find(|v| v.verdict == VerdictKind::DnsRefused);
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            agent.verdicts("")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(failed.dns.unwrap().qname, "refused.example.");
    let carried = capture.finish(&DNS_CARRIED).unwrap();
    assert_eq!(carried, [4, 4]);
    assert_eq!(dns_counted(&agent, "protocol=udp"), carried);
    assert_eq!(agent.verdicts("protocol=udp").len(), 2);
}

/// `dig +tcp`: DNS over TCP is DNS, its messages framed from the segments: a NOERROR
/// and an NXDOMAIN, each on its connection, with the name and rcode.
#[test]
fn dns_over_tcp_is_dns() {
    let mut node = node("dnstcp");
    let dns_pod = node.add_pod("coredns", "kube-system", 10).unwrap();
    let client = node.add_pod("client", "default", 5).unwrap();
    let _dns = lab::start_dns(
        &dns_pod,
        &[(
            "db.default.svc.cluster.local",
            "10.96.0.60".parse().unwrap(),
        )],
    )
    .unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let server: SocketAddr = sock(dns_pod.ipv4, 53);
    for (name, rcode) in [
        ("db.default.svc.cluster.local.", "NOERROR"),
        ("nope.default.svc.cluster.local.", "NXDOMAIN"),
    ] {
        let out = client
            .command("dig")
            .args([
                "+tcp",
                "+tries=1",
                "+time=2",
                &format!("@{}", server.ip()),
                name,
                "A",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("status: {rcode}")), "{text}");
        let expected = if rcode == "NOERROR" {
            VerdictKind::Ok
        } else {
            VerdictKind::Nxdomain
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let flow = loop {
            let found = agent
                .verdicts("protocol=tcp&port=53")
                .into_iter()
                .find(|v| v.dns.as_ref().is_some_and(|d| d.qname == name));
            if let Some(flow) = found.filter(|f| f.verdict == expected) {
                break flow;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {:#?}",
                agent.verdicts("")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(flow.flow.protocol, Protocol::Tcp);
        assert_eq!((flow.counts.dns_queries, flow.counts.dns_responses), (1, 1));
        assert_eq!((flow.counts.syn, flow.counts.syn_ack), (1, 1));
        assert_eq!(flow.dns.unwrap().rcode.as_deref(), Some(rcode));
    }
    assert_eq!(capture.finish(&DNS_CARRIED).unwrap(), [2, 2]);
    assert_eq!(dns_counted(&agent, "protocol=tcp&port=53"), [2, 2]);
}

/// A pod's resolv.conf, as `ip netns exec` shows it to programs run in the pod.
fn set_resolv_conf(pod: &lab::Pod, options: &str) {
    let path = std::path::Path::new(lab::ETC_NETNS_DIR)
        .join(&pod.netns)
        .join("resolv.conf");
    std::fs::write(
        path,
        format!(
            "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions {options}\n",
            lab::DEFAULT_DNS
        ),
    )
    .unwrap();
}

/// A DNS server behind the kube-dns ClusterIP (UDP and TCP) answering `big.default…`
/// with 40 A records: more than fits in 512 bytes of UDP.
fn dns_with_a_big_answer(node: &mut lab::Node) -> (lab::DnsServer, lab::Pod) {
    let dns_pod = node.add_pod("coredns", "kube-system", 10).unwrap();
    let records: Vec<(&str, IpAddr)> = (1..=40)
        .map(|i| {
            (
                "big.default.svc.cluster.local",
                IpAddr::from([10, 1, 0, i as u8]),
            )
        })
        .collect();
    let server = lab::start_dns(&dns_pod, &records).unwrap();
    let vip: IpAddr = lab::DEFAULT_DNS.into();
    node.add_service(Proto::Udp, vip, 53, sock(dns_pod.ipv4, 53))
        .unwrap();
    node.add_service(Proto::Tcp, vip, 53, sock(dns_pod.ipv4, 53))
        .unwrap();
    (server, dns_pod)
}

fn getent(pod: &lab::Pod, name: &str) -> std::process::Output {
    pod.command("getent")
        .args(["ahostsv4", name])
        .output()
        .unwrap()
}

/// glibc with an answer too big for UDP: TC, then the same query over TCP. The UDP
/// lookup is no final OK on its own: its verdict is its retry's.
#[test]
fn glibc_retries_a_truncated_answer_over_tcp() {
    let mut node = node("tcfall");
    let (_dns, _) = dns_with_a_big_answer(&mut node);
    let client = node.add_pod("client", "default", 5).unwrap();
    set_resolv_conf(&client, "ndots:5 timeout:1 attempts:1");
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let out = getent(&client, "big.default.svc.cluster.local.");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 40 * 3);
    let udp = agent.settled("protocol=udp&port=53");
    assert_eq!(udp.verdict, VerdictKind::Ok, "{udp:#?}");
    assert!(
        udp.reason
            .ends_with("over TCP after a truncated UDP answer"),
        "{}",
        udp.reason
    );
    let tcp = agent.settled_when("protocol=tcp&port=53", |v| v.counts.dns_responses > 0);
    assert_eq!(tcp.verdict, VerdictKind::Ok, "{tcp:#?}");
    assert_eq!((tcp.counts.dns_queries, tcp.counts.dns_responses), (1, 1));
    let dns = tcp.dns.unwrap();
    assert_eq!(
        (dns.qname.as_str(), dns.rcode.as_deref()),
        ("big.default.svc.cluster.local.", Some("NOERROR"))
    );
    let carried = capture
        .finish(&[
            "udp && dns.flags.response == 0",
            "udp && dns.flags.response == 1",
            "tcp && dns.flags.response == 0",
            "tcp && dns.flags.response == 1",
        ])
        .unwrap();
    let counted = [
        dns_counted(&agent, "protocol=udp&port=53"),
        dns_counted(&agent, "protocol=tcp&port=53"),
    ]
    .concat();
    assert_eq!(carried, counted);
}

/// A client that keeps a truncated answer and never retries over TCP (`dig +ignore`,
/// without EDNS so 512 bytes is the limit;
/// musl before 1.2.4 does the same): answered, not a DNS failure.
#[test]
fn a_client_that_keeps_a_truncated_answer_was_answered() {
    let mut node = node("tckeep");
    let (_dns, _) = dns_with_a_big_answer(&mut node);
    let client = node.add_pod("client", "default", 5).unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let out = client
        .command("dig")
        .args([
            "+ignore",
            "+noedns",
            "+tries=1",
            "+time=2",
            &format!("@{}", lab::DEFAULT_DNS),
            "big.default.svc.cluster.local.",
            "A",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status: NOERROR") && text.contains(" tc"),
        "{text}"
    );
    // Pending until --dns-timeout (1 s) has passed without a retry.
    let udp = agent.settled("protocol=udp&port=53");
    assert_eq!(
        (udp.verdict, udp.cause),
        (VerdictKind::Ok, None),
        "{udp:#?}"
    );
    assert!(
        udp.reason.contains("truncated (TC)") && udp.reason.contains("did not retry"),
        "{}",
        udp.reason
    );
    assert_eq!((udp.counts.dns_queries, udp.counts.dns_responses), (1, 1));
    let carried = capture
        .finish(&["tcp.port == 53", "udp && dns.flags.truncated == 1"])
        .unwrap();
    assert_eq!(carried, [0, 1]);
    assert!(agent.verdicts("protocol=tcp").is_empty());
}

/// The same lookup where only UDP 53 is allowed (a very common policy mistake): the
/// retry over TCP cannot connect, and the lookup fails with that cause.
#[test]
fn a_truncated_answer_whose_tcp_retry_is_blocked_fails_the_lookup() {
    let mut node = node("tcblock");
    let (_dns, _) = dns_with_a_big_answer(&mut node);
    let client = node.add_pod("client", "default", 5).unwrap();
    set_resolv_conf(&client, "ndots:5 timeout:1 attempts:1");
    node.drop_traffic(Proto::Tcp, Some(client.ipv4.into()), None, Some(53))
        .unwrap();
    // glibc's connect over TCP has no timeout of its own: the kernel's SYN retries bound it.
    client.in_netns(|| std::fs::write("/proc/sys/net/ipv4/tcp_syn_retries", "1").unwrap());
    let agent = Agent::start(&node, &[]);
    let out = getent(&client, "big.default.svc.cluster.local.");
    assert!(!out.status.success(), "{out:?}");
    let udp = agent.settled("protocol=udp&port=53");
    assert_eq!(udp.verdict, VerdictKind::DnsTimeout, "{udp:#?}");
    assert_eq!(udp.cause, Some(Cause::DnsTcpBlocked), "{udp:#?}");
    assert!(
        udp.reason
            .contains("was truncated (TC) and its retry over TCP"),
        "{}",
        udp.reason
    );
    let tcp = agent.settled("protocol=tcp&port=53");
    assert_eq!(tcp.verdict, VerdictKind::Timeout, "{tcp:#?}");
    assert_eq!(tcp.cause, Some(Cause::DnsTcpBlocked), "{tcp:#?}");
}

/// glibc `options use-vc`: every query over TCP, judged as DNS.
#[test]
fn glibc_use_vc_is_dns_over_tcp() {
    let mut node = node("usevc");
    let (_dns, _) = dns_with_a_big_answer(&mut node);
    let client = node.add_pod("client", "default", 5).unwrap();
    set_resolv_conf(&client, "ndots:5 timeout:1 attempts:1 use-vc");
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let out = getent(&client, "big.default.svc.cluster.local.");
    assert!(out.status.success(), "{out:?}");
    let tcp = agent.settled_when("protocol=tcp&port=53", |v| v.counts.dns_responses > 0);
    assert_eq!(tcp.verdict, VerdictKind::Ok, "{tcp:#?}");
    let carried = capture.finish(&DNS_CARRIED).unwrap();
    assert!(carried[0] >= 1, "{carried:?}");
    assert_eq!(dns_counted(&agent, "protocol=tcp&port=53"), carried);
    assert_eq!(
        tcp.dns.unwrap().qname.as_str(),
        "big.default.svc.cluster.local."
    );
    assert!(agent.verdicts("protocol=udp").is_empty());
}

/// Polls until the flow of `query` has `cause`.
fn wait_for_cause(agent: &Agent, query: &str, cause: Cause) -> probe_agent::model::Verdict {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = agent
            .verdicts(query)
            .into_iter()
            .find(|v| v.cause == Some(cause))
        {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {cause:?} for {query}: {:#?}",
            agent.verdicts(query)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server answers but its SYN-ACKs are dropped on the way back: not a silent server
/// but an answer lost between the veths. Once the drop is lifted, the server's
/// retransmitted SYN-ACK reaches a client that gave up, whose bare RST answers it: a late
/// answer, told apart from a refusal.
#[test]
fn a_lost_syn_ack_and_then_a_late_one() {
    let mut node = node("lostsa");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let _listener = server.listen_tcp(8080).unwrap();
    node.nft(&format!(
        "table inet lostsa {{\n chain forward {{\n  type filter hook forward priority -10;\n  \
         ip saddr {} tcp sport 8080 tcp flags & (syn | ack) == syn | ack drop\n }}\n}}\n",
        server.ipv4
    ))
    .unwrap();
    let agent = Agent::start(&node, &[]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    assert!(
        client
            .connect_tcp(sock(server.ipv4, 8080), Duration::from_millis(1500))
            .is_err()
    );
    let lost = wait_for_cause(&agent, "port=8080", Cause::DroppedBetween);
    assert_eq!(lost.verdict, VerdictKind::Timeout);
    assert!(
        lost.reason.contains("its SYN-ACK left pod")
            || lost.reason.contains("its SYN-ACK left 10.244.0.9"),
        "{}",
        lost.reason
    );
    assert_eq!(
        lost.counts.syn_ack, 0,
        "the client's veth never saw an answer"
    );
    assert_eq!(lost.backend, Some(sock(server.ipv4, 8080)));
    node.nft("delete table inet lostsa\n").unwrap();
    let late = wait_for_cause(&agent, "port=8080", Cause::LateAnswer);
    assert_eq!(late.verdict, VerdictKind::Timeout, "{late:#?}");
    assert!(
        late.counts.syn_ack >= 1 && late.counts.rst == 1,
        "{late:#?}"
    );
    assert!(
        late.reason.contains("after the client had given up"),
        "{}",
        late.reason
    );
    assert_eq!(agent.verdicts("port=8080").len(), 1);
    let carried = capture
        .finish(&[
            "tcp.flags.syn == 1 && tcp.flags.ack == 0",
            "tcp.flags.syn == 1 && tcp.flags.ack == 1",
            "tcp.flags.reset == 1",
        ])
        .unwrap();
    let late = agent.settled("port=8080");
    assert_eq!(
        carried,
        [
            late.counts.syn as usize,
            late.counts.syn_ack as usize,
            late.counts.rst as usize
        ],
        "{late:#?}"
    );
}

/// Four pods whose DNS server is down: each lookup is a DNS failure with a DNS cause,
/// and no node-wide outage is made of them (DNS is no pod-pair TCP evidence).
#[test]
fn a_dns_server_down_for_several_pods_is_no_node_outage() {
    let mut node = node("dnsdown");
    let clients: Vec<lab::Pod> = (0..4)
        .map(|i| {
            node.add_pod(&format!("client{i}"), "default", 20 + i)
                .unwrap()
        })
        .collect();
    // The kube-dns ClusterIP leads nowhere: nothing answers.
    let agent = Agent::start(&node, &[]);
    for client in &clients {
        let _ = client.dns_query(
            sock(lab::DEFAULT_DNS, 53),
            "db.default.svc.cluster.local.",
            lab::QueryType::A,
            Duration::from_millis(300),
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let failed = agent.verdicts("verdict=DNS_TIMEOUT");
        if failed.len() == clients.len() {
            break failed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            agent.verdicts("")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for v in &failed {
        assert_eq!(v.cause, Some(Cause::DnsNoAnswer), "{v:#?}");
    }
    #[derive(serde::Deserialize)]
    struct Body {
        node: Vec<serde_json::Value>,
    }
    let body: Body = agent.get("/v1/verdicts");
    assert!(body.node.is_empty(), "{:#?}", body.node);
}
