//! Refused and unreachable connections: a Service with no ready endpoints, a targetPort
//! its pods do not declare, or simply nothing listening.

use crate::text::text;
use std::{collections::BTreeMap, sync::Arc};

use super::Diagnosis;
use crate::{
    enrich::{
        ClusterView, DeclaredPort, Labels, PodRecord, ServicePortRecord, ServiceRecord, TargetPort,
    },
    model::{Cause, Flow, Protocol, VerdictKind},
};

/// Where a Service sends one of its ports: the port entry and the pods behind it.
pub struct Backends<'a> {
    pub service: &'a ServiceRecord,
    pub port: Option<&'a ServicePortRecord>,
    /// Pods of its EndpointSlices' ready endpoints.
    pub ready: Vec<Arc<PodRecord>>,
    /// How many endpoints are ready, and how many are listed at all.
    pub ready_count: usize,
    pub listed: usize,
}

/// The Service a flow's destination address belongs to, with its backends.
pub fn backends<'a>(view: &'a ClusterView, flow: &Flow) -> Option<Backends<'a>> {
    let service = view.service_by_ip.get(&flow.dst_ip)?;
    let port = service
        .ports
        .iter()
        .find(|p| p.port == flow.dst_port && same_protocol(&p.protocol, flow.protocol));
    let (mut ready, mut ready_count, mut listed) = (Vec::new(), 0, 0);
    for slice in view.slices_of(service) {
        for endpoint in &slice.endpoints {
            listed += 1;
            if !endpoint.ready {
                continue;
            }
            ready_count += 1;
            let pod = endpoint
                .pod
                .as_ref()
                .and_then(|name| view.pod(&service.namespace, name))
                .or_else(|| view.pod_by_ip.get(&endpoint.ip));
            if let Some(pod) = pod
                && !ready.iter().any(|p: &Arc<PodRecord>| Arc::ptr_eq(p, pod))
            {
                ready.push(Arc::clone(pod));
            }
        }
    }
    Some(Backends {
        service,
        port,
        ready,
        ready_count,
        listed,
    })
}

/// A SYN answered by RST or ICMP unreachable.
pub fn rejected(view: &ClusterView, flow: &Flow, verdict: VerdictKind) -> Diagnosis {
    if let Some(backends) = backends(view, flow) {
        if backends.ready_count == 0 {
            if view.slices_known {
                return no_ready_endpoints(view, &backends);
            }
            return endpoints_not_listed(&backends, verdict);
        }
        if verdict == VerdictKind::Refused
            && let Some(mismatch) = target_port_mismatch(&backends)
        {
            return mismatch;
        }
        return match verdict {
            VerdictKind::Refused => nothing_listening_behind(&backends),
            _ => Diagnosis {
                cause: Cause::DestinationUnreachable,
                reason: text!(
                    "Service {} has {} ready endpoints, yet the node answered unreachable: its Service rules (kube-proxy) are stale or a firewall rejects port {}",
                    qualified(&backends.service.namespace, &backends.service.name),
                    backends.ready_count,
                    flow.dst_port
                ),
                next: Some(slices_command(backends.service)),
            },
        };
    }
    if let Some(pod) = view.pod_by_ip.get(&flow.dst_ip) {
        if verdict == VerdictKind::Refused {
            if let Some(mismatch) = selected_by_mismatched_service(view, pod, flow) {
                return mismatch;
            }
            return Diagnosis {
                cause: Cause::NothingListening,
                reason: text!(
                    "nothing listens on port {} of pod {} (it declares {})",
                    flow.dst_port,
                    qualified(&pod.namespace, &pod.name),
                    DeclaredPort::describe(&pod.ports)
                ),
                next: Some(text!(
                    "kubectl describe pod {} -n {}",
                    pod.name,
                    pod.namespace
                )),
            };
        }
        return Diagnosis {
            cause: Cause::DestinationUnreachable,
            reason: text!(
                "pod {} is unreachable on port {} (a firewall rejects it or the pod is gone)",
                qualified(&pod.namespace, &pod.name),
                flow.dst_port
            ),
            next: Some(text!(
                "kubectl get pod {} -n {} -o wide",
                pod.name,
                pod.namespace
            )),
        };
    }
    match verdict {
        VerdictKind::Refused => Diagnosis {
            cause: Cause::NothingListening,
            reason: text!(
                "nothing listens on port {} (port/targetPort mismatch or app down)",
                flow.dst_port
            ),
            next: None,
        },
        _ => Diagnosis {
            cause: Cause::DestinationUnreachable,
            reason: match flow.protocol {
                Protocol::Tcp => text!(
                    "a Service without ready endpoints (kube-proxy REJECT) or no route to port {}",
                    flow.dst_port
                ),
                Protocol::Udp => text!(
                    "nothing listens on port {} or it is rejected",
                    flow.dst_port
                ),
            },
            next: None,
        },
    }
}

/// A rejected SYN to a Service before the agent has listed the EndpointSlices: no claim
/// about its endpoints.
fn endpoints_not_listed(backends: &Backends, verdict: VerdictKind) -> Diagnosis {
    let service = backends.service;
    Diagnosis {
        cause: match verdict {
            VerdictKind::Refused => Cause::NothingListening,
            _ => Cause::DestinationUnreachable,
        },
        reason: text!(
            "Service {} rejected it; its endpoints are not known yet (the agent is still listing EndpointSlices)",
            qualified(&service.namespace, &service.name)
        ),
        next: Some(slices_command(service)),
    }
}

fn no_ready_endpoints(view: &ClusterView, backends: &Backends) -> Diagnosis {
    let service = backends.service;
    let name = qualified(&service.namespace, &service.name);
    let reason = match &service.selector {
        None => format!(
            "Service {name} has no ready endpoints: it has no selector and its EndpointSlices list {} ready addresses",
            backends.ready_count
        ),
        Some(selector) => {
            let matching: Vec<&Arc<PodRecord>> = view
                .pods_in(&service.namespace)
                .iter()
                .filter(|pod| selects(selector, &pod.labels))
                .collect();
            let not_ready: Vec<&str> = matching
                .iter()
                .filter(|pod| !pod.ready)
                .map(|pod| &*pod.name)
                .collect();
            let pods = match (matching.len(), not_ready.len()) {
                (0, _) => "matches no pod".to_string(),
                (n, 0) => format!("matches {n} pods, all ready, yet none is listed as an endpoint"),
                (n, k) => format!(
                    "matches {n} pod{}, {k} not ready ({})",
                    if n == 1 { "" } else { "s" },
                    not_ready.join(", ")
                ),
            };
            format!(
                "Service {name} has no ready endpoints: its selector {} {pods}",
                describe_selector(selector)
            )
        }
    };
    Diagnosis {
        cause: Cause::NoReadyEndpoints,
        reason: reason.into(),
        next: Some(slices_command(service)),
    }
}

/// The Service port's targetPort is not declared by the ready pods behind it. Declaring
/// ports is optional: a pod that declares none is no evidence of a mismatch, unless the
/// targetPort is a name (which only a declared port can resolve).
fn target_port_mismatch(backends: &Backends) -> Option<Diagnosis> {
    let port = backends.port?;
    let pod = backends.ready.iter().find(|pod| {
        match resolve(&port.target_port, pod, &port.protocol) {
            None => true,
            Some(number) => !pod.ports.is_empty() && !declares(pod, number, &port.protocol),
        }
    })?;
    Some(mismatch(backends.service, port, pod))
}

/// A RST from a pod (reached directly, e.g. after DNAT on another node) whose Service
/// sends there through a targetPort the pod does not declare.
fn selected_by_mismatched_service(
    view: &ClusterView,
    pod: &PodRecord,
    flow: &Flow,
) -> Option<Diagnosis> {
    if pod.ports.is_empty() || declares(pod, flow.dst_port, flow.protocol.as_str()) {
        return None;
    }
    view.services
        .values()
        .filter(|s| s.namespace == pod.namespace)
        .filter(|s| {
            s.selector
                .as_ref()
                .is_some_and(|sel| selects(sel, &pod.labels))
        })
        .find_map(|service| {
            let port = service.ports.iter().find(|p| {
                p.target_port == TargetPort::Number(flow.dst_port)
                    && same_protocol(&p.protocol, flow.protocol)
            })?;
            Some(mismatch(service, port, pod))
        })
}

fn mismatch(service: &ServiceRecord, port: &ServicePortRecord, pod: &PodRecord) -> Diagnosis {
    Diagnosis {
        cause: Cause::TargetPortMismatch,
        reason: text!(
            "Service {} port {} sends to targetPort {}, but pod {} declares {}",
            qualified(&service.namespace, &service.name),
            port.port,
            port.target_port,
            pod.name,
            DeclaredPort::describe(&pod.ports)
        ),
        next: Some(text!(
            "kubectl get service {} -n {} -o jsonpath='{{.spec.ports}}'",
            service.name,
            service.namespace
        )),
    }
}

fn nothing_listening_behind(backends: &Backends) -> Diagnosis {
    let service = backends.service;
    let target = backends.port.map_or_else(
        || "its targetPort".to_string(),
        |p| format!("targetPort {}", p.target_port),
    );
    let pods: Vec<&str> = backends.ready.iter().map(|p| &*p.name).collect();
    let declared = if backends.ready.iter().all(|p| p.ports.is_empty()) {
        "which declare no ports"
    } else {
        "which declare it"
    };
    Diagnosis {
        cause: Cause::NothingListening,
        reason: text!(
            "Service {} sends to {target} of {} ready pod(s) ({}), {declared}, but nothing listens there (the app is down or bound to another port or address)",
            qualified(&service.namespace, &service.name),
            backends.ready_count,
            if pods.is_empty() {
                "unnamed".to_string()
            } else {
                pods.join(", ")
            }
        ),
        next: pods
            .first()
            .map(|pod| text!("kubectl logs {pod} -n {}", service.namespace)),
    }
}

/// The number a targetPort means for `pod`: itself, or the pod's port of that name.
fn resolve(target: &TargetPort, pod: &PodRecord, protocol: &str) -> Option<u16> {
    match target {
        TargetPort::Number(port) => Some(*port),
        TargetPort::Name(name) => pod
            .ports
            .iter()
            .find(|p| {
                p.name.as_deref() == Some(&**name) && p.protocol.eq_ignore_ascii_case(protocol)
            })
            .map(|p| p.port),
    }
}

fn declares(pod: &PodRecord, port: u16, protocol: &str) -> bool {
    pod.ports
        .iter()
        .any(|p| p.port == port && p.protocol.eq_ignore_ascii_case(protocol))
}

/// A Service selector (equality only) against a pod's labels.
fn selects(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value.as_str()))
}

fn describe_selector(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn slices_command(service: &ServiceRecord) -> Arc<str> {
    text!(
        "kubectl get endpointslices -l kubernetes.io/service-name={} -n {}",
        service.name,
        service.namespace
    )
}

/// `namespace/name`, written where it is used (no string of its own).
pub fn qualified<'a>(namespace: &'a str, name: &'a str) -> Qualified<'a> {
    Qualified(namespace, name)
}

pub struct Qualified<'a>(&'a str, &'a str);

impl std::fmt::Display for Qualified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

fn same_protocol(name: &str, protocol: Protocol) -> bool {
    name.eq_ignore_ascii_case(protocol.as_str())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::json;

    use super::*;
    use crate::enrich::{Directory, PodView, SliceRecord, object_key};

    /// A cluster with Service `shop/web` (10.96.0.7:80 → `target`) backed by one ready pod
    /// declaring `http` 8080.
    fn view(target: serde_json::Value) -> ClusterView {
        view_with(
            target,
            json!([{"name": "http", "containerPort": 8080}]),
            true,
        )
    }

    /// The same with the pod declaring `ports`, and its EndpointSlice listed or not
    /// (none listed yet).
    fn view_with(target: serde_json::Value, ports: serde_json::Value, listed: bool) -> ClusterView {
        let mut directory = Directory::default();
        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": target}]},
        }))
        .unwrap();
        directory
            .services
            .apply(object_key(&service.metadata), (&service).into());
        let pod: PodView = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"ports": ports}]},
            "status": {"podIP": "10.244.0.8", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        directory
            .pods
            .apply(object_key(&pod.metadata), (&pod).into());
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(json!({
                "metadata": {"name": "web-x", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.0.8"], "targetRef": {"kind": "Pod", "name": "web-1"}}],
            }))
            .unwrap();
        if listed {
            directory
                .slices
                .apply(object_key(&slice.metadata), SliceRecord::from(&slice));
        }
        directory.snapshot().cluster
    }

    fn to_service() -> Flow {
        Flow {
            protocol: Protocol::Tcp,
            src_ip: IpAddr::from([10, 244, 0, 5]),
            src_port: 40000,
            dst_ip: IpAddr::from([10, 96, 0, 7]),
            dst_port: 80,
        }
    }

    #[test]
    fn a_target_port_the_pod_declares_is_no_mismatch() {
        for target in [json!(8080), json!("http"), json!("8080")] {
            let d = rejected(&view(target.clone()), &to_service(), VerdictKind::Refused);
            assert_eq!(d.cause, Cause::NothingListening, "{target}: {d:?}");
            assert_eq!(d.next.as_deref(), Some("kubectl logs web-1 -n shop"));
        }
    }

    #[test]
    fn a_target_port_the_pod_does_not_declare_is_a_mismatch() {
        for (target, shown) in [(json!(9090), "9090"), (json!("metrics"), "\"metrics\"")] {
            let d = rejected(&view(target), &to_service(), VerdictKind::Refused);
            assert_eq!(d.cause, Cause::TargetPortMismatch, "{d:?}");
            assert_eq!(
                &*d.reason,
                format!(
                    "Service shop/web port 80 sends to targetPort {shown}, but pod web-1 declares 8080/TCP (http)"
                )
            );
        }
    }

    #[test]
    fn unreachable_with_ready_endpoints_blames_the_rules_not_the_endpoints() {
        let d = rejected(&view(json!(8080)), &to_service(), VerdictKind::Unreachable);
        assert_eq!(d.cause, Cause::DestinationUnreachable);
        assert!(d.reason.contains("has 1 ready endpoints"), "{d:?}");
    }

    #[test]
    fn a_pod_declaring_no_ports_is_no_evidence_of_a_mismatch() {
        let d = rejected(
            &view_with(json!(9090), json!([]), true),
            &to_service(),
            VerdictKind::Refused,
        );
        assert_eq!(d.cause, Cause::NothingListening, "{d:?}");
        assert_eq!(
            &*d.reason,
            "Service shop/web sends to targetPort 9090 of 1 ready pod(s) (web-1), which declare no ports, but nothing listens there (the app is down or bound to another port or address)"
        );
        // Reached directly, the pod is no mismatch either.
        let mut direct = to_service();
        direct.dst_ip = IpAddr::from([10, 244, 0, 8]);
        direct.dst_port = 9090;
        let d = rejected(
            &view_with(json!(9090), json!([]), true),
            &direct,
            VerdictKind::Refused,
        );
        assert_eq!(d.cause, Cause::NothingListening, "{d:?}");
        // A named targetPort only a declared port resolves: a mismatch all the same.
        let d = rejected(
            &view_with(json!("http"), json!([]), true),
            &to_service(),
            VerdictKind::Refused,
        );
        assert_eq!(d.cause, Cause::TargetPortMismatch, "{d:?}");
    }

    #[test]
    fn no_ready_endpoints_is_not_claimed_before_the_slices_are_listed() {
        for verdict in [VerdictKind::Refused, VerdictKind::Unreachable] {
            let d = rejected(
                &view_with(json!(8080), json!([]), false),
                &to_service(),
                verdict,
            );
            assert_ne!(d.cause, Cause::NoReadyEndpoints, "{d:?}");
            assert_eq!(
                &*d.reason,
                "Service shop/web rejected it; its endpoints are not known yet (the agent is still listing EndpointSlices)"
            );
        }
    }
}
