//! Why connections fail: each cause reproduced on the simulated node with real traffic
//! (NetworkPolicies as nftables drops, Services as DNAT/REJECT rules) while the API
//! server stand-in serves the matching Kubernetes objects; asserted on the API: cause,
//! the reason naming the right objects, and the next command. Healthy traffic, slow
//! handshakes and search-path expansions must never get a failure cause.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use lab::kube_stand_in::KubeStandIn;
use lab::{
    self, Node, Pod, Proto,
    kube_objects::{self, SliceEndpoint, namespace, network_policy as policy},
};
use probe_agent::model::{Cause, NodeVerdict, Verdict, VerdictKind};
use serde_json::{Value, json};

use crate::e2e::{Agent, node, sock};

const NODE_NAME: &str = "lab-node";
const INVENTORY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const ORDERS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// A pod of the cluster that runs on another node: nothing of it is on this one.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 99);

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
                NODE_NAME,
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

/// A pod object for a lab pod (or, with `ip`, for one that exists only in the API).
fn pod_object(
    name: &str,
    namespace: &str,
    ip: IpAddr,
    labels: Value,
    ports: Value,
    ready: bool,
) -> Value {
    kube_objects::Pod {
        name,
        namespace,
        uid: format!("uid-{name}"),
        owner: None,
        labels,
        ports,
        ips: vec![ip],
        ready,
        node: NODE_NAME,
    }
    .json()
}

fn lab_pod(pod: &Pod, name: &str, app: &str, ports: Value) -> Value {
    pod_object(
        name,
        &pod.k8s_namespace,
        IpAddr::V4(pod.ipv4),
        json!({"app": app}),
        ports,
        true,
    )
}

/// A Service selecting `app`, with one TCP port.
fn service(
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
    app: &str,
    port: u16,
    target: Value,
) -> Value {
    kube_objects::service(
        namespace,
        name,
        json!({"app": app}),
        &ip.to_string(),
        json!([{"port": port, "protocol": "TCP", "targetPort": target}]),
    )
}

/// An EndpointSlice of `service` listing `endpoints` (pod, address, ready) of this node.
fn slice(namespace: &str, service: &str, port: u16, endpoints: &[(&str, IpAddr, bool)]) -> Value {
    let endpoints: Vec<SliceEndpoint> = endpoints
        .iter()
        .map(|&(pod, ip, ready)| SliceEndpoint {
            pod,
            ip,
            ready,
            node: NODE_NAME,
        })
        .collect();
    kube_objects::endpoint_slice(
        namespace,
        service,
        json!([{"port": port, "protocol": "TCP"}]),
        &endpoints,
    )
}

/// Connects from `client` to each destination at once (timeouts overlap).
fn connect_all(client: &Pod, destinations: &[SocketAddr]) {
    thread::scope(|scope| {
        for to in destinations {
            scope.spawn(|| {
                let _ = client.connect_tcp(*to, Duration::from_secs(3));
            });
        }
    });
}

fn settled_to(agent: &Agent, to: SocketAddr) -> Verdict {
    agent.settled(&format!("dst_ip={}&port={}", to.ip(), to.port()))
}

fn assert_cause(v: &Verdict, verdict: VerdictKind, cause: Cause, reason: &str, next: Option<&str>) {
    assert_eq!((v.verdict, v.cause), (verdict, Some(cause)), "{v:#?}");
    assert_eq!(&*v.reason, reason, "{v:#?}");
    assert_eq!(v.next.as_deref(), next, "{v:#?}");
}

/// TCP failures: a Service without ready endpoints, a targetPort its pods do not declare,
/// nothing listening, a NetworkPolicy, a drop between two pods of the node, a server that
/// got the SYN and stayed silent, a destination elsewhere; and healthy, slow traffic.
#[test]
fn tcp_failures_say_why() {
    let mut node = node("ca");
    let checkout = node.add_pod("checkout", "production", 5).unwrap();
    let payment = node.add_pod("payment", "production", 9).unwrap();
    let db = node.add_pod("db", "production", 4).unwrap();
    let cache = node.add_pod("cache", "production", 6).unwrap();
    let worker = node.add_pod("worker", "production", 7).unwrap();
    let _servers = [
        payment.listen_tcp(8080).unwrap(),
        payment.listen_tcp(8443).unwrap(),
        db.listen_tcp(5432).unwrap(),
        cache.listen_tcp(6379).unwrap(),
        worker.listen_tcp(7000).unwrap(),
    ];
    // Services: a healthy one, one whose targetPort nobody declares, one whose only pod
    // is not ready (kube-proxy rejects it).
    node.add_service(Proto::Tcp, API_VIP.into(), 80, sock(payment.ipv4, 8080))
        .unwrap();
    node.add_service(
        Proto::Tcp,
        INVENTORY_VIP.into(),
        80,
        sock(payment.ipv4, 9091),
    )
    .unwrap();
    node.reject_service(Proto::Tcp, ORDERS_VIP.into(), 80)
        .unwrap();
    // The policy on db, the firewall between checkout and cache, and one inside worker.
    node.drop_traffic(
        Proto::Tcp,
        Some(checkout.ipv4.into()),
        Some(db.ipv4.into()),
        Some(5432),
    )
    .unwrap();
    node.drop_traffic(
        Proto::Tcp,
        Some(checkout.ipv4.into()),
        Some(cache.ipv4.into()),
        Some(6379),
    )
    .unwrap();
    worker.drop_tcp_in(7000).unwrap();
    // The first SYN to payment:8443 is lost, the retransmission gets through: slow.
    node.nft(&format!(
        "{}add rule inet {} filter_forward ip daddr {} tcp dport 8443 tcp flags syn quota until 60 bytes drop\n",
        lab::nft::preamble(),
        lab::nft::TABLE,
        payment.ipv4
    ))
    .unwrap();

    let cluster = Cluster::new(&node);
    let orders_ip = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 77));
    cluster.apply([
        namespace("production"),
        lab_pod(&checkout, "checkout-7d9f-abcde", "checkout", json!([])),
        lab_pod(
            &payment,
            "payment-5c6b-x2k9p",
            "payment",
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                       {"name": "https", "containerPort": 8443, "protocol": "TCP"}]),
        ),
        lab_pod(&db, "postgres-0", "db", json!([{"containerPort": 5432}])),
        lab_pod(&cache, "redis-0", "cache", json!([{"containerPort": 6379}])),
        lab_pod(
            &worker,
            "worker-0",
            "worker",
            json!([{"containerPort": 7000}]),
        ),
        pod_object(
            "orders-6f7d-qwert",
            "production",
            orders_ip,
            json!({"app": "orders"}),
            json!([{"containerPort": 8080}]),
            false,
        ),
        service("production", "api", API_VIP, "payment", 80, json!(8080)),
        slice(
            "production",
            "api",
            8080,
            &[("payment-5c6b-x2k9p", payment.ipv4.into(), true)],
        ),
        service(
            "production",
            "inventory",
            INVENTORY_VIP,
            "payment",
            80,
            json!(9091),
        ),
        slice(
            "production",
            "inventory",
            9091,
            &[("payment-5c6b-x2k9p", payment.ipv4.into(), true)],
        ),
        service(
            "production",
            "orders",
            ORDERS_VIP,
            "orders",
            80,
            json!(8080),
        ),
        slice(
            "production",
            "orders",
            8080,
            &[("orders-6f7d-qwert", orders_ip, false)],
        ),
        policy(
            "production",
            "db-allow-api",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                             "ports": [{"port": 5432}]}],
            }),
        ),
        // Allows checkout to cache: the drop between them is the node's, not policy's.
        policy(
            "production",
            "cache-allow-checkout",
            json!({
                "podSelector": {"matchLabels": {"app": "cache"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "checkout"}}}]}],
            }),
        ),
    ]);
    let agent = cluster.agent(&node, 6);

    // Healthy through a Service, and slow (one SYN lost): never a cause.
    checkout
        .connect_tcp(sock(API_VIP, 80), Duration::from_secs(3))
        .unwrap();
    checkout
        .connect_tcp(sock(payment.ipv4, 8443), Duration::from_secs(5))
        .unwrap();
    let healthy = settled_to(&agent, sock(API_VIP, 80));
    assert_eq!(
        (healthy.verdict, healthy.cause, healthy.next),
        (VerdictKind::Ok, None, None)
    );
    let slow = settled_to(&agent, sock(payment.ipv4, 8443));
    assert_eq!(
        (slow.verdict, slow.cause),
        (VerdictKind::Ok, None),
        "{slow:#?}"
    );
    assert!(slow.reason.contains("slow: 2 SYNs"), "{slow:#?}");
    // Its retransmission came at the 1 s timeout: the verdict never flapped to TIMEOUT.
    let slow_events: serde_json::Value = agent.get(&format!(
        "/v1/flows?dst_ip={}&port=8443&limit=100",
        payment.ipv4
    ));
    let slow_events = slow_events["flows"].as_array().expect("flows").clone();
    assert!(!slow_events.is_empty());
    assert!(
        slow_events.iter().all(|e| e["verdict"] != "TIMEOUT"),
        "{slow_events:#?}"
    );

    // Refused and unreachable.
    let _ = checkout.connect_tcp(sock(ORDERS_VIP, 80), Duration::from_secs(2));
    let _ = checkout.connect_tcp(sock(INVENTORY_VIP, 80), Duration::from_secs(2));
    let _ = checkout.connect_tcp(sock(payment.ipv4, 9092), Duration::from_secs(2));
    assert_cause(
        &settled_to(&agent, sock(ORDERS_VIP, 80)),
        VerdictKind::Unreachable,
        Cause::NoReadyEndpoints,
        "SYN answered by ICMP destination unreachable: Service production/orders has no ready endpoints: its selector app=orders matches 1 pod, 1 not ready (orders-6f7d-qwert)",
        Some("kubectl get endpointslices -l kubernetes.io/service-name=orders -n production"),
    );
    let mismatch = settled_to(&agent, sock(INVENTORY_VIP, 80));
    assert_eq!(
        mismatch.cause,
        Some(Cause::TargetPortMismatch),
        "{mismatch:#?}"
    );
    assert!(
        mismatch.reason.ends_with(
            ": Service production/inventory port 80 sends to targetPort 9091, but pod payment-5c6b-x2k9p declares 8080/TCP (http), 8443/TCP (https)"
        ),
        "{mismatch:#?}"
    );
    assert_eq!(
        mismatch.next.as_deref(),
        Some("kubectl get service inventory -n production -o jsonpath='{.spec.ports}'")
    );
    let refused = settled_to(&agent, sock(payment.ipv4, 9092));
    assert_eq!(refused.cause, Some(Cause::NothingListening), "{refused:#?}");
    assert!(
        refused.reason.ends_with(
            ": nothing listens on port 9092 of pod production/payment-5c6b-x2k9p (it declares 8080/TCP (http), 8443/TCP (https))"
        ),
        "{refused:#?}"
    );

    // Timeouts, at once.
    connect_all(
        &checkout,
        &[
            sock(db.ipv4, 5432),
            sock(cache.ipv4, 6379),
            sock(worker.ipv4, 7000),
            sock(REMOTE_POD, 80),
        ],
    );
    let policy = settled_to(&agent, sock(db.ipv4, 5432));
    assert_eq!(
        (policy.verdict, policy.cause),
        (VerdictKind::Timeout, Some(Cause::NetworkPolicy)),
        "{policy:#?}"
    );
    assert!(
        policy.reason.ends_with(
            " and no answer: NetworkPolicy production/db-allow-api selects postgres-0 for ingress and no rule admits production/checkout-7d9f-abcde on TCP 5432"
        ),
        "{policy:#?}"
    );
    assert_eq!(
        policy.next.as_deref(),
        Some("kubectl describe networkpolicy db-allow-api -n production")
    );
    let between = settled_to(&agent, sock(cache.ipv4, 6379));
    assert_eq!(between.cause, Some(Cause::DroppedBetween), "{between:#?}");
    assert!(
        between.reason.contains("both ends are on node lab-node and the SYN left the client's veth but never reached the server's"),
        "{between:#?}"
    );
    assert!(
        between.reason.contains("cache-allow-checkout"),
        "policy allows it: {between:#?}"
    );
    let silent = settled_to(&agent, sock(worker.ipv4, 7000));
    assert_eq!(silent.cause, Some(Cause::ServerSilent), "{silent:#?}");
    assert!(
        silent.reason.contains(&format!(
            "the SYN reached pod production/worker-0 ({}) through {}",
            sock(worker.ipv4, 7000),
            worker.host_if
        )),
        "{silent:#?}"
    );
    let remote = settled_to(&agent, sock(REMOTE_POD, 80));
    assert_eq!(remote.cause, Some(Cause::NoAnswer), "{remote:#?}");
    assert!(
        remote
            .reason
            .contains("only the client side was seen (10.244.9.99 is not known on this node)"),
        "{remote:#?}"
    );

    // `--events`: one Kubernetes Event on the client pod per failing cause and destination.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = cluster.api.events();
        if events.len() >= 7 {
            break events;
        }
        assert!(Instant::now() < deadline, "Events written: {events:#?}");
        thread::sleep(Duration::from_millis(100));
    };
    let mut reasons: Vec<&str> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "DroppedBetween",
            "NetworkPolicy",
            "NoAnswer",
            "NoReadyEndpoints",
            "NothingListening",
            "ServerSilent",
            "TargetPortMismatch"
        ],
        "{events:#?}"
    );
    for event in &events {
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["regarding"]["kind"], "Pod");
        assert_eq!(event["regarding"]["name"], "checkout-7d9f-abcde");
        assert_eq!(event["regarding"]["uid"], "uid-checkout-7d9f-abcde");
        // The remote address names no pod, so there is no command to run there.
        let has_next = event["reason"] != "NoAnswer";
        let note = event["note"].as_str().unwrap();
        assert_eq!(note.contains(" Next: "), has_next, "{event:#?}");
    }

    // Every failure has a cause; nothing that worked has one.
    for v in agent.verdicts("") {
        assert_eq!(v.verdict.is_failure(), v.cause.is_some(), "{v:#?}");
    }
    let exposed = agent.metrics();
    for (cause, n) in [
        ("no_ready_endpoints", 1),
        ("target_port_mismatch", 1),
        ("nothing_listening", 1),
        ("network_policy", 1),
        ("dropped_between", 1),
        ("server_silent", 1),
        ("no_answer", 1),
    ] {
        assert!(
            exposed.contains(&format!("netprobe_causes_total{{cause=\"{cause}\"}} {n}\n")),
            "{cause}: {exposed}"
        );
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

/// DNS: a wrong Service name is one failed lookup naming what was asked and the Service
/// meant; search-path expansions of lookups that succeed are no failures; a NetworkPolicy
/// denying egress is named on DNS timeouts.
#[test]
fn dns_failures_say_why() {
    let mut node = node("cd");
    let dns_pod = node.add_pod("kube-dns", "kube-system", 2).unwrap();
    let checkout = node.add_pod("checkout", "production", 5).unwrap();
    let batch = node.add_pod("batch", "jobs", 6).unwrap();
    let _dns = lab::start_dns(
        &dns_pod,
        &[
            (
                "payment-service.production.svc.cluster.local",
                IpAddr::V4(API_VIP),
            ),
            ("api.example.com", IpAddr::V4(Ipv4Addr::new(10, 96, 0, 99))),
        ],
    )
    .unwrap();
    for proto in [Proto::Udp, Proto::Tcp] {
        node.add_service(proto, lab::DEFAULT_DNS.into(), 53, sock(dns_pod.ipv4, 53))
            .unwrap();
    }
    node.drop_traffic(Proto::Udp, Some(batch.ipv4.into()), None, Some(53))
        .unwrap();
    let cluster = Cluster::new(&node);
    cluster.apply([
        namespace("production"),
        namespace("jobs"),
        namespace("kube-system"),
        lab_pod(
            &dns_pod,
            "coredns-5d78-abcde",
            "kube-dns",
            json!([{"containerPort": 53, "protocol": "UDP"}]),
        ),
        lab_pod(&checkout, "checkout-7d9f-abcde", "checkout", json!([])),
        lab_pod(&batch, "report-2940-7xq2m", "report", json!([])),
        service(
            "kube-system",
            "kube-dns",
            lab::DEFAULT_DNS,
            "kube-dns",
            53,
            json!(53),
        ),
        service(
            "production",
            "payment-service",
            API_VIP,
            "payment",
            80,
            json!(8080),
        ),
        policy(
            "jobs",
            "default-deny-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
    ]);
    let agent = cluster.agent(&node, 3);

    let getent = |pod: &Pod, name: &str| {
        pod.command("getent")
            .args(["hosts", name])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(getent(&checkout, "payment-service"));
    assert!(getent(&checkout, "api.example.com"));
    assert!(!getent(&checkout, "paymnt-service"));
    // Held NXDOMAINs settle (each waits up to the search window): the two failed lookups
    // are waited for, not slept on.
    let query = format!("src_ip={}&protocol=udp", checkout.ipv4);
    let settle_by = Instant::now() + Duration::from_secs(10);
    let mut from_checkout = agent.verdicts(&query);
    while from_checkout
        .iter()
        .filter(|v| v.verdict.is_failure())
        .count()
        < 2
        && Instant::now() < settle_by
    {
        thread::sleep(Duration::from_millis(100));
        from_checkout = agent.verdicts(&query);
    }
    let failures: Vec<&Verdict> = from_checkout
        .iter()
        .filter(|v| v.verdict.is_failure())
        .collect();
    assert!(!failures.is_empty(), "{from_checkout:#?}");
    for failed in &failures {
        assert_eq!(
            (failed.verdict, failed.cause),
            (VerdictKind::Nxdomain, Some(Cause::NameNotFound)),
            "{from_checkout:#?}"
        );
        assert!(
            failed
                .reason
                .starts_with("paymnt-service: NXDOMAIN for each of the 4 names of its search path"),
            "{failed:#?}"
        );
        assert!(
            failed.reason.ends_with(
                ": no Service paymnt-service in production; did you mean payment-service?"
            ),
            "{failed:#?}"
        );
        assert_eq!(
            failed.next.as_deref(),
            Some("kubectl get service payment-service -n production")
        );
    }
    let expansions: Vec<&Verdict> = from_checkout
        .iter()
        .filter(|v| v.cause == Some(Cause::SearchPathExpansion))
        .collect();
    assert!(
        expansions.iter().all(|v| v.verdict == VerdictKind::Ok),
        "{expansions:#?}"
    );
    // api.example.com went through 3 expansions per lookup before its answer, and so did
    // each failed lookup of paymnt-service before its last name.
    assert_eq!(expansions.len() % 3, 0, "{expansions:#?}");
    assert!(
        expansions
            .iter()
            .any(|v| v.dns.as_ref().unwrap().qname
                == "api.example.com.production.svc.cluster.local."),
        "{expansions:#?}"
    );
    // `getent hosts` looks up AAAA, then A: two lookups per name, each expanded thrice
    // (api.example.com and paymnt-service), and each failed lookup of paymnt-service
    // is one failure.
    assert_eq!(failures.len(), 2, "{from_checkout:#?}");
    let exposed = agent.metrics();
    for counted in [
        "netprobe_causes_total{cause=\"name_not_found\"} 2\n",
        "netprobe_dns_search_expansions_total 12\n",
    ] {
        assert!(exposed.contains(counted), "{counted}{exposed}");
    }

    // DNS blocked for batch, whose namespace denies all egress. The resolver would retry
    // for a minute: its first queries are enough.
    let mut blocked_lookup = batch
        .command("getent")
        .args(["hosts", "payment-service"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let blocked = loop {
        let timeouts = agent.verdicts(&format!("src_ip={}&verdict=DNS_TIMEOUT", batch.ipv4));
        if !timeouts.is_empty() {
            break timeouts;
        }
        assert!(Instant::now() < deadline, "no DNS_TIMEOUT from batch");
        thread::sleep(Duration::from_millis(100));
    };
    let _ = blocked_lookup.kill();
    let _ = blocked_lookup.wait();
    for v in &blocked {
        assert_eq!(v.cause, Some(Cause::NetworkPolicy), "{v:#?}");
        assert!(
            v.reason.contains("NetworkPolicy jobs/default-deny-egress"),
            "{v:#?}"
        );
        assert_eq!(
            v.next.as_deref(),
            Some("kubectl describe networkpolicy default-deny-egress -n jobs")
        );
    }
}

/// The whole node's datapath down: one node-level verdict instead of a row per flow, the
/// rows still there on request.
#[test]
fn node_datapath_down_is_one_node_verdict() {
    let mut node = node("cn");
    let clients = [
        node.add_pod("a", "production", 5).unwrap(),
        node.add_pod("b", "production", 6).unwrap(),
    ];
    let servers = [
        node.add_pod("x", "production", 9).unwrap(),
        node.add_pod("y", "production", 10).unwrap(),
    ];
    let _listeners: Vec<_> = servers.iter().map(|s| s.listen_tcp(80).unwrap()).collect();
    node.drop_traffic(Proto::Tcp, None, None, None).unwrap();
    let agent = Agent::start(&node, &["--node-name", NODE_NAME]);
    thread::scope(|scope| {
        for client in &clients {
            scope.spawn(|| connect_all(client, &servers.each_ref().map(|s| sock(s.ipv4, 80))));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let node_verdicts = loop {
        #[derive(serde::Deserialize)]
        struct Body {
            verdicts: Vec<Verdict>,
            node: Vec<NodeVerdict>,
        }
        let body: Body = agent.get("/v1/verdicts");
        if !body.node.is_empty() {
            assert!(
                body.verdicts
                    .iter()
                    .all(|v| v.cause != Some(Cause::NodeDatapath)),
                "folded rows listed: {:#?}",
                body.verdicts
            );
            break body.node;
        }
        assert!(
            Instant::now() < deadline,
            "no node verdict: {:#?}",
            body.verdicts
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(node_verdicts.len(), 1);
    let down = &node_verdicts[0];
    assert_eq!(
        (down.verdict, down.cause),
        (VerdictKind::Timeout, Cause::NodeDatapath)
    );
    assert_eq!(
        (down.failing_pairs, down.pairs, down.sources),
        (4, 4, 2),
        "{down:#?}"
    );
    assert!(
        down.reason.contains("the node's datapath is down"),
        "{down:#?}"
    );
    assert_eq!(
        down.next.as_deref(),
        Some("kubectl get pods -A -o wide --field-selector spec.nodeName=lab-node")
    );
    let folded = agent.verdicts("cause=node_datapath");
    assert_eq!(folded.len(), 4, "{folded:#?}");
    assert!(folded.iter().all(|v| v.verdict == VerdictKind::Timeout));
    assert_eq!(agent.verdicts("expand=true&verdict=TIMEOUT").len(), 4);
    assert!(agent.metrics().contains("netprobe_node_datapath_down 1\n"));
}
