//! A SYN between two pods of one node that times out: did it reach the server pod (its
//! veth saw it go in, `SynDelivered`) or was it dropped on the node between the two? The
//! agent on a simulated node, with the SYNs dropped once by the node, once by the
//! server pod's own firewall, and checked against that firewall's own counter. No
//! cluster, and a server pod that never sent a packet: only the node's routes tell the
//! agent it lives here.

use std::{io, net::IpAddr, time::Duration};

use lab::{Pod, Proto, exec};
use probe_agent::model::{Cause, Verdict, VerdictKind};

use crate::e2e::{Agent, counts, node, sock};

/// A SYN timeout of 1 s (the agent's `--syn-timeout` in these tests): within 1.5 s, the
/// SYN at 0 s and its retransmission at 1 s.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

const SERVICE_PORT: u16 = 80;
/// Dropped by the node (NetworkPolicy style).
const NODE_DROPS: u16 = 8444;
/// Dropped by the server pod itself, which counts what it drops.
const POD_DROPS: u16 = 8443;

fn packets(agent: &Agent, kind: &str) -> u64 {
    // 0 while the series is absent.
    agent
        .metric(&format!("netprobe_packets_total{{kind=\"{kind}\"}}"))
        .unwrap_or(0.0) as u64
}

/// Packets the firewall of `pod` (its own, not the node's) has dropped.
fn pod_dropped(pod: &Pod) -> u64 {
    let mut nft = pod.command(&exec::tool("nft").to_string_lossy());
    let rules = exec::run(nft.args(["list", "chain", "inet", "pod", "input"]))
        .expect("list the pod's firewall");
    rules
        .split_whitespace()
        .skip_while(|word| *word != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in\n{rules}"))
}

fn timed_out(agent: &Agent, client: &Pod, to: std::net::SocketAddr, query: &str) -> Verdict {
    match client.connect_tcp(to, CONNECT_TIMEOUT) {
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}"),
        Ok(()) => panic!("connected to {to}"),
    }
    let verdict = agent.settled(query);
    assert_eq!(verdict.verdict, VerdictKind::Timeout, "{verdict:#?}");
    assert_eq!(&*verdict.interface, client.host_if, "counted at the client");
    verdict
}

/// Polls until the agent has counted `n` SYN deliveries, and checks it stays there.
fn assert_delivered(agent: &Agent, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while packets(agent, "syn_delivered") < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(packets(agent, "syn_delivered"), n, "SYNs delivered");
}

#[test]
fn a_timed_out_syn_is_told_dropped_on_the_node_from_delivered_to_the_server() {
    let mut node = node("dlv");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    node.drop_traffic(
        Proto::Tcp,
        Some(client.ipv4.into()),
        Some(server.ipv4.into()),
        Some(NODE_DROPS),
    )
    .unwrap();
    let service: IpAddr = "10.96.0.20".parse().unwrap();
    node.add_service(
        Proto::Tcp,
        service,
        SERVICE_PORT,
        sock(server.ipv4, POD_DROPS),
    )
    .unwrap();
    server.drop_tcp_in(POD_DROPS).unwrap();
    let agent = Agent::start(&node, &[]);

    // Dropped by the node: the SYNs never reach the server's veth.
    let on_node = timed_out(
        &agent,
        &client,
        sock(server.ipv4, NODE_DROPS),
        &format!("port={NODE_DROPS}"),
    );
    assert_eq!(counts(&on_node), (2, 0, 0, 0));
    assert_eq!(on_node.cause, Some(Cause::DroppedBetween), "{on_node:#?}");
    assert_delivered(&agent, 0);

    // Dropped by the server pod: every SYN went in at its veth, and the flow is counted
    // once, at the client's, as ever.
    let in_pod = timed_out(
        &agent,
        &client,
        sock(server.ipv4, POD_DROPS),
        &format!("port={POD_DROPS}"),
    );
    assert_eq!(counts(&in_pod), (2, 0, 0, 0));
    assert_eq!(in_pod.cause, Some(Cause::ServerSilent), "{in_pod:#?}");
    assert_eq!(pod_dropped(&server), 2, "SYNs the server pod dropped");
    assert_delivered(&agent, 2);

    // Through a Service: the client sends to the ClusterIP, the server gets the SYNs on
    // its targetPort (the agent's table keeps them under the client's port).
    let via_service = timed_out(
        &agent,
        &client,
        sock(service, SERVICE_PORT),
        &format!("dst_ip={service}"),
    );
    assert_eq!(counts(&via_service), (2, 0, 0, 0));
    assert_eq!(pod_dropped(&server), 4);
    assert_delivered(&agent, 4);

    // One flow each, none from the server's side; the flows' SYNs are the client's only.
    let tcp = agent.verdicts("protocol=tcp");
    assert_eq!(tcp.len(), 3, "{tcp:#?}");
    assert_eq!(packets(&agent, "syn"), 6);
}
