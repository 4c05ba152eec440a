//! Beside a CNI's eBPF datapath: a foreign program on the pods' veths that drops a port
//! (a policy drop) and delivers straight into pods with `bpf_redirect_peer` or
//! `bpf_redirect`, ending the chain as Cilium and Calico eBPF do. Put there before the
//! agent starts or after (ahead of it), the agent's program still runs first; where the
//! redirect skips a host veth's egress, the reply is seen at the other pod's veth ingress
//! and paired. A tshark capture on the veths says what each carried.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use foreign_ebpf::{
    DROP_PORTS_MAP, PROGRAM, REDIRECT_EGRESS, REDIRECT_PEER, REDIRECTS_MAP, Redirect,
};
use lab::{Capture, Node, Pod, QueryType};
use probe_agent::model::VerdictKind;

use crate::e2e::{Agent, counts, node, sock};

/// The foreign program, built by probe-agent's build script with the privileged tests.
static FOREIGN_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foreign-ebpf"));

/// The port the foreign program drops.
const DROPPED_PORT: u16 = 81;
/// No server listens there.
const CLOSED_PORT: u16 = 82;

/// Where on a hook's chain the foreign program goes.
#[derive(Clone, Copy)]
enum Placement {
    /// TCX, at the head (what a program started after the agent may do).
    TcxFirst,
    /// TCX, at the tail (aya's default).
    TcxLast,
    /// A clsact filter at this priority (0: the kernel's choice).
    Clsact(u16),
}

/// The foreign program, attached to the ingress of some host veths; detached on drop.
struct Foreign {
    _ebpf: Ebpf,
}

impl Foreign {
    /// Loads it in the node's namespace, drops TCP to [`DROPPED_PORT`], and redirects
    /// packets for each of `redirects`' destinations straight to it.
    fn attach(
        node: &Node,
        interfaces: &[&str],
        placement: Placement,
        redirects: Vec<(Ipv4Addr, Redirect)>,
    ) -> Foreign {
        assert!(
            !FOREIGN_OBJECT.is_empty(),
            "probe-agent was built without the foreign test program (bpf-linker missing)"
        );
        let interfaces: Vec<String> = interfaces.iter().map(|i| i.to_string()).collect();
        let ebpf = node.in_netns(move || {
            let mut ebpf = Ebpf::load(FOREIGN_OBJECT).expect("load the foreign object");
            let mut drops: HashMap<_, u16, u8> =
                HashMap::try_from(ebpf.map_mut(DROP_PORTS_MAP).expect("drop map")).unwrap();
            drops.insert(DROPPED_PORT, 1, 0).unwrap();
            let mut table: HashMap<_, u32, Redirect> =
                HashMap::try_from(ebpf.map_mut(REDIRECTS_MAP).expect("redirect map")).unwrap();
            for (destination, redirect) in redirects {
                table
                    .insert(u32::from_ne_bytes(destination.octets()), redirect, 0)
                    .unwrap();
            }
            let program: &mut SchedClassifier =
                ebpf.program_mut(PROGRAM).unwrap().try_into().unwrap();
            program
                .load()
                .expect("the verifier takes the foreign program");
            for interface in &interfaces {
                let options = match placement {
                    Placement::TcxFirst => TcAttachOptions::TcxOrder(LinkOrder::first()),
                    Placement::TcxLast => TcAttachOptions::TcxOrder(LinkOrder::last()),
                    Placement::Clsact(priority) => {
                        let _ = tc::qdisc_add_clsact(interface);
                        TcAttachOptions::Netlink(NlOptions {
                            priority,
                            ..NlOptions::default()
                        })
                    }
                };
                program
                    .attach_with_options(interface, TcAttachType::Ingress, options)
                    .unwrap_or_else(|e| panic!("attach the foreign program to {interface}: {e}"));
            }
            ebpf
        });
        Foreign { _ebpf: ebpf }
    }
}

/// `ifindex` and MAC of `dev` in namespace `netns`, by `ip -j link`.
fn link(netns: &str, dev: &str) -> (u32, [u8; 6]) {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", dev])
        .output()
        .expect("ip link show");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    let index = links[0]["ifindex"].as_u64().expect("ifindex") as u32;
    let mac: Vec<u8> = links[0]["address"]
        .as_str()
        .expect("address")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    (index, mac.try_into().expect("a 6-byte MAC"))
}

/// What the foreign program does with packets for `pod`: straight to its eth0, with the
/// MACs its host veth would have given them.
fn redirect_to(node: &Node, pod: &Pod, how: u32) -> (Ipv4Addr, Redirect) {
    let (ifindex, host_mac) = link(node.netns(), &pod.host_if);
    let (_, pod_mac) = link(&pod.netns, "eth0");
    let redirect = Redirect {
        ifindex,
        how,
        dst_mac: pod_mac,
        src_mac: host_mac,
    };
    (pod.ipv4, redirect)
}

/// Polls the agent's `/metrics` until `series` reaches `at_least`.
fn wait_for_metric(agent: &Agent, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = agent.metric(series).unwrap_or(0.0);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value}, not {at_least}, after 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client, two servers (one reached by `bpf_redirect_peer`, one by `bpf_redirect` to
/// its veth's egress), with the foreign program on all three veths' ingress.
struct Scene {
    node: Node,
    client: Pod,
    peer_server: Pod,
    egress_server: Pod,
    _listeners: Vec<lab::Listener>,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let mut node = node(tag);
        let client = node.add_pod("client", "default", 5).unwrap();
        let peer_server = node.add_pod("peer", "default", 9).unwrap();
        let egress_server = node.add_pod("egress", "default", 11).unwrap();
        let listeners = vec![
            peer_server.listen_tcp(80).unwrap(),
            egress_server.listen_tcp(80).unwrap(),
        ];
        Scene {
            node,
            client,
            peer_server,
            egress_server,
            _listeners: listeners,
        }
    }

    fn veths(&self) -> [&str; 3] {
        [
            &self.client.host_if,
            &self.peer_server.host_if,
            &self.egress_server.host_if,
        ]
    }

    fn foreign(&self, placement: Placement) -> Foreign {
        let redirects = vec![
            redirect_to(&self.node, &self.client, REDIRECT_PEER),
            redirect_to(&self.node, &self.peer_server, REDIRECT_PEER),
            redirect_to(&self.node, &self.egress_server, REDIRECT_EGRESS),
        ];
        Foreign::attach(&self.node, &self.veths(), placement, redirects)
    }

    /// Plays a dropped SYN and one healthy connection to each server, and checks the
    /// verdicts and counts against what tshark saw on the veths.
    fn assert_verdicts_right(&self, agent: &Agent) {
        let client_capture = Capture::on_pod_veth(&self.node, &self.client).unwrap();
        let server_capture = Capture::on_pod_veth(&self.node, &self.peer_server).unwrap();
        let peer = IpAddr::V4(self.peer_server.ipv4);
        let egress = IpAddr::V4(self.egress_server.ipv4);

        // The policy drop: the foreign program sheds the SYN after ours has counted it.
        let dropped = self
            .client
            .connect_tcp(sock(peer, DROPPED_PORT), Duration::from_secs(2));
        assert!(
            dropped.is_err(),
            "the SYN to port {DROPPED_PORT} got through"
        );
        let timeout = agent.settled(&format!("dst_ip={peer}&port={DROPPED_PORT}"));
        assert_eq!(timeout.verdict, VerdictKind::Timeout, "{timeout:#?}");

        self.client
            .connect_tcp(sock(peer, 80), Duration::from_secs(2))
            .expect("the redirected connection to the peer-delivered server");
        let ok = agent.settled(&format!("dst_ip={peer}&port=80"));
        assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
        assert_eq!(counts(&ok), (1, 1, 0, 0), "{ok:#?}");
        assert_eq!(&*ok.interface, self.client.host_if);

        // Refused: the server's RST goes into the client past its veth too.
        let refused = self
            .client
            .connect_tcp(sock(peer, CLOSED_PORT), Duration::from_secs(2));
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        let refused = agent.settled(&format!("dst_ip={peer}&port={CLOSED_PORT}"));
        assert_eq!(refused.verdict, VerdictKind::Refused, "{refused:#?}");
        assert_eq!(counts(&refused), (1, 0, 1, 0), "{refused:#?}");

        self.client
            .connect_tcp(sock(egress, 80), Duration::from_secs(2))
            .expect("the redirected connection to the egress-delivered server");
        let ok = agent.settled(&format!("dst_ip={egress}&port=80"));
        assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
        assert_eq!(counts(&ok), (1, 1, 0, 0), "{ok:#?}");

        let syn_to = |ip: IpAddr, port: u16| {
            format!(
                "ip.dst == {ip} && tcp.dstport == {port} && tcp.flags.syn == 1 && tcp.flags.ack == 0"
            )
        };
        let syn_ack_from = |ip: IpAddr| {
            format!(
                "ip.src == {ip} && tcp.srcport == 80 && tcp.flags.syn == 1 && tcp.flags.ack == 1"
            )
        };
        let rst_from = |ip: IpAddr| format!("ip.src == {ip} && tcp.flags.reset == 1");
        let at_client = client_capture
            .finish(&[
                &syn_to(peer, DROPPED_PORT),
                &syn_to(peer, 80),
                &syn_ack_from(peer),
                &syn_to(peer, CLOSED_PORT),
                &rst_from(peer),
            ])
            .unwrap();
        // The client's veth saw every SYN leave the pod, and no SYN-ACK or RST:
        // redirect_peer put them into the pod past the veth's egress.
        assert_eq!(at_client, [timeout.counts.syn as usize, 1, 0, 1, 0]);
        let at_server = server_capture
            .finish(&[&syn_to(peer, 80), &syn_ack_from(peer)])
            .unwrap();
        // The server's veth: the SYN skipped it, the SYN-ACK left the pod through it.
        assert_eq!(at_server, [0, 1]);
        assert_eq!(agent.verdicts("protocol=tcp").len(), 4);
    }
}

/// A TCX datapath already there: the agent attaches ahead of it.
#[test]
fn a_tcx_datapath_there_before_the_agent_does_not_hide_drops_or_redirects() {
    let scene = Scene::new("tcxbefore");
    let _foreign = scene.foreign(Placement::TcxLast);
    let agent = Agent::start(&scene.node, &["--attach-mode", "tcx"]);
    scene.assert_verdicts_right(&agent);
    assert_eq!(agent.metric("netprobe_reattached_total"), Some(0.0));
}

/// A TCX datapath that puts itself first after the agent started: the resync puts the
/// agent's program first again, and counts it.
#[test]
fn a_tcx_datapath_put_ahead_of_the_agent_is_overtaken_again() {
    let scene = Scene::new("tcxafter");
    let agent = Agent::start(&scene.node, &["--attach-mode", "tcx"]);
    let _foreign = scene.foreign(Placement::TcxFirst);
    wait_for_metric(&agent, "netprobe_reattached_total", 3.0);
    scene.assert_verdicts_right(&agent);
    assert_eq!(agent.metric("netprobe_reattached_total"), Some(3.0));
}

/// clsact: a filter at priority 1 (Cilium's) before the agent, and filters at the
/// kernel's priority after it (ahead of the agent's): the agent's filters still run first.
#[test]
fn clsact_filters_go_ahead_of_a_datapaths_filters() {
    let scene = Scene::new("clsactdp");
    let _before = Foreign::attach(
        &scene.node,
        &[&scene.client.host_if],
        Placement::Clsact(1),
        vec![
            redirect_to(&scene.node, &scene.peer_server, REDIRECT_PEER),
            redirect_to(&scene.node, &scene.egress_server, REDIRECT_EGRESS),
        ],
    );
    let agent = Agent::start(&scene.node, &["--attach-mode", "clsact"]);
    let _after = Foreign::attach(
        &scene.node,
        &[&scene.peer_server.host_if, &scene.egress_server.host_if],
        Placement::Clsact(0),
        vec![redirect_to(&scene.node, &scene.client, REDIRECT_PEER)],
    );
    wait_for_metric(&agent, "netprobe_reattached_total", 2.0);
    scene.assert_verdicts_right(&agent);
}

/// A reply from another node that the datapath puts straight into the client pod skips
/// the client veth's egress: attached to the uplink too, the agent sees it come in there
/// and pairs it with the SYN the client's veth saw, one flow counted once.
#[test]
fn a_remote_reply_redirected_into_the_pod_is_seen_at_the_uplink() {
    let mut node = node("uplinkrp");
    let client = node.add_pod("client", "default", 5).unwrap();
    let far = node.add_remote_host("far", 20).unwrap();
    let _listener = far.listen_tcp(80).unwrap();
    let _foreign = Foreign::attach(
        &node,
        &[&far.host_if],
        Placement::TcxLast,
        vec![redirect_to(&node, &client, REDIRECT_PEER)],
    );
    let uplink_glob = format!("{}*", &far.host_if[..far.host_if.len() - 2]);
    let interfaces = format!("veth*,{uplink_glob}");
    let agent = Agent::start(
        &node,
        &["--attach-mode", "tcx", "--interfaces", &interfaces],
    );
    let client_capture = Capture::on_pod_veth(&node, &client).unwrap();

    let to = IpAddr::V4(far.ipv4);
    client
        .connect_tcp(sock(to, 80), Duration::from_secs(2))
        .expect("the connection to the other node's pod");
    let ok = agent.settled(&format!("dst_ip={to}&port=80"));
    assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
    assert_eq!(counts(&ok), (1, 1, 0, 0), "{ok:#?}");
    assert_eq!(&*ok.interface, client.host_if);
    let at_client = client_capture
        .finish(&[
            &format!("ip.dst == {to} && tcp.flags.syn == 1 && tcp.flags.ack == 0"),
            &format!("ip.src == {to} && tcp.flags.syn == 1 && tcp.flags.ack == 1"),
        ])
        .unwrap();
    // The SYN left through the client's veth; the SYN-ACK never passed it.
    assert_eq!(at_client, [1, 0]);
    assert_eq!(agent.verdicts("protocol=tcp").len(), 1);
}

/// A DNS pod's answers that the datapath puts straight into the client skip the client
/// veth's egress: seen leaving the DNS pod, each is its query's answer, counted once.
#[test]
fn dns_answers_redirected_into_the_client_are_judged_from_the_servers_veth() {
    let mut node = node("dnspeer");
    let client = node.add_pod("client", "default", 5).unwrap();
    let dns_pod = node.add_pod("coredns", "kube-system", 10).unwrap();
    let _dns = lab::start_dns(
        &dns_pod,
        &[(
            "web.default.svc.cluster.local",
            "10.96.0.30".parse().unwrap(),
        )],
    )
    .unwrap();
    let _foreign = Foreign::attach(
        &node,
        &[&dns_pod.host_if],
        Placement::TcxLast,
        vec![redirect_to(&node, &client, REDIRECT_PEER)],
    );
    let agent = Agent::start(&node, &["--attach-mode", "tcx"]);
    let capture = Capture::on_pod_veth(&node, &client).unwrap();
    let server = sock(IpAddr::V4(dns_pod.ipv4), 53);

    let found = client
        .dns_query(
            server,
            "web.default.svc.cluster.local.",
            QueryType::A,
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!((found.rcode, found.answers), (0, 1));
    let missing = client
        .dns_query(
            server,
            "nothing.default.svc.cluster.local.",
            QueryType::A,
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(missing.rcode, 3);

    let ok = agent.settled("verdict=OK&protocol=udp");
    assert_eq!(ok.verdict, VerdictKind::Ok, "{ok:#?}");
    assert_eq!(
        (ok.counts.dns_queries, ok.counts.dns_responses),
        (1, 1),
        "{ok:#?}"
    );
    let nxdomain = agent.settled("verdict=NXDOMAIN");
    assert_eq!(
        (nxdomain.counts.dns_queries, nxdomain.counts.dns_responses),
        (1, 1),
        "{nxdomain:#?}"
    );
    let at_client = capture
        .finish(&["dns.flags.response == 0", "dns.flags.response == 1"])
        .unwrap();
    // Both queries left through the client's veth; no answer came back through it.
    assert_eq!(at_client, [2, 0]);
    assert_eq!(agent.verdicts("protocol=udp").len(), 2);
}
