//! Pods behind one bridge (flannel's `cni0`, podman's and Docker's bridges): their veths
//! are bridge ports, the node has no route to any pod's own address, and two pods of the
//! bridge talk without the node routing. A connection is still one flow counted at the
//! client's veth, and a SYN that went into a silent server pod is told from one that never
//! got there, without a cluster.

use std::{io, net::IpAddr, time::Duration};

use lab::Capture;
use probe_agent::model::{Cause, VerdictKind};

use crate::e2e::{Agent, counts, node, sock};

/// Within 1.5 s, the SYN at 0 s and its retransmission at 1 s (`--syn-timeout 1s`).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Dropped by the server pod's own firewall.
const POD_DROPS: u16 = 8443;

#[test]
fn pods_behind_a_bridge_are_judged_like_routed_ones() {
    let mut node = node("brdg");
    let client = node.add_bridged_pod("client", "default", 5).unwrap();
    let server = node.add_bridged_pod("server", "default", 9).unwrap();
    // Sends no IP packet ever: nothing but its veth's position tells it is here.
    let quiet = node.add_bridged_pod("quiet", "default", 11).unwrap();
    let _listener = server.listen_tcp(80).unwrap();
    quiet.drop_tcp_in(POD_DROPS).unwrap();
    let agent = Agent::start(&node, &["--interfaces", "auto"]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let to = IpAddr::V4(server.ipv4);

    let quiet_ip = IpAddr::V4(quiet.ipv4);
    let silent = client.connect_tcp(sock(quiet_ip, POD_DROPS), CONNECT_TIMEOUT);
    assert_eq!(silent.unwrap_err().kind(), io::ErrorKind::TimedOut);
    let silent = agent.settled(&format!("dst_ip={quiet_ip}&port={POD_DROPS}"));
    assert_eq!(
        (silent.verdict, silent.cause),
        (VerdictKind::Timeout, Some(Cause::ServerSilent)),
        "{silent:#?}"
    );

    client
        .connect_tcp(sock(to, 80), Duration::from_secs(2))
        .expect("the healthy connection");
    let ok = agent.settled(&format!("dst_ip={to}&port=80"));
    assert_eq!((ok.verdict, ok.cause), (VerdictKind::Ok, None), "{ok:#?}");
    assert_eq!(counts(&ok), (1, 1, 0, 0), "{ok:#?}");
    assert_eq!(&*ok.interface, client.host_if);

    let refused = client.connect_tcp(sock(to, 81), Duration::from_secs(2));
    assert_eq!(
        refused.unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    let refused = agent.settled(&format!("dst_ip={to}&port=81"));
    assert_eq!(refused.verdict, VerdictKind::Refused, "{refused:#?}");
    assert_eq!(refused.cause, Some(Cause::NothingListening), "{refused:#?}");
    assert_eq!(counts(&refused), (1, 0, 1, 0), "{refused:#?}");

    let seen = capture
        .finish(&[
            "tcp.flags.syn == 1 && tcp.flags.ack == 0",
            &format!("ip.src == {to} && tcp.flags.syn == 1 && tcp.flags.ack == 1"),
            &format!("ip.src == {to} && tcp.flags.reset == 1"),
        ])
        .unwrap();
    let (syn, syn_ack, rst) = [&ok, &refused, &silent]
        .iter()
        .fold((0, 0, 0), |(s, a, r), v| {
            (s + v.counts.syn, a + v.counts.syn_ack, r + v.counts.rst)
        });
    assert_eq!(seen, [syn as usize, syn_ack as usize, rst as usize]);
    // Three connections, the first to a pod that never sent a packet,, none counted again from the server's veth.
    assert_eq!(agent.verdicts("protocol=tcp").len(), 3);
}

/// A bridge announces its ports' changes (state, cost, learning) in link messages of its
/// own family, which carry no device kind: they neither take a port's veth away from
/// `auto` nor attach it again.
#[test]
fn a_bridge_ports_own_link_messages_leave_its_attachment_alone() {
    let mut node = node("brmsg");
    let client = node.add_bridged_pod("client", "default", 5).unwrap();
    let agent = Agent::start(&node, &["--interfaces", "auto"]);
    let attached_at = |agent: &Agent, name: &str| {
        agent
            .interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| i.attached_at)
    };
    let first = attached_at(&agent, &client.host_if).expect("the client's veth attached");
    for cost in [7, 9, 11] {
        let status = node
            .command("ip")
            .args([
                "link",
                "set",
                "dev",
                &client.host_if,
                "type",
                "bridge_slave",
            ])
            .args(["cost", &cost.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Link messages are read in order: once the next pod's veth is attached, the
    // bridge's messages before it were read too.
    let second = node.add_bridged_pod("second", "default", 6).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while attached_at(&agent, &second.host_if).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "second pod not attached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(attached_at(&agent, &client.host_if), Some(first));
}
