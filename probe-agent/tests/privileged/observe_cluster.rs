//! `probe-agent observe --cluster` (and `kubectl netprobe observe`) against real agents on
//! three simulated nodes, reached through the Kubernetes API stand-in's pods/proxy as an
//! operator's machine reaches them through the API server; one node's agent is down.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lab::kube_stand_in::KubeStandIn;
use lab::{Node, Pod, Proto};
use serde_json::{Value, json};

use crate::e2e::{Agent, node, sock};

/// Simulated nodes, each with a client and a server pod and its agent, listed by the
/// stand-in as the DaemonSet's pods (named `netprobe-<node>`).
struct Cluster {
    api: KubeStandIn,
    nodes: Vec<(Node, Pod, Pod)>,
    agents: Vec<Agent>,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start(tags: &[&str]) -> Self {
        let api = KubeStandIn::start().expect("the API stand-in");
        let mut nodes = Vec::new();
        let mut agents = Vec::new();
        for tag in tags {
            let mut node = node(tag);
            let client = node.add_pod("client", "production", 5).unwrap();
            let server = node.add_pod("server", "production", 9).unwrap();
            let agent = Agent::start(&node, &["--kube", "off"]);
            let port: u16 = agent.base.rsplit(':').next().unwrap().parse().unwrap();
            let pod = format!("netprobe-{}", node.prefix());
            api.apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "netprobe", "labels": {
                    "app.kubernetes.io/name": "netprobe",
                    "app.kubernetes.io/component": "agent",
                }},
                "spec": {"nodeName": node.prefix(), "containers": [{
                    "name": "probe-agent", "ports": [{"name": "http", "containerPort": 9810}],
                }]},
                "status": {"phase": "Running", "podIP": "10.0.0.1"},
            }))
            .unwrap();
            api.route_pod("netprobe", &pod, SocketAddr::from(([127, 0, 0, 1], port)));
            let name = node.prefix();
            api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
                .unwrap();
            nodes.push((node, client, server));
            agents.push(agent);
        }
        // A node the DaemonSet does not run on (a taint it does not tolerate).
        api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "tainted"}}))
            .unwrap();
        let kubeconfig =
            std::env::temp_dir().join(format!("netprobe-oc-{}.kubeconfig", nodes[0].0.prefix()));
        api.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            api,
            nodes,
            agents,
            kubeconfig,
        }
    }

    fn name(&self, i: usize) -> &str {
        self.nodes[i].0.prefix()
    }

    /// `binary observe --cluster --kubeconfig … <args>`, without the operator's own
    /// kubeconfig or a pod's service account around.
    fn command(&self, binary: &str, args: &[&str]) -> Command {
        let mut command = Command::new(binary);
        command.arg("observe");
        if binary.ends_with("probe-agent") {
            command.arg("--cluster");
        }
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", "/nonexistent")
            .env("COLUMNS", "100")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        command
    }

    fn observe(&self, args: &[&str]) -> Output {
        let output = self
            .command(env!("CARGO_BIN_EXE_probe-agent"), args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        output
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A connection refused by the server pod (nothing listens on `port`).
fn refused(client: &Pod, server: &Pod, port: u16) {
    let err = client
        .connect_tcp(sock(server.ipv4, port), Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// (node, verdict, destination port, SYNs, SYN-ACKs, RSTs) of `-o json` lines, in order.
fn summary(stdout: &[u8]) -> Vec<(String, String, u64, u64, u64, u64)> {
    text(stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let count = |key: &str| v["counts"][key].as_u64().unwrap();
            (
                v["node"].as_str().unwrap().to_string(),
                v["verdict"].as_str().unwrap().to_string(),
                v["flow"]["dst_port"].as_u64().unwrap(),
                count("syn"),
                count("syn_ack"),
                count("rst"),
            )
        })
        .collect()
}

#[test]
fn observe_cluster_merges_the_nodes_and_names_the_one_down() {
    let mut cluster = Cluster::start(&["oa", "ob", "oc"]);
    let _http = cluster.nodes[0].2.listen_tcp(8080).unwrap();
    {
        let (node_b, client, server) = &cluster.nodes[1];
        node_b
            .drop_traffic(
                Proto::Tcp,
                Some(client.ipv4.into()),
                Some(server.ipv4.into()),
                Some(5432),
            )
            .unwrap();
        assert!(
            client
                .connect_tcp(sock(server.ipv4, 5432), Duration::from_millis(1500))
                .is_err()
        );
        refused(client, server, 9091);
        let (_, client, server) = &cluster.nodes[0];
        client
            .connect_tcp(sock(server.ipv4, 8080), Duration::from_secs(2))
            .unwrap();
        refused(client, server, 9090);
    }
    cluster.agents[0].settled("port=9090");
    cluster.agents[0].settled_when("port=8080", |v| v.counts.syn_ack == 1);
    cluster.agents[1].settled("port=9091");
    cluster.agents[1].settled("port=5432");
    // The third node's agent goes away; its pod still says Running.
    cluster.agents[2].stop();
    let down_port: u16 = cluster.agents[2]
        .base
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (a, b, c) = (cluster.name(0), cluster.name(1), cluster.name(2));
    let down = format!(
        "netprobe: no agent pod on 1 node: tainted\n\
         netprobe: 1 of 3 agents did not answer:\n  {c} (netprobe/netprobe-{c}): 503 error \
         trying to reach service: dial tcp 127.0.0.1:{down_port}: connect: connection refused\n"
    );

    // Every verdict of both answering nodes, oldest first, each naming its node.
    let all = cluster.observe(&["-o", "json", "--protocol", "tcp"]);
    let mut seen = summary(&all.stdout);
    seen.sort();
    let mut expected = vec![
        (a.to_string(), "OK".to_string(), 8080, 1, 1, 0),
        (a.to_string(), "REFUSED".into(), 9090, 1, 0, 1),
        (b.to_string(), "REFUSED".into(), 9091, 1, 0, 1),
        (b.to_string(), "TIMEOUT".into(), 5432, 2, 0, 0),
    ];
    expected.sort();
    // The SYN retransmitted within the 1 s timeout or not: a TIMEOUT of 1 or 2 SYNs.
    for row in &mut seen {
        if row.1 == "TIMEOUT" && row.3 == 1 {
            row.3 = 2;
        }
    }
    assert_eq!(seen, expected, "{}", text(&all.stdout));
    assert_eq!(text(&all.stderr), down);

    // Filters are the agents' to apply: only REFUSED comes back, asked of each agent.
    let refused = cluster.observe(&["-o", "json", "--verdict", "REFUSED"]);
    let seen: Vec<_> = summary(&refused.stdout)
        .into_iter()
        .map(|row| (row.0, row.1, row.2))
        .collect();
    // Node b's connection was refused first: merged by when each was last seen.
    assert_eq!(
        seen,
        [
            (b.to_string(), "REFUSED".to_string(), 9091),
            (a.to_string(), "REFUSED".to_string(), 9090),
        ]
    );
    let asked: Vec<String> = cluster.api.requests().into_iter().map(|r| r.1).collect();
    for name in [a, b, c] {
        let path = format!(
            "/api/v1/namespaces/netprobe/pods/netprobe-{name}:9810/proxy/v1/verdicts?verdict=REFUSED"
        );
        assert!(asked.contains(&path), "{path} not in {asked:#?}");
    }

    // The table names the nodes, the reasons on their own lines.
    let table = text(&cluster.observe(&["--verdict", "REFUSED,TIMEOUT"]).stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("LAST SEEN  NODE"), "{table}");
    for (node, verdict) in [(a, "REFUSED"), (b, "REFUSED"), (b, "TIMEOUT")] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("  {node}  {verdict} "))),
            "{node} {verdict} missing:\n{table}"
        );
    }
    assert!(lines.iter().all(|l| l.chars().count() <= 100), "{table}");
    assert!(lines.iter().any(|l| l.starts_with("    TCP ")), "{table}");

    // The kubectl plugin is the same CLI, cluster-wide without --cluster.
    let plugin = cluster
        .command(
            env!("CARGO_BIN_EXE_kubectl-netprobe"),
            &["-o", "compact", "--to-port", "9091"],
        )
        .output()
        .unwrap();
    assert!(plugin.status.success(), "{}", text(&plugin.stderr));
    let out = text(&plugin.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&format!(" {b} REFUSED ")), "{out}");
    assert!(out.contains(":9091 TCP"), "{out}");
    assert_eq!(text(&plugin.stderr), down);
    // With --server, the plugin asks that one agent: no node column, nothing proxied.
    let proxied = cluster.api.requests().len();
    let one = cluster
        .command(
            env!("CARGO_BIN_EXE_kubectl-netprobe"),
            &[
                "--server",
                &cluster.agents[1].base,
                "-o",
                "compact",
                "--to-port",
                "9091",
            ],
        )
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", text(&one.stderr));
    let out = text(&one.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(!out.contains(b) && out.contains(" REFUSED "), "{out}");
    assert_eq!(cluster.api.requests().len(), proxied);
}

/// A running `observe --follow`, its lines read on a thread.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl Follower {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let lines = read(Box::new(child.stdout.take().unwrap()));
        let errors = read(Box::new(child.stderr.take().unwrap()));
        Self {
            child,
            lines,
            errors,
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
fn observe_cluster_follow_merges_the_streams() {
    let mut cluster = Cluster::start(&["fa", "fb"]);
    let follower = Follower::start(cluster.command(
        env!("CARGO_BIN_EXE_probe-agent"),
        &["--follow", "-o", "json", "--verdict", "REFUSED"],
    ));
    // Until each node's refused connection has come through (the streams open a moment
    // after the command starts), with the node named on its line.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<(String, u64)> = Vec::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "only {seen:?} came through");
        for (i, port) in [(0, 9090u16), (1, 9091)] {
            if !seen.iter().any(|(_, p)| *p == u64::from(port)) {
                let (_, client, server) = &cluster.nodes[i];
                refused(client, server, port);
            }
        }
        while let Ok(line) = follower.lines.recv_timeout(Duration::from_millis(300)) {
            let event: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(event["verdict"], "REFUSED", "{line}");
            assert_eq!(event["event"], "RST", "{line}");
            let node = event["node"].as_str().unwrap().to_string();
            let port = event["flow"]["dst_port"].as_u64().unwrap();
            let expected = if port == 9090 {
                cluster.name(0)
            } else {
                cluster.name(1)
            };
            assert_eq!(node, expected, "{line}");
            if !seen.contains(&(node.clone(), port)) {
                seen.push((node, port));
            }
        }
    }
    // An agent that goes away is named on stderr; the other's stream goes on.
    cluster.agents[0].stop();
    let ended = format!(
        "netprobe: {0} (netprobe-{0}): the stream ended",
        cluster.name(0)
    );
    let errors: Vec<String> = [(); 2]
        .iter()
        .map_while(|_| follower.errors.recv_timeout(Duration::from_secs(10)).ok())
        .collect();
    assert_eq!(
        errors,
        ["netprobe: no agent pod on 1 node: tainted", ended.as_str()]
    );
    let (_, client, server) = &cluster.nodes[1];
    refused(client, server, 9092);
    let line = follower
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("node b's stream goes on");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (event["node"].as_str(), event["flow"]["dst_port"].as_u64()),
        (Some(cluster.name(1)), Some(9092))
    );
}
