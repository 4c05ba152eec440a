//! `observe --cluster` against the Kubernetes API stand-in, whose pods/proxy forwards to
//! fixture agents on loopback ports: one agent down, one pod not running.

use std::{net::SocketAddr, path::PathBuf};

use lab::kube_stand_in::KubeStandIn;
use serde_json::{Value, json};

use super::*;
use crate::observe::cluster;

fn agent_pod(name: &str, node: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "netprobe", "labels": {
            "app.kubernetes.io/name": "netprobe", "app.kubernetes.io/component": "agent",
        }},
        "spec": {"nodeName": node, "containers": [{
            "name": "probe-agent", "ports": [{"name": "http", "containerPort": 9810}],
        }]},
        "status": {"phase": phase, "podIP": "10.0.0.1"},
    })
}

/// The stand-in with agents `a` and `b` on node-a and node-b, node-c's agent down (its
/// port closed), node-d's pod Pending, and another application's pod beside them.
struct Cluster {
    api: KubeStandIn,
    a: Server,
    b: Server,
    dead: SocketAddr,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start(tag: &str) -> Self {
        let (a, b) = (Server::start(), Server::start());
        let api = KubeStandIn::start().unwrap();
        let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let agents = [
            ("netprobe-a", "node-a", "Running", a.addr),
            ("netprobe-b", "node-b", "Running", b.addr),
            ("netprobe-c", "node-c", "Running", dead),
            ("netprobe-d", "node-d", "Pending", dead),
        ];
        for (pod, node, phase, addr) in agents {
            api.apply(agent_pod(pod, node, phase)).unwrap();
            api.route_pod("netprobe", pod, addr);
        }
        // node-e runs no agent.
        for node in ["node-a", "node-b", "node-c", "node-d", "node-e"] {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
            api.apply(node).unwrap();
        }
        let mut other = agent_pod("web-0", "node-a", "Running");
        other["metadata"]["labels"] = json!({"app.kubernetes.io/name": "web"});
        api.apply(other).unwrap();
        let kubeconfig = std::env::temp_dir().join(format!(
            "netprobe-observe-{tag}-{}.kubeconfig",
            std::process::id()
        ));
        api.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            api,
            a,
            b,
            dead,
            kubeconfig,
        }
    }

    fn args(&self, argv: &[&str]) -> ObserveArgs {
        let kubeconfig = self.kubeconfig.to_str().unwrap();
        parse_args(&[&["--cluster", "--kubeconfig", kubeconfig][..], argv].concat())
    }

    fn observe(&self, argv: &[&str]) -> (anyhow::Result<()>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = cluster::run(&self.args(argv), &mut out, &mut err);
        let text = |bytes| String::from_utf8(bytes).unwrap();
        (result, text(out), text(err))
    }

    fn refused(&self) -> String {
        format!(
            "503 error trying to reach service: dial tcp {}: connect: connection refused",
            self.dead
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

#[test]
fn every_agents_answer_is_merged_and_the_silent_ones_named() {
    let cluster = Cluster::start("list");
    let (result, out, err) = cluster.observe(&["--verdict", "TIMEOUT,REFUSED", "-o", "wide"]);
    result.unwrap();
    let mut expected = verdicts()[..2].to_vec();
    expected.retain(|v| matches!(v.verdict, VerdictKind::Timeout | VerdictKind::Refused));
    let (timeout, refused) = (&expected[..1], &expected[1..]);
    let rows = [
        rows(timeout, Some("node-a")),
        rows(timeout, Some("node-b")),
        rows(refused, Some("node-a")),
        rows(refused, Some("node-b")),
    ]
    .concat();
    assert_eq!(out, format_wide(&rows));
    assert_eq!(
        err,
        format!(
            "netprobe: no agent pod on 1 node: node-e\n\
             netprobe: 2 of 4 agents did not answer:\n  \
             node-c (netprobe/netprobe-c): {}\n  \
             node-d (netprobe/netprobe-d): pod netprobe-d is Pending\n",
            cluster.refused()
        )
    );
    // The filters went to each agent; the pods were found by their labels.
    let requests: Vec<String> = cluster.api.requests().into_iter().map(|r| r.1).collect();
    let selector =
        "labelSelector=app.kubernetes.io%2Fname%3Dnetprobe%2Capp.kubernetes.io%2Fcomponent%3Dagent";
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces/netprobe/pods?") && r.contains(selector)),
        "{requests:#?}"
    );
    for pod in ["netprobe-a", "netprobe-b", "netprobe-c"] {
        let asked = format!(
            "/api/v1/namespaces/netprobe/pods/{pod}:9810/proxy/v1/verdicts?verdict=TIMEOUT%2CREFUSED"
        );
        assert!(requests.contains(&asked), "{asked} not in {requests:#?}");
    }
    assert!(!requests.iter().any(|r| r.contains("netprobe-d:")));
}

#[test]
fn json_lines_name_their_node_and_the_limit_is_cluster_wide() {
    let cluster = Cluster::start("json");
    let (result, out, _) = cluster.observe(&["-o", "json", "--limit", "3"]);
    result.unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["node"].as_str().unwrap(), l["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [("node-b", "NXDOMAIN"), ("node-a", "OK"), ("node-b", "OK")]
    );
}

#[test]
fn a_bad_filter_is_each_agents_400_and_no_answer_fails() {
    let cluster = Cluster::start("bad");
    let (result, out, err) = cluster.observe(&["--since", "yesterday"]);
    assert_eq!(result.unwrap_err().to_string(), "no agent answered");
    assert_eq!(out, "LAST SEEN  VERDICT  SOURCE  DESTINATION\n");
    let invalid = "400 invalid since \"yesterday\": expected a duration such as 30s or 5m, or an RFC 3339 time";
    assert!(
        err.contains(&format!("  node-a (netprobe/netprobe-a): {invalid}\n")),
        "{err}"
    );
    assert!(
        err.contains(&format!("  node-b (netprobe/netprobe-b): {invalid}\n")),
        "{err}"
    );
}

#[test]
fn no_agent_pods_is_an_error_naming_where_it_looked() {
    let cluster = Cluster::start("none");
    let (result, _, _) = cluster.observe(&["--agent-namespace", "elsewhere"]);
    assert_eq!(
        result.unwrap_err().to_string(),
        "no agent pods in namespace elsewhere with labels \
         app.kubernetes.io/name=netprobe,app.kubernetes.io/component=agent \
         (see --agent-namespace, --agent-selector)"
    );
}

#[test]
fn follow_merges_the_streams_with_the_node_on_each_line() {
    let mut cluster = Cluster::start("follow");
    let args = cluster.args(&["--follow", "-o", "compact"]);
    let (out, err) = (SharedOut::default(), SharedOut::default());
    let client = thread::spawn({
        let (out, err) = (out.clone(), err.clone());
        move || cluster::run(&args, out, err)
    });
    wait_until("both followers", || {
        cluster.a.source.live.receiver_count() == 1 && cluster.b.source.live.receiver_count() == 1
    });
    let events = fixtures::fixture_events();
    cluster.a.source.live.send(events[3].clone()).unwrap();
    let a_line = format!("node-a  {}\n", event_line(&events[3], true));
    wait_until("node-a's event", || out.text() == a_line);
    cluster.b.source.live.send(events[1].clone()).unwrap();
    let b_line = format!("node-b  {}\n", event_line(&events[1], true));
    wait_until("node-b's event", || {
        out.text() == format!("{a_line}{b_line}")
    });
    let down = format!("netprobe: node-c (netprobe-c): {}\n", cluster.refused());
    let pending = "netprobe: node-d (netprobe-d): pod netprobe-d is Pending\n";
    assert!(err.text().contains(&down), "{}", err.text());
    assert!(err.text().contains(pending), "{}", err.text());

    cluster.a.stop();
    wait_until("node-a's end", || {
        err.text()
            .contains("netprobe: node-a (netprobe-a): the stream ended\n")
    });
    cluster.b.stop();
    client.join().unwrap().unwrap();
    assert_eq!(out.text(), format!("{a_line}{b_line}"));
}

#[test]
fn follow_fails_when_no_stream_starts() {
    let api = KubeStandIn::start().unwrap();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    api.apply(agent_pod("netprobe-c", "node-c", "Running"))
        .unwrap();
    api.route_pod("netprobe", "netprobe-c", dead);
    let kubeconfig = std::env::temp_dir().join(format!(
        "netprobe-observe-dead-{}.kubeconfig",
        std::process::id()
    ));
    api.write_kubeconfig(&kubeconfig).unwrap();
    let args = parse_args(&[
        "--cluster",
        "--follow",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    let mut err = Vec::new();
    let result = cluster::run(&args, Vec::new(), &mut err);
    let _ = std::fs::remove_file(&kubeconfig);
    assert_eq!(result.unwrap_err().to_string(), "no agent answered");
    assert_eq!(
        String::from_utf8(err).unwrap(),
        format!(
            "netprobe: node-c (netprobe-c): 503 error trying to reach service: dial tcp {dead}: \
             connect: connection refused\n"
        )
    );
}

#[test]
fn agents_that_ask_who_reads_get_the_token_past_the_api_server() {
    let api = KubeStandIn::start().unwrap();
    let kubeconfig = std::env::temp_dir().join(format!(
        "netprobe-observe-auth-{}.kubeconfig",
        std::process::id()
    ));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.add_token("alice-token", "alice", &["system:authenticated"]);
    api.grant("alice", &["/v1/*"]);
    let agent = Server::start_with(Some(kubeconfig.clone()));
    api.apply(agent_pod("netprobe-a", "node-a", "Running"))
        .unwrap();
    api.route_pod("netprobe", "netprobe-a", agent.addr);
    let observe = |token: &[&str]| {
        let kubeconfig = kubeconfig.to_str().unwrap();
        let argv = [
            &["--cluster", "--kubeconfig", kubeconfig, "-o", "json"][..],
            token,
        ]
        .concat();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = cluster::run(&parse_args(&argv), &mut out, &mut err);
        let text = |bytes| String::from_utf8(bytes).unwrap();
        (result.map_err(|e| e.to_string()), text(out), text(err))
    };
    let (result, out, _) = observe(&["--token", "alice-token"]);
    result.unwrap();
    assert_eq!(out.lines().count(), 4, "{out}");
    // The stand-in's kubeconfig has no token of its own: nothing to send.
    let (result, _, err) = observe(&[]);
    assert_eq!(result.unwrap_err(), "no agent answered");
    assert_eq!(
        err,
        "netprobe: 1 of 1 agents did not answer:\n  node-a (netprobe/netprobe-a): 401 a bearer \
         token is required (Authorization: Bearer <token>) (no token to send: see --token)\n"
    );
    let (_, _, err) = observe(&["--token", "mallory-token"]);
    assert!(err.contains("node-a (netprobe/netprobe-a): 401 "), "{err}");

    // --context picks the API server and the user whose token goes to the agents.
    let contexts = kubeconfig.with_extension("contexts");
    std::fs::write(
        &contexts,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n\
             - {{name: good, cluster: {{server: \"{url}\"}}}}\n\
             - {{name: gone, cluster: {{server: \"http://127.0.0.1:{dead}\"}}}}\n\
             users:\n- {{name: alice, user: {{token: alice-token}}}}\n- {{name: nobody, user: {{}}}}\n\
             contexts:\n- {{name: good, context: {{cluster: good, user: alice}}}}\n\
             - {{name: gone, context: {{cluster: gone, user: nobody}}}}\ncurrent-context: gone\n",
            url = api.url(),
            dead = free_port(),
        ),
    )
    .unwrap();
    let argv = [
        "--cluster",
        "--kubeconfig",
        contexts.to_str().unwrap(),
        "-o",
        "json",
    ];
    let result = cluster::run(&parse_args(&argv), Vec::new(), Vec::new());
    assert!(result.is_err(), "the current context's server is gone");
    let argv = [&argv[..], &["--context", "good"]].concat();
    let mut out = Vec::new();
    cluster::run(&parse_args(&argv), &mut out, Vec::new()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 4);
    let _ = std::fs::remove_file(&contexts);
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn agents_are_read_from_their_pods() {
    let mut tls = agent_pod("netprobe-t", "node-t", "Running");
    tls["spec"]["containers"][0]["args"] = json!(["run", "--tls-cert-file=/tls/tls.crt"]);
    tls["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 9443}]);
    let mut crashing = agent_pod("netprobe-x", "node-x", "Pending");
    crashing["status"]["containerStatuses"] = json!([{
        "name": "probe-agent", "image": "", "imageID": "", "ready": false, "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    }]);
    let mut unscheduled = agent_pod("netprobe-u", "", "Pending");
    unscheduled["spec"]
        .as_object_mut()
        .unwrap()
        .remove("nodeName");
    let pods: Vec<_> = [tls, crashing, unscheduled]
        .into_iter()
        .map(|pod| serde_json::from_value(pod).unwrap())
        .collect();
    let agents = agents(&pods);
    let summary: Vec<_> = agents
        .iter()
        .map(|a| (a.node.as_str(), a.port, a.https, a.problem.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "<unscheduled>",
                9810,
                false,
                Some("pod netprobe-u is Pending")
            ),
            ("node-t", 9443, true, None),
            (
                "node-x",
                9810,
                false,
                Some("pod netprobe-x is Pending (CrashLoopBackOff)")
            ),
        ]
    );
    let query = [
        ("pod", "web-*".to_string()),
        ("since", "2026-11-23T10:00:00+01:00".into()),
    ];
    assert_eq!(
        proxy_path(&agents[1], "/v1/verdicts", &query),
        "/api/v1/namespaces/netprobe/pods/https:netprobe-t:9443/proxy/v1/verdicts?pod=web-%2A&since=2026-11-23T10%3A00%3A00%2B01%3A00"
    );
}
