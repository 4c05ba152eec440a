//! Kubernetes objects as an API server returns them, for [`crate::kube_stand_in`] to
//! serve: the demo's cluster and the agent's privileged tests build theirs from these, so
//! both feed the agent the same shapes (the fields its names and diagnoses read).

use std::net::IpAddr;

use serde_json::{Value, json};

use crate as lab;

/// When every object was created.
const CREATED: &str = "2026-11-23T09:00:00Z";

/// A Pod: labels, declared container ports, addresses, readiness and node.
pub struct Pod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: String,
    /// The controller that owns it (kind, name), if any.
    pub owner: Option<(&'a str, &'a str)>,
    pub labels: Value,
    /// `spec.containers[0].ports`.
    pub ports: Value,
    pub ips: Vec<IpAddr>,
    /// Its Ready condition.
    pub ready: bool,
    pub node: &'a str,
}

impl Pod<'_> {
    pub fn json(self) -> Value {
        let mut labels = self.labels;
        let mut metadata = json!({
            "name": self.name, "namespace": self.namespace, "uid": self.uid,
            "creationTimestamp": CREATED,
        });
        if let Some((kind, name)) = self.owner {
            if kind == "ReplicaSet" {
                // Deployments name ReplicaSets `<deployment>-<pod-template-hash>`.
                let hash = name.rsplit('-').next().unwrap_or_default();
                labels["pod-template-hash"] = json!(hash);
            }
            metadata["ownerReferences"] = json!([{
                "apiVersion": if kind == "Job" { "batch/v1" } else { "apps/v1" },
                "kind": kind, "name": name,
                "uid": "00000000-0000-4000-8000-0000000000aa",
                "controller": true, "blockOwnerDeletion": true,
            }]);
        }
        metadata["labels"] = labels;
        let status = if self.ready { "True" } else { "False" };
        let container = self.name.split('-').next().unwrap_or(self.name);
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": container, "image": format!("demo/{container}:1.0"),
                                "ports": self.ports}],
            },
            "status": {
                "phase": "Running", "hostIP": lab::GATEWAY_V4.to_string(),
                "podIP": self.ips[0].to_string(),
                "podIPs": self.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": status},
                    {"type": "ContainersReady", "status": status},
                    {"type": "PodScheduled", "status": "True"},
                ],
            },
        })
    }
}

pub fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("ns-{name}"),
                     "labels": {"kubernetes.io/metadata.name": name}},
        "status": {"phase": "Active"},
    })
}

/// A ClusterIP Service; `ip` "None" makes it headless. `ports`: `spec.ports`.
pub fn service(namespace: &str, name: &str, selector: Value, ip: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("svc-{name}"),
                     "creationTimestamp": CREATED},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                 "selector": selector, "ports": ports},
    })
}

/// One address of an EndpointSlice: the pod behind it, ready or not, and its node.
pub struct SliceEndpoint<'a> {
    pub pod: &'a str,
    pub ip: IpAddr,
    pub ready: bool,
    pub node: &'a str,
}

/// The IPv4 EndpointSlice of `service`. `ports`: the slice's ports (name, port, protocol).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    ports: Value,
    endpoints: &[SliceEndpoint],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({"addresses": [e.ip.to_string()],
                   "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                   "nodeName": e.node,
                   "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-x7k2p"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

pub fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("netpol-{name}"),
                     "creationTimestamp": CREATED},
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicaset_pod_carries_its_owner_and_template_hash() {
        let pod = Pod {
            name: "payment-7c9f8b6d4-x2k9p",
            namespace: "production",
            uid: "u1".into(),
            owner: Some(("ReplicaSet", "payment-7c9f8b6d4")),
            labels: json!({"app": "payment"}),
            ports: json!([{"containerPort": 8080}]),
            ips: vec!["10.244.0.9".parse().unwrap()],
            ready: false,
            node: "n1",
        }
        .json();
        assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], "7c9f8b6d4");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(
            pod["status"]["conditions"][1],
            json!({"type": "Ready", "status": "False"})
        );
        assert_eq!(pod["spec"]["containers"][0]["name"], "payment");
    }

    #[test]
    fn an_unowned_pod_has_no_owner_references() {
        let pod = Pod {
            name: "debug",
            namespace: "default",
            uid: "u2".into(),
            owner: None,
            labels: json!({}),
            ports: json!([]),
            ips: vec!["10.244.0.3".parse().unwrap()],
            ready: true,
            node: "n1",
        }
        .json();
        assert!(pod["metadata"].get("ownerReferences").is_none());
    }
}
