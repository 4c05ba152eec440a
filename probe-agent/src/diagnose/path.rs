//! Connections that got no answer: where the SYN was lost. A NetworkPolicy that stops
//! it, the node between two of its pods, a server that got it and stayed silent, or a
//! path this node cannot see.

use crate::text::text;
use std::{net::SocketAddr, sync::Arc};

use super::{
    Diagnosis,
    policy::{self, Peer, PolicyOutcome},
    service::{self, qualified},
};
use crate::{
    enrich::{ClusterView, PodRecord, TargetPort},
    model::{Cause, Flow, Protocol},
};

/// What the probe saw of a flow on this node, beyond its own counts.
#[derive(Clone, Debug, Default)]
pub struct PathFacts {
    /// A SYN of this connection entered a pod of this node: where, and through which veth.
    pub delivered: Option<(SocketAddr, Arc<str>)>,
    /// The server answered this attempt (its SYN-ACK left its pod): where, through which
    /// veth. The answer was lost on its way back.
    pub answer_lost: Option<(SocketAddr, Arc<str>)>,
    /// The destination pod (every ready backend, for a Service) runs on this node.
    pub destination_local: bool,
    /// The client runs on another node: the SYNs counted were seen entering the server's
    /// veth here (the probe counts a flow where it first sees it), through this interface.
    pub remote_client_via: Option<Arc<str>>,
    /// This node's name, for the commands to run on it.
    pub node: Option<Arc<str>>,
}

/// The pods a flow is headed to and the port each listens on: the pod itself, or a
/// Service's ready backends with the targetPort resolved.
pub fn destinations(view: &ClusterView, flow: &Flow) -> Vec<(Arc<PodRecord>, u16)> {
    if let Some(backends) = service::backends(view, flow) {
        let Some(port) = backends.port else {
            return Vec::new();
        };
        return backends
            .ready
            .iter()
            .filter_map(|pod| {
                let target = match &port.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod
                        .ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(&**name))
                        .map(|p| p.port),
                }?;
                Some((Arc::clone(pod), target))
            })
            .collect();
    }
    view.pod_by_ip
        .get(&flow.dst_ip)
        .map(|pod| vec![(Arc::clone(pod), flow.dst_port)])
        .unwrap_or_default()
}

/// What NetworkPolicy says of a flow, in words naming the destination it was
/// evaluated against.
pub struct PolicyFinding {
    pub outcome: PolicyOutcome,
    pub reason: String,
}

impl PolicyFinding {
    fn diagnosis(self) -> Diagnosis {
        Diagnosis {
            cause: Cause::NetworkPolicy,
            next: self.outcome.next().map(Into::into),
            reason: self.reason.into(),
        }
    }
}

/// NetworkPolicy on the flow: the first denial among its destinations (a Service's
/// ready backends, on their targetPort), else what allows it.
pub fn policy_finding(view: &ClusterView, flow: &Flow) -> PolicyFinding {
    let src = Peer {
        ip: flow.src_ip,
        pod: view.pod_by_ip.get(&flow.src_ip).map(|p| &**p),
    };
    let judge = |dst: &Peer, port: u16| {
        let outcome = policy::evaluate(view, &src, dst, flow.protocol, port);
        // Unknown (no cluster, or neither end a pod) is never put in words.
        let reason = match outcome {
            PolicyOutcome::Unknown => String::new(),
            _ => outcome.reason(&src, dst, flow.protocol, port),
        };
        PolicyFinding { outcome, reason }
    };
    let destinations = destinations(view, flow);
    let mut allowed = None;
    for (pod, port) in &destinations {
        let ip = pod.ips.first().copied().unwrap_or(flow.dst_ip);
        let finding = judge(&Peer { ip, pod: Some(pod) }, *port);
        if finding.outcome.is_denied() {
            return finding;
        }
        allowed = Some(finding);
    }
    allowed.unwrap_or_else(|| {
        let dst = Peer {
            ip: flow.dst_ip,
            pod: None,
        };
        judge(&dst, flow.dst_port)
    })
}

/// A NetworkPolicy stopping the flow, as a diagnosis.
pub fn policy_denial(view: &ClusterView, flow: &Flow) -> Option<Diagnosis> {
    let finding = policy_finding(view, flow);
    finding.outcome.is_denied().then(|| finding.diagnosis())
}

/// A SYN that got no answer.
pub fn timeout(view: &ClusterView, flow: &Flow, facts: &PathFacts) -> Diagnosis {
    let finding = policy_finding(view, flow);
    if finding.outcome.is_denied() {
        return finding.diagnosis();
    }
    // "…; NetworkPolicies allow it": the cause is elsewhere, and the reason says so.
    let policy_note = match &finding.outcome {
        PolicyOutcome::Unknown => String::new(),
        _ => format!("; {}", lowercase_first(&finding.reason)),
    };
    let server = |at: SocketAddr| {
        view.pod_by_ip.get(&at.ip()).map_or_else(
            || at.to_string(),
            |pod| format!("pod {} ({at})", qualified(&pod.namespace, &pod.name)),
        )
    };
    if flow.protocol == Protocol::Tcp && flow.dst_port == 53 && facts.delivered.is_none() {
        return Diagnosis {
            cause: Cause::DnsTcpBlocked,
            reason: text!(
                "DNS over TCP to {}:53 could not connect: a truncated answer's retry (or a resolver using TCP) is dropped; a NetworkPolicy or firewall that allows only UDP 53 is the usual cause{policy_note}",
                flow.dst_ip
            ),
            next: Some(text!(
                "dig +tcp @{} kubernetes.default.svc.cluster.local",
                flow.dst_ip
            )),
        };
    }
    let on_node = facts.node.as_deref().map_or_else(
        || "on the node".to_string(),
        |node| format!("on node {node}"),
    );
    if let Some((at, interface)) = &facts.answer_lost {
        return Diagnosis {
            cause: Cause::DroppedBetween,
            reason: text!(
                "the server answered: its SYN-ACK left {} through {interface} but never reached the client's veth: dropped on the way back in the node (firewall rules, conntrack, the bridge){policy_note}",
                server(*at)
            ),
            next: Some(text!(
                "sudo nft list ruleset | grep -n -e {} -e {}",
                at.ip(),
                flow.src_ip
            )),
        };
    }
    if let Some((at, interface)) = &facts.delivered {
        let next = netstat_command(view, at);
        return Diagnosis {
            cause: Cause::ServerSilent,
            reason: text!(
                "the SYN reached {} through {interface} and the server never answered: it does not accept on port {} (hung, backlog full) or a firewall inside the pod drops it{policy_note}",
                server(*at),
                at.port()
            ),
            next: next.map(Into::into),
        };
    }
    if facts.destination_local
        && let Some(interface) = &facts.remote_client_via
    {
        let at = SocketAddr::new(flow.dst_ip, flow.dst_port);
        return Diagnosis {
            cause: Cause::ServerSilent,
            reason: text!(
                "the SYN from {} (not a pod of this node) reached {} through {interface} and the server never answered: it does not accept on port {} (hung, backlog full) or a firewall inside the pod drops it{policy_note}",
                flow.src_ip,
                server(at),
                at.port()
            ),
            next: netstat_command(view, &at).map(Into::into),
        };
    }
    if facts.destination_local {
        return Diagnosis {
            cause: Cause::DroppedBetween,
            reason: text!(
                "both ends are {on_node} and the SYN left the client's veth but never reached the server's: dropped in the node (firewall rules, NetworkPolicy enforcement or the bridge){policy_note}"
            ),
            next: Some(text!(
                "sudo nft list ruleset | grep -n -e {} -e {}",
                flow.dst_ip,
                flow.src_ip
            )),
        };
    }
    let next = destinations(view, flow)
        .first()
        .map(|(pod, _)| format!("kubectl get pod {} -n {} -o wide", pod.name, pod.namespace));
    Diagnosis {
        cause: Cause::NoAnswer,
        reason: text!(
            "only the client side was seen ({} is not known on this node): packets are dropped on the path (NetworkPolicy, firewall or broken route){policy_note}",
            flow.dst_ip
        ),
        next: next.map(Into::into),
    }
}

/// The command that lists what the server pod at `at` listens on.
fn netstat_command(view: &ClusterView, at: &SocketAddr) -> Option<String> {
    view.pod_by_ip.get(&at.ip()).map(|pod| {
        format!(
            "kubectl exec -n {} {} -- netstat -ltn",
            pod.namespace, pod.name
        )
    })
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
