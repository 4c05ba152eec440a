//! The incidents' Kubernetes objects, as a real API server would return them, served
//! to the agent by [`crate::kube_stand_in`]: its verdicts carry pod, workload and Service
//! names, and its diagnosis reads what it needs to say why a flow failed (pod labels,
//! declared ports and readiness, Service selectors and targetPorts, EndpointSlice
//! readiness, Namespaces and NetworkPolicies).

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Value, json};

use super::{INVENTORY_VIP, LEDGER_VIP, LEGACY_DNS_VIP, ORDERS_VIP, PAYMENT_VIP, SLOW_PORT};
use crate::{
    self as lab, Node,
    kube_objects::{
        Pod, SliceEndpoint, endpoint_slice, namespace, network_policy as policy, service,
    },
};

/// The node's Kubernetes name (start the agent with `--node-name` this).
pub const NODE: &str = "demo-node";

/// The `orders` pod exists only in the API (it is not ready, so no lab pod backs it).
pub const ORDERS_POD: &str = "orders-6f7d8c9b5-qwert";
pub const ORDERS_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 30);
/// The `ledger` pod runs on another node: the demo node only sees its clients' side.
pub const LEDGER_POD: &str = "ledger-0";
pub const LEDGER_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const OTHER_NODE: &str = "demo-node-2";

/// How a lab pod appears in Kubernetes.
struct PodSpec {
    /// The lab's pod name.
    lab: &'static str,
    /// Its Kubernetes name.
    name: &'static str,
    /// The controller that owns it: kind, name.
    owner: (&'static str, &'static str),
    labels: &'static [(&'static str, &'static str)],
    /// Container ports: number, name, protocol.
    ports: &'static [(u16, &'static str, &'static str)],
}

const PODS: [PodSpec; 8] = [
    PodSpec {
        lab: "kube-dns",
        name: "coredns-668d6bf9bc-4xkqz",
        owner: ("ReplicaSet", "coredns-668d6bf9bc"),
        labels: &[("k8s-app", "kube-dns")],
        ports: &[(53, "dns", "UDP"), (53, "dns-tcp", "TCP")],
    },
    PodSpec {
        lab: "payment",
        name: "payment-7c9f8b6d4-x2k9p",
        owner: ("ReplicaSet", "payment-7c9f8b6d4"),
        labels: &[("app", "payment")],
        ports: &[(8080, "http", "TCP"), (SLOW_PORT, "https", "TCP")],
    },
    PodSpec {
        lab: "db",
        name: "postgres-0",
        owner: ("StatefulSet", "postgres"),
        labels: &[("app", "db")],
        ports: &[(5432, "postgres", "TCP")],
    },
    PodSpec {
        lab: "checkout",
        name: "checkout-5d4e3c2f9b-abc12",
        owner: ("ReplicaSet", "checkout-5d4e3c2f9b"),
        labels: &[("app", "checkout")],
        ports: &[],
    },
    PodSpec {
        lab: "batch",
        name: "report-29400000-7xq2m",
        owner: ("Job", "report-29400000"),
        labels: &[("app", "report")],
        ports: &[],
    },
    PodSpec {
        lab: "cache",
        name: "redis-0",
        owner: ("StatefulSet", "redis"),
        labels: &[("app", "cache")],
        ports: &[(6379, "redis", "TCP")],
    },
    PodSpec {
        lab: "worker",
        name: "worker-6b8d9c7f5-q8w2n",
        owner: ("ReplicaSet", "worker-6b8d9c7f5"),
        labels: &[("app", "worker")],
        ports: &[(7000, "grpc", "TCP")],
    },
    PodSpec {
        lab: "legacy-dns",
        name: "legacy-dns-7f8d9c6b5-zt4km",
        owner: ("ReplicaSet", "legacy-dns-7f8d9c6b5"),
        labels: &[("app", "legacy-dns")],
        ports: &[(53, "dns", "UDP")],
    },
];

/// The Kubernetes name of a lab pod.
pub fn pod_name(lab_name: &str) -> &'static str {
    PODS.iter()
        .find(|p| p.lab == lab_name)
        .map_or("", |p| p.name)
}

/// An EndpointSlice of `service`: `ports` as (name, port, protocol), `endpoints` as
/// (pod, address, ready); the ledger pod is on the other node.
fn slice(
    namespace: &str,
    service: &str,
    ports: Value,
    endpoints: &[(&str, IpAddr, bool)],
) -> Value {
    let endpoints: Vec<SliceEndpoint> = endpoints
        .iter()
        .map(|&(pod, ip, ready)| SliceEndpoint {
            pod,
            ip,
            ready,
            node: if ip == IpAddr::V4(LEDGER_POD_IP) {
                OTHER_NODE
            } else {
                NODE
            },
        })
        .collect();
    endpoint_slice(namespace, service, ports, &endpoints)
}

/// Namespaces, Pods, Services, EndpointSlices and NetworkPolicies of the incidents' node.
pub fn objects(node: &Node) -> Vec<Value> {
    let mut objects: Vec<Value> = ["default", "kube-system", "production", "jobs", "infra"]
        .into_iter()
        .map(namespace)
        .collect();
    let mut uid = 0;
    for lab_pod in node.pods() {
        let Some(spec) = PODS.iter().find(|p| p.lab == lab_pod.name) else {
            continue;
        };
        let labels: serde_json::Map<String, Value> = spec
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        let ports: Vec<Value> = spec
            .ports
            .iter()
            .map(|(port, name, protocol)| {
                json!({"containerPort": port, "name": name, "protocol": protocol})
            })
            .collect();
        uid += 1;
        let pod = Pod {
            name: spec.name,
            namespace: &lab_pod.k8s_namespace,
            uid: demo_uid(uid),
            owner: Some(spec.owner),
            labels: Value::Object(labels),
            ports: json!(ports),
            ips: vec![IpAddr::V4(lab_pod.ipv4), IpAddr::V6(lab_pod.ipv6)],
            ready: true,
            node: NODE,
        };
        objects.push(pod.json());
    }
    // The pod behind `orders`: it exists, but its readiness probe fails.
    let orders = Pod {
        name: ORDERS_POD,
        namespace: "production",
        uid: demo_uid(99),
        owner: Some(("ReplicaSet", "orders-6f7d8c9b5")),
        labels: json!({"app": "orders"}),
        ports: json!([{"containerPort": 8080, "name": "http", "protocol": "TCP"}]),
        ips: vec![IpAddr::V4(ORDERS_POD_IP)],
        ready: false,
        node: NODE,
    };
    objects.push(orders.json());
    // A pod of another node, reached through its Service.
    let ledger = Pod {
        name: LEDGER_POD,
        namespace: "production",
        uid: demo_uid(98),
        owner: Some(("StatefulSet", "ledger")),
        labels: json!({"app": "ledger"}),
        ports: json!([{"containerPort": 8080, "name": "http", "protocol": "TCP"}]),
        ips: vec![IpAddr::V4(LEDGER_POD_IP)],
        ready: true,
        node: OTHER_NODE,
    };
    objects.push(ledger.json());

    let ready = |lab_name: &str| -> Vec<(&'static str, IpAddr, bool)> {
        node.pods()
            .iter()
            .filter(|p| p.name == lab_name)
            .map(|p| (pod_name(lab_name), IpAddr::V4(p.ipv4), true))
            .collect()
    };
    let tcp = |name: &str, port: u16, target: Value| json!([{"name": name, "port": port, "protocol": "TCP", "targetPort": target}]);
    let slice_tcp =
        |name: &str, port: u16| json!([{"name": name, "port": port, "protocol": "TCP"}]);
    objects.extend([
        service(
            "kube-system",
            "kube-dns",
            json!({"k8s-app": "kube-dns"}),
            &lab::DEFAULT_DNS.to_string(),
            json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                   {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]),
        ),
        slice(
            "kube-system",
            "kube-dns",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"},
                   {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
            &ready("kube-dns"),
        ),
        service(
            "production",
            "payment-service",
            json!({"app": "payment"}),
            &PAYMENT_VIP.to_string(),
            tcp("http", 80, json!("http")),
        ),
        slice(
            "production",
            "payment-service",
            slice_tcp("http", 8080),
            &ready("payment"),
        ),
        // A Service whose only pod is not ready: its endpoint is listed, not ready.
        service(
            "production",
            "orders",
            json!({"app": "orders"}),
            &ORDERS_VIP.to_string(),
            tcp("http", 80, json!(8080)),
        ),
        slice(
            "production",
            "orders",
            slice_tcp("http", 8080),
            &[(ORDERS_POD, IpAddr::V4(ORDERS_POD_IP), false)],
        ),
        // A Service sending to a port its pods do not declare (payment listens on 8080).
        service(
            "production",
            "inventory",
            json!({"app": "payment"}),
            &INVENTORY_VIP.to_string(),
            tcp("http", 80, json!(9091)),
        ),
        slice(
            "production",
            "inventory",
            slice_tcp("http", 9091),
            &ready("payment"),
        ),
        // Headless: clients reach the pods directly.
        service(
            "production",
            "postgres",
            json!({"app": "db"}),
            "None",
            tcp("postgres", 5432, json!(5432)),
        ),
        slice(
            "production",
            "postgres",
            slice_tcp("postgres", 5432),
            &ready("db"),
        ),
        service(
            "production",
            "redis",
            json!({"app": "cache"}),
            "None",
            tcp("redis", 6379, json!(6379)),
        ),
        slice(
            "production",
            "redis",
            slice_tcp("redis", 6379),
            &ready("cache"),
        ),
        // Its one pod runs on another node.
        service(
            "production",
            "ledger",
            json!({"app": "ledger"}),
            &LEDGER_VIP.to_string(),
            tcp("http", 80, json!(8080)),
        ),
        slice(
            "production",
            "ledger",
            slice_tcp("http", 8080),
            &[(LEDGER_POD, IpAddr::V4(LEDGER_POD_IP), true)],
        ),
        // A DNS server of its own, which answers SERVFAIL (its upstream is gone).
        service(
            "infra",
            "legacy-dns",
            json!({"app": "legacy-dns"}),
            &LEGACY_DNS_VIP.to_string(),
            json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]),
        ),
        slice(
            "infra",
            "legacy-dns",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
            &ready("legacy-dns"),
        ),
        // Only the API may reach the database: checkout may not.
        policy(
            "production",
            "db-allow-api",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                             "ports": [{"protocol": "TCP", "port": 5432}]}],
            }),
        ),
        // Admits cache's clients: a drop between them is the node's, not policy's.
        policy(
            "production",
            "cache-allow-clients",
            json!({
                "podSelector": {"matchLabels": {"app": "cache"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "checkout"}}},
                                      {"podSelector": {"matchLabels": {"app": "worker"}}},
                                      {"podSelector": {"matchLabels": {"app": "db"}}}]}],
            }),
        ),
        // Jobs may not talk to anything, DNS included.
        policy(
            "jobs",
            "default-deny-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
    ]);
    objects
}

/// The uid of pod number `n`.
fn demo_uid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// How many objects of `kind` there are among `objects`.
pub fn count(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}
