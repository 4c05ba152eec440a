//! Enrichment against a Kubernetes API stand-in serving recorded objects (tests/kube/):
//! the real kube-rs client and watchers, the real tracker and metrics; no root needed.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use lab::craft;
use probe_agent::{
    config::KubeMode,
    decode::{HookCount, Packet, flow_from_key},
    enrich::{self, KubeOptions, Names},
    metrics::Metrics,
    model::{Endpoint, Verdict, VerdictKind},
    track::{Clock, Tracker, TrackerConfig},
};
use probe_ebpf::{Direction, EventKind, HookKey, IPPROTO_TCP};
use serde_json::json;

mod common;

use common::StandIn;

/// The stand-in with the recorded cluster listed by the agent-side watcher.
async fn cluster() -> StandIn {
    let cluster = StandIn::start("enrich").await;
    until_names(&cluster, "the recorded cluster is listed", |names| {
        names.source(ip("10.244.1.5")).is_some()
            && names.destination(ip("10.96.45.123"), 80).is_some()
            && names
                .source(ip("10.244.1.6"))
                .is_some_and(|e| e.service.is_some())
    })
    .await;
    cluster
}

/// Waits until the names satisfy `check`.
async fn until_names(cluster: &StandIn, what: &str, check: impl Fn(&Names) -> bool) {
    common::until(what, || check(&cluster.names)).await;
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn endpoint(
    namespace: &str,
    pod: Option<&str>,
    workload: Option<&str>,
    service: Option<&str>,
    node: Option<&str>,
) -> Endpoint {
    Endpoint {
        namespace: Some(namespace.into()),
        pod: pod.map(Into::into),
        workload: workload.map(Into::into),
        service: service.map(Into::into),
        node: node.map(Into::into),
    }
}

/// One TCP flow through the real tracker: SYN then `answer` (or nothing: a timeout).
fn verdict_of(
    names: &Names,
    metrics: &Arc<Metrics>,
    client: &str,
    server: &str,
    answer: Option<EventKind>,
) -> Verdict {
    let mut tracker = Tracker::new(
        TrackerConfig {
            syn_timeout: Duration::from_millis(100),
            ..TrackerConfig::default()
        },
        Clock::new(),
        Arc::clone(metrics),
    )
    .with_names(names.clone());
    let client: SocketAddr = client.parse().unwrap();
    let server: SocketAddr = server.parse().unwrap();
    let key = craft::flow_key(IPPROTO_TCP, client, server);
    // As the client's veth sees them: its SYN going out, the answer coming in.
    let packet = |kind, at| {
        let (tuple, direction) = match kind {
            EventKind::Syn => (key, Direction::FromPod),
            _ => (key.reversed(), Direction::ToPod),
        };
        Packet {
            kind,
            direction,
            ifindex: 7,
            monotonic: Duration::from_millis(at),
            tuple: flow_from_key(&tuple).unwrap(),
            hook: HookKey {
                tuple,
                ifindex: 7,
                direction: direction as u32,
            },
            counted: HookCount::default(),
            pod: client.ip(),
            tcp: None,
            dns: None,
        }
    };
    tracker.on_packet(&packet(EventKind::Syn, 1000));
    match answer {
        Some(kind) => tracker.on_packet(&packet(kind, 1001)),
        None => tracker.sweep(Duration::from_millis(2000)),
    }
    let verdicts = tracker.verdicts(&|_| true, 10);
    assert_eq!(verdicts.len(), 1);
    verdicts.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_name_pods_workloads_and_services() {
    let cluster = cluster().await;
    let names = &cluster.names;

    // Deployment pod → Service ClusterIP.
    let v = verdict_of(
        names,
        &cluster.metrics,
        "10.244.1.5:41234",
        "10.96.45.123:80",
        None,
    );
    assert_eq!(v.verdict, VerdictKind::Timeout);
    assert_eq!(
        v.src.as_deref(),
        Some(&endpoint(
            "production",
            Some("checkout-api-5d4e3c2f9b-abc12"),
            Some("checkout-api"),
            None,
            Some("kind-worker")
        ))
    );
    assert_eq!(
        v.dst.as_deref(),
        Some(&endpoint(
            "production",
            None,
            None,
            Some("payment-service"),
            None
        ))
    );
    // The JSON the API serves.
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(
        json["src"],
        json!({"namespace": "production", "pod": "checkout-api-5d4e3c2f9b-abc12",
               "workload": "checkout-api", "node": "kind-worker"})
    );
    assert_eq!(
        json["dst"],
        json!({"namespace": "production", "service": "payment-service"})
    );

    // StatefulSet pod reached directly (headless Service): pod, workload and Service.
    let v = verdict_of(
        names,
        &cluster.metrics,
        "[fd00:10:244:1::5]:41000",
        "10.244.2.7:5432",
        Some(EventKind::Rst),
    );
    assert_eq!(v.verdict, VerdictKind::Refused);
    assert_eq!(
        v.src.as_deref().and_then(|e| e.pod.as_deref()),
        Some("checkout-api-5d4e3c2f9b-abc12"),
        "the pod's IPv6 address names it too"
    );
    assert_eq!(
        v.dst.as_deref(),
        Some(&endpoint(
            "production",
            Some("postgres-0"),
            Some("postgres"),
            Some("postgres"),
            Some("kind-worker2")
        ))
    );

    // Dual-stack Service: its IPv6 ClusterIP names it.
    assert_eq!(
        names
            .destination(ip("fd00:10:96::2d7b"), 80)
            .and_then(|e| e.service.clone())
            .as_deref(),
        Some("payment-service")
    );
    // DNS: the kube-dns ClusterIP and the CoreDNS pod behind it.
    assert_eq!(
        names.destination(ip("10.96.0.10"), 53).as_deref(),
        Some(&endpoint("kube-system", None, None, Some("kube-dns"), None))
    );
    assert_eq!(
        names
            .source(ip("10.244.0.3"))
            .and_then(|e| e.workload.clone())
            .as_deref(),
        Some("coredns")
    );
    // The API server (a static pod on the host network) behind the `kubernetes` Service,
    // whose EndpointSlice names no pod: named by address and port as that Service's
    // backend on its node; the same address on another port is only the node.
    assert_eq!(
        names.destination(ip("172.18.0.2"), 6443).as_deref(),
        Some(&endpoint(
            "default",
            None,
            None,
            Some("kubernetes"),
            Some("kind-control-plane")
        ))
    );
    let node = names.destination(ip("172.18.0.2"), 10250).unwrap();
    assert_eq!(node.node.as_deref(), Some("kind-control-plane"));
    assert_eq!(node.pod, None, "a node port is not a pod");
    // A host-network DaemonSet pod shares the node's address: the source is the node.
    let source = names.source(ip("172.18.0.3")).unwrap();
    assert_eq!(
        (source.node.as_deref(), source.pod.as_deref()),
        (Some("kind-worker"), None)
    );
    // Nothing known: null.
    assert_eq!(names.source(ip("192.0.2.1")), None);

    // The metric labels carry the same names.
    let text = cluster.metrics.encode();
    for line in [
        "netprobe_verdicts_total{verdict=\"TIMEOUT\",src_namespace=\"production\",src_workload=\"checkout-api\",dst_namespace=\"production\",dst_workload=\"\",dst_service=\"payment-service\",dst_port=\"80\"} 1",
        "netprobe_verdicts_total{verdict=\"REFUSED\",src_namespace=\"production\",src_workload=\"checkout-api\",dst_namespace=\"production\",dst_workload=\"postgres\",dst_service=\"postgres\",dst_port=\"5432\"} 1",
        "netprobe_kube_objects{kind=\"pods\"} 7",
        "netprobe_kube_objects{kind=\"services\"} 4",
        "netprobe_kube_objects{kind=\"endpointslices\"} 4",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }

    // Least privilege: only reads, only of what the ClusterRole in deploy/ grants.
    let allowed = [
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/namespaces",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ];
    let requests = cluster.api.requests();
    assert!(!requests.is_empty());
    for (method, path) in requests {
        let resource = path.split('?').next().unwrap();
        assert_eq!(method, "GET", "{path}");
        assert!(allowed.contains(&resource), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_ip_is_named_after_its_newest_pod_and_deletions_are_seen() {
    let cluster = cluster().await;
    let job_pod = || {
        cluster
            .names
            .source(ip("10.244.1.9"))
            .and_then(|e| e.pod.clone())
    };
    // The finished Job pod still exists (kept for its logs): its old IP names it.
    assert_eq!(job_pod().as_deref(), Some("report-29400000-7xq2m"));

    // A new pod gets the same IP: it wins, though the finished one is still listed.
    let mut newer: serde_json::Value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-6b8f9c7d5-q8w2e", "namespace": "staging",
                     "uid": "c0ffee00-0000-4000-8000-000000000001",
                     "creationTimestamp": "2026-11-21T12:00:00Z",
                     "labels": {"app": "web", "pod-template-hash": "6b8f9c7d5"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "name": "web-6b8f9c7d5", "uid": "c0ffee00-0000-4000-8000-0000000000aa",
                         "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": "kind-worker", "containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Pending", "hostIP": "172.18.0.3", "podIP": "10.244.1.9",
                   "podIPs": [{"ip": "10.244.1.9"}]},
    });
    cluster.api.apply(newer.clone()).unwrap();
    until_names(&cluster, "the new pod owns 10.244.1.9", |_| {
        job_pod().as_deref() == Some("web-6b8f9c7d5-q8w2e")
    })
    .await;
    assert_eq!(
        cluster
            .names
            .source(ip("10.244.1.9"))
            .and_then(|e| e.workload.clone())
            .as_deref(),
        Some("web")
    );

    // Even if the old pod is updated after the new one (a status change), newest wins.
    let mut old = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube/20-pods.json"),
        )
        .unwrap(),
    )
    .unwrap()["items"][6]
        .clone();
    old["metadata"]["labels"]["touched"] = json!("yes");
    cluster.api.apply(old).unwrap();
    newer["status"]["phase"] = json!("Running");
    cluster.api.apply(newer).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job_pod().as_deref(), Some("web-6b8f9c7d5-q8w2e"));

    // The new pod is deleted: the address goes back to the pod still holding it.
    cluster
        .api
        .delete("Pod", "staging", "web-6b8f9c7d5-q8w2e")
        .unwrap();
    until_names(&cluster, "the deletion is seen", |_| {
        job_pod().as_deref() == Some("report-29400000-7xq2m")
    })
    .await;
    // Both gone: nothing is named.
    cluster
        .api
        .delete("Pod", "jobs", "report-29400000-7xq2m")
        .unwrap();
    until_names(&cluster, "the address is unknown", |names| {
        names.source(ip("10.244.1.9")).is_none()
    })
    .await;
    // A deleted Service's ClusterIP no longer names it.
    cluster
        .api
        .delete("Service", "production", "payment-service")
        .unwrap();
    until_names(&cluster, "the Service is gone", |names| {
        names.destination(ip("10.96.45.123"), 80).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_keep_serving_while_the_api_is_down_and_catch_up_after() {
    let cluster = cluster().await;
    cluster.api.set_down(true);
    // Whatever changes meanwhile, lookups go on with the names last seen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cluster
            .names
            .source(ip("10.244.1.5"))
            .and_then(|e| e.workload.clone())
            .as_deref(),
        Some("checkout-api")
    );
    assert!(
        cluster.metrics.encode().lines().any(|l| l
            .starts_with("netprobe_kube_watch_errors_total{kind=\"pods\"}")
            && !l.ends_with(" 0")),
        "failed watches are counted"
    );
    // Changed while the agent could not see: a pod deleted, a Service added.
    cluster
        .api
        .delete("Pod", "production", "checkout-api-5d4e3c2f9b-abc12")
        .unwrap();
    cluster
        .api
        .apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "orders", "namespace": "production", "uid": "5e0a-9",
                         "creationTimestamp": "2026-11-21T12:00:00Z"},
            "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"],
                     "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
                     "selector": {"app": "orders"}, "type": "ClusterIP"},
        }))
        .unwrap();
    cluster.api.set_down(false);
    // kube-rs retries with backoff (0.8 s, growing): allow for a few rounds.
    until_names(&cluster, "the watch is back and caught up", |names| {
        names.source(ip("10.244.1.5")).is_none()
            && names
                .destination(ip("10.96.0.30"), 80)
                .is_some_and(|e| e.service.as_deref() == Some("orders"))
    })
    .await;
}

#[test]
fn without_a_cluster_enrichment_is_off_and_verdicts_carry_ips_only() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(enrich::client(&KubeOptions {
        mode: KubeMode::Off,
        kubeconfig: Some("/nonexistent".into()),
    }));
    assert!(client.unwrap().is_none());
    let Err(err) = runtime.block_on(enrich::client(&KubeOptions {
        mode: KubeMode::Auto,
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
    })) else {
        panic!("a missing kubeconfig is an error");
    };
    assert!(
        format!("{err:#}").contains("/nonexistent/kubeconfig"),
        "{err:#}"
    );
}
