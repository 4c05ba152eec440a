//! The demo node's Kubernetes objects, as a real API server would return them, served
//! to the agent by [`xtask::kube_stand_in`] so its verdicts carry pod, workload and
//! Service names.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use xtask::lab::{self, Node};

/// The demo's Kubernetes node name.
pub const NODE: &str = "demo-node";

/// How each lab pod appears in Kubernetes: its pod name and the controller that owns it
/// (kind, name), keyed by the lab's pod name.
const PODS: [(&str, &str, (&str, &str)); 5] = [
    (
        "kube-dns",
        "coredns-668d6bf9bc-4xkqz",
        ("ReplicaSet", "coredns-668d6bf9bc"),
    ),
    (
        "payment",
        "payment-7c9f8b6d4-x2k9p",
        ("ReplicaSet", "payment-7c9f8b6d4"),
    ),
    ("db", "postgres-0", ("StatefulSet", "postgres")),
    (
        "checkout",
        "checkout-5d4e3c2f9b-abc12",
        ("ReplicaSet", "checkout-5d4e3c2f9b"),
    ),
    ("batch", "report-29400000-7xq2m", ("Job", "report-29400000")),
];

/// The Kubernetes name of a lab pod.
pub fn pod_name(lab_name: &str) -> &'static str {
    PODS.iter()
        .find(|(lab, _, _)| *lab == lab_name)
        .map_or("", |(_, name, _)| name)
}

/// Pods, Services and EndpointSlices of the demo node.
pub fn objects(node: &Node, payment_vip: Ipv4Addr, orders_vip: Ipv4Addr) -> Vec<Value> {
    let mut objects = Vec::new();
    for pod in node.pods() {
        let Some((_, name, (owner_kind, owner))) = PODS.iter().find(|(lab, _, _)| *lab == pod.name)
        else {
            continue;
        };
        let mut labels = json!({"app": pod.name});
        if *owner_kind == "ReplicaSet" {
            // Deployments name ReplicaSets `<deployment>-<pod-template-hash>`.
            let hash = owner.rsplit('-').next().unwrap_or_default();
            labels["pod-template-hash"] = json!(hash);
        }
        objects.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": pod.k8s_namespace,
                "uid": format!("00000000-0000-4000-8000-{:012}", objects.len()),
                "creationTimestamp": "2026-11-23T09:00:00Z",
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": if *owner_kind == "Job" { "batch/v1" } else { "apps/v1" },
                    "kind": owner_kind, "name": owner, "uid": "00000000-0000-4000-8000-0000000000aa",
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {"nodeName": NODE, "containers": [{"name": pod.name, "image": "demo"}]},
            "status": {
                "phase": "Running", "hostIP": lab::GATEWAY_V4.to_string(),
                "podIP": pod.ipv4.to_string(),
                "podIPs": [{"ip": pod.ipv4.to_string()}, {"ip": pod.ipv6.to_string()}],
            },
        }));
    }
    let service = |namespace: &str, name: &str, app: &str, ip: &str, port: u16, target: u16| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("svc-{name}"),
                         "creationTimestamp": "2026-11-23T09:00:00Z"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                     "selector": {"app": app},
                     "ports": [{"port": port, "protocol": "TCP", "targetPort": target}]},
        })
    };
    let slice = |namespace: &str, service: &str, port: u16, backend: Option<(&str, String)>| {
        let endpoints: Vec<Value> = backend
            .into_iter()
            .map(|(pod, ip)| {
                json!({"addresses": [ip], "conditions": {"ready": true},
                       "nodeName": NODE,
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}})
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-demo1"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    };
    let backend = |lab_name: &str| {
        node.pods()
            .iter()
            .find(|p| p.name == lab_name)
            .map(|p| (pod_name(lab_name), p.ipv4.to_string()))
    };
    objects.extend([
        service(
            "kube-system",
            "kube-dns",
            "kube-dns",
            &lab::DEFAULT_DNS.to_string(),
            53,
            53,
        ),
        slice("kube-system", "kube-dns", 53, backend("kube-dns")),
        service(
            "production",
            "payment-service",
            "payment",
            &payment_vip.to_string(),
            80,
            8080,
        ),
        slice("production", "payment-service", 8080, backend("payment")),
        // A Service whose pods are all gone: no endpoints.
        service(
            "production",
            "orders",
            "orders",
            &orders_vip.to_string(),
            80,
            8080,
        ),
        slice("production", "orders", 8080, None),
        // Headless: clients reach the pod directly.
        service("production", "postgres", "db", "None", 5432, 5432),
        slice("production", "postgres", 5432, backend("db")),
    ]);
    objects
}
