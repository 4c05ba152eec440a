//! Why connections fail: the incident catalog (`lab::incidents`) played on the simulated
//! node with real traffic (NetworkPolicies as nftables drops, Services as DNAT/REJECT
//! rules) while the API server stand-in serves its Kubernetes objects; every expectation
//! of the catalog asserted on the agent's API: verdict, cause, the reason naming the right
//! objects, and the next command. Healthy traffic, slow handshakes and search-path
//! expansions never get a failure cause. Plus what the catalog's one node cannot hold: a
//! client on another node.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use lab::{
    self, Node, Pod,
    incidents::{self, CATALOG, Flows, Incident, Next, Runner},
    kube_objects::{self, namespace},
    kube_stand_in::KubeStandIn,
};
use probe_agent::model::{Cause, Verdict, VerdictKind};
use serde_json::{Value, json};

use crate::e2e::{Agent, node, sock};

/// The node, its Kubernetes API stand-in and an agent naming flows from it.
struct Cluster {
    api: KubeStandIn,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn new(node: &Node) -> Cluster {
        let api = KubeStandIn::start_in_netns(Some(node.netns())).expect("the API stand-in");
        let kubeconfig =
            std::env::temp_dir().join(format!("netprobe-causes-{}.kubeconfig", node.prefix()));
        api.write_kubeconfig(&kubeconfig).unwrap();
        Cluster { api, kubeconfig }
    }

    fn apply(&self, objects: impl IntoIterator<Item = Value>) {
        for object in objects {
            self.api.apply(object).unwrap();
        }
    }

    /// Starts the agent (writing Kubernetes Events) and waits until it has listed
    /// `pods` pods.
    fn agent(&self, node: &Node, pods: usize) -> Agent {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let agent = Agent::start(
            node,
            &[
                "--kubeconfig",
                &kubeconfig,
                "--node-name",
                incidents::NODE,
                "--events",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let wanted = format!("netprobe_kube_objects{{kind=\"pods\"}} {pods}\n");
        loop {
            let metrics = agent.metrics();
            if metrics.contains(&wanted) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not list {pods} pods: {metrics}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// The API's name for a cause, `network_policy`, as the model reads it.
fn cause(name: &str) -> Cause {
    serde_json::from_value(json!(name)).unwrap_or_else(|e| panic!("cause {name:?}: {e}"))
}

/// Every incident of the catalog, played at once as the demo plays them: each gets
/// exactly the verdicts, causes, reasons and next commands the catalog says.
#[test]
fn catalog_incidents_say_why() {
    let mut node = node("ca");
    let played = incidents::Cluster::create(&mut node).unwrap();
    let cluster = Cluster::new(&node);
    let objects = incidents::objects(&node);
    cluster.apply(objects.iter().cloned());
    let agent = cluster.agent(&node, incidents::count(&objects, "Pod"));

    // The catalog names verdicts and causes as the model serializes them.
    for expect in CATALOG.iter().flat_map(|i| i.expect) {
        let kind: VerdictKind = serde_json::from_value(json!(expect.verdict)).unwrap();
        assert_eq!(kind.is_failure(), expect.is_failure(), "{expect:?}");
        if let Some(name) = expect.cause {
            cause(name);
        }
    }

    let all: Vec<&'static Incident> = CATALOG.iter().collect();
    let outcomes = Runner {
        node: &node,
        cluster: &played,
        // The agent weighs the pod pairs of the last 10 s: the outage's must be alone.
        quiet_before_node_wide: Duration::from_secs(8),
        alive: &mut || Ok(()),
        report: &mut |_| {},
    }
    .play(&all)
    .unwrap();
    for o in &outcomes {
        assert!(
            o.as_expected,
            "{}: the client saw {}",
            o.incident.name, o.saw
        );
    }
    // The outage is over once played: the gauge said so while it lasted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.metrics().contains("netprobe_node_datapath_down 1\n") {
        assert!(
            Instant::now() < deadline,
            "netprobe_node_datapath_down never 1"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // Polled: the last verdicts settle after their clients gave up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let expanded: Value = agent.get("/v1/verdicts?limit=10000&expand=true");
        let listed: Value = agent.get("/v1/verdicts?limit=10000");
        let report = incidents::check(&played, &all, &expanded, &listed);
        if report.problems.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            report.problems,
            report.lines.join("\n")
        );
        thread::sleep(Duration::from_millis(200));
    }

    // Every failure has a cause; nothing that worked has one but a search-path expansion.
    let verdicts = agent.verdicts("expand=true");
    for v in &verdicts {
        if v.verdict == VerdictKind::Pending {
            continue;
        }
        let expansion = v.cause == Some(Cause::SearchPathExpansion);
        assert_eq!(
            v.verdict.is_failure(),
            v.cause.is_some() && !expansion,
            "{v:#?}"
        );
        assert!(!expansion || v.verdict == VerdictKind::Ok, "{v:#?}");
    }

    // The slow handshake's retransmission came at the 1 s timeout: its verdict never
    // flapped to TIMEOUT.
    let payment = played.pod("payment").unwrap();
    let slow: Value = agent.get(&format!(
        "/v1/flows?dst_ip={}&port={}&limit=100",
        payment.ipv4,
        incidents::SLOW_PORT
    ));
    let slow = slow["flows"].as_array().expect("flows").clone();
    assert!(!slow.is_empty());
    assert!(slow.iter().all(|e| e["verdict"] != "TIMEOUT"), "{slow:#?}");

    // Metrics: each failing flow counted under its cause when it failed. A lookup's
    // retries share its flow (one row, a count per query).
    let exposed = agent.metrics();
    let samples = lab::Samples::parse(&exposed).expect("a Prometheus exposition");
    let counted = |name: &str| -> usize {
        samples
            .value("netprobe_causes_total", &[("cause", name)])
            .unwrap_or_else(|| panic!("no netprobe_causes_total{{cause={name:?}}}: {exposed}"))
            as usize
    };
    let rows = |name: &str| {
        verdicts
            .iter()
            .filter(|v| v.cause == Some(cause(name)))
            .count()
    };
    let failing = CATALOG
        .iter()
        .flat_map(|i| i.expect)
        .filter(|e| e.is_failure() && !matches!(e.flows, Flows::Node { .. }));
    let by_dns: BTreeSet<&str> = failing
        .clone()
        .filter(|e| matches!(e.flows, Flows::Dns { .. }))
        .filter_map(|e| e.cause)
        .collect();
    for name in failing.filter_map(|e| e.cause).collect::<BTreeSet<_>>() {
        match name {
            // The outage's rows count twice: dropped_between when they timed out,
            // node_datapath when the node-level verdict took them.
            "node_datapath" => assert_eq!(counted(name), rows(name), "{exposed}"),
            "dropped_between" => assert_eq!(
                counted(name),
                rows(name) + rows("node_datapath"),
                "{exposed}"
            ),
            _ if by_dns.contains(name) => assert!(counted(name) >= rows(name), "{name}: {exposed}"),
            _ => assert_eq!(counted(name), rows(name), "{name}: {exposed}"),
        }
    }
    let expansions = verdicts
        .iter()
        .filter(|v| v.cause == Some(Cause::SearchPathExpansion))
        .count();
    let series = format!("netprobe_dns_search_expansions_total {expansions}\n");
    assert!(exposed.contains(&series), "{series}{exposed}");

    // `--events`: one Kubernetes Event on the client pod per failing cause and
    // destination, with the next command when there is one.
    assert_events(&cluster);
}

/// The Events: one on each client's pod per failing cause of its incidents (the
/// node-wide one aside), with the catalog's next command when it has one.
fn assert_events(cluster: &Cluster) {
    let failing: Vec<(&str, &incidents::Expect)> = CATALOG
        .iter()
        .filter(|i| !i.is_node_wide())
        .flat_map(|i| i.expect)
        .filter(|e| e.is_failure())
        .filter_map(|e| match e.flows {
            Flows::Tcp { from, .. } | Flows::Dns { from, .. } => {
                Some((incidents::pod_name(from), e))
            }
            Flows::Node { .. } => None,
        })
        .collect();
    let camel = |name: &str| -> String {
        name.split('_')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect()
    };
    let wanted: BTreeSet<(String, String)> = failing
        .iter()
        .filter_map(|(pod, e)| Some(((*pod).to_owned(), camel(e.cause?))))
        .collect();
    let written = |events: &[Value]| -> BTreeSet<(String, String)> {
        events
            .iter()
            .map(|e| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (text(&e["regarding"]["name"]), text(&e["reason"]))
            })
            .collect()
    };
    // A pod gets at most PER_POD Events per window, whatever their causes: checkout
    // fails in more ways than that.
    let pods: BTreeSet<&String> = wanted.iter().map(|(pod, _)| pod).collect();
    let complete = |written: &BTreeSet<(String, String)>| {
        pods.iter().all(|&pod| {
            let of = |set: &BTreeSet<(String, String)>| {
                set.iter()
                    .filter(|(p, _)| p == pod)
                    .cloned()
                    .collect::<BTreeSet<_>>()
            };
            let (wanted, written) = (of(&wanted), of(written));
            let n = wanted.intersection(&written).count();
            n == wanted.len().min(probe_agent::kube_events::PER_POD as usize)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = cluster.api.events();
        if complete(&written(&events)) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "Events wanted {wanted:?}, written {:?}",
            written(&events)
        );
        thread::sleep(Duration::from_millis(100));
    };
    for (pod, reason) in written(&events) {
        assert!(
            wanted.contains(&(pod.clone(), reason.clone())) || reason == "NodeDatapath",
            "{pod}: an Event {reason} no incident makes"
        );
    }
    for event in &events {
        assert_eq!(event["type"], "Warning", "{event:#?}");
        assert_eq!(event["regarding"]["kind"], "Pod", "{event:#?}");
        assert!(
            event["regarding"]["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty())
        );
        let (pod, reason) = (&event["regarding"]["name"], &event["reason"]);
        let note = event["note"].as_str().unwrap();
        for (_, expect) in failing
            .iter()
            .filter(|(p, e)| pod == p && e.cause.map(camel).as_deref() == reason.as_str())
        {
            match expect.next {
                Next::Nothing => assert!(!note.contains(" Next: "), "{event:#?}"),
                Next::Is(next) => assert!(note.ends_with(&format!(" Next: {next}")), "{event:#?}"),
                Next::Unchecked => {}
            }
        }
    }
}

/// A client on another node reaches this node's pods over the uplink: the probe sees its
/// SYNs only entering the server's veth. Unanswered there, the server was silent (not a
/// drop between two pods of this node); answered, there is no cause.
#[test]
fn a_remote_clients_unanswered_syn_is_server_silent() {
    let mut node = node("cr");
    let worker = node.add_pod("worker", "production", 7).unwrap();
    let far = node.add_remote_host("far", 20).unwrap();
    let _servers = [
        worker.listen_tcp(7000).unwrap(),
        worker.listen_tcp(7001).unwrap(),
    ];
    worker.drop_tcp_in(7000).unwrap();
    let cluster = Cluster::new(&node);
    cluster.apply([
        namespace("production"),
        lab_pod(
            &worker,
            "worker-0",
            "worker",
            json!([{"containerPort": 7000}, {"containerPort": 7001}]),
        ),
    ]);
    let agent = cluster.agent(&node, 1);

    far.connect_tcp(sock(worker.ipv4, 7001), Duration::from_secs(3))
        .unwrap();
    let _ = far.connect_tcp(sock(worker.ipv4, 7000), Duration::from_secs(3));
    let answered = settled_to(&agent, sock(worker.ipv4, 7001));
    assert_eq!(
        (answered.verdict, answered.cause),
        (VerdictKind::Ok, None),
        "{answered:#?}"
    );
    assert_eq!(answered.flow.src_ip, IpAddr::V4(far.ipv4));
    assert_eq!(&*answered.interface, worker.host_if.as_str());
    let silent = settled_to(&agent, sock(worker.ipv4, 7000));
    assert_eq!(
        (silent.verdict, silent.cause),
        (VerdictKind::Timeout, Some(Cause::ServerSilent)),
        "{silent:#?}"
    );
    assert!(
        silent.reason.contains(&format!(
            "the SYN from {} (not a pod of this node) reached pod production/worker-0 ({}) through {} and the server never answered",
            far.ipv4,
            sock(worker.ipv4, 7000),
            worker.host_if
        )),
        "{silent:#?}"
    );
    assert_eq!(
        silent.next.as_deref(),
        Some("kubectl exec -n production worker-0 -- netstat -ltn")
    );
}

/// A pod object for a lab pod of this node.
fn lab_pod(pod: &Pod, name: &str, app: &str, ports: Value) -> Value {
    kube_objects::Pod {
        name,
        namespace: &pod.k8s_namespace,
        uid: format!("uid-{name}"),
        owner: None,
        labels: json!({"app": app}),
        ports,
        ips: vec![IpAddr::V4(pod.ipv4)],
        ready: true,
        node: incidents::NODE,
    }
    .json()
}

fn settled_to(agent: &Agent, to: std::net::SocketAddr) -> Verdict {
    agent.settled(&format!("dst_ip={}&port={}", to.ip(), to.port()))
}
