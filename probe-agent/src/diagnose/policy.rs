//! NetworkPolicy (networking.k8s.io/v1) evaluation: which policy, if any, stops a flow.
//!
//! Pure: it reads a [`ClusterView`] and nothing else. The semantics are the API's: a pod
//! selected by any policy of a type (Ingress, Egress) is isolated in that direction, and
//! then only traffic that a rule of one of those policies admits gets through. Rules only
//! ever allow, so "which policy denies" means "which policies isolate the pod, none of
//! them admitting this traffic".
//!
//! Where the API leaves behaviour to the network plugin, the common choice is made:
//! host-network pods are their node (selectors never match them and no policy isolates
//! them), and `ipBlock` matches any address, pod IPs included.

use std::{net::IpAddr, sync::Arc};

use crate::{
    enrich::{ClusterView, PodRecord},
    model::Protocol,
};

mod rules;
#[cfg(test)]
mod tests;

use rules::{Direction, Traffic};

/// One end of a flow as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    pub ip: IpAddr,
    /// The pod that owns `ip`, if it is one. For a flow through a Service, the backend.
    pub pod: Option<&'a PodRecord>,
}

impl<'a> Peer<'a> {
    /// The pod as policies see it: host-network pods send and receive as their node.
    fn policy_pod(&self) -> Option<&'a PodRecord> {
        self.pod.filter(|pod| !pod.host_network)
    }

    fn describe(&self) -> String {
        match self.policy_pod() {
            Some(pod) => format!("{}/{}", pod.namespace, pod.name),
            None => self.ip.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// Policies select the destination pod for Ingress and none admits this source and port.
    IngressDenied {
        namespace: Arc<str>,
        pod: Arc<str>,
        policies: Vec<String>,
    },
    /// Policies select the source pod for Egress and none admits this destination and port.
    EgressDenied {
        namespace: Arc<str>,
        pod: Arc<str>,
        policies: Vec<String>,
    },
    /// Allowed; the names of the policies whose rules admit it on each side (empty: no
    /// policy applies to that side: not isolated, not a pod, or traffic from the pod's
    /// own node).
    Allowed {
        ingress: Vec<String>,
        egress: Vec<String>,
    },
    /// Neither end is a known pod: policy cannot be evaluated.
    Unknown,
}

/// Whether NetworkPolicies let `src` reach `dst` on `protocol` `port` (the pod's port: for a
/// flow through a Service, its targetPort). Ingress at `dst` is evaluated first, then egress
/// at `src`; the first denial is the outcome.
pub fn evaluate(
    view: &ClusterView,
    src: &Peer,
    dst: &Peer,
    protocol: Protocol,
    port: u16,
) -> PolicyOutcome {
    let (src_pod, dst_pod) = (src.policy_pod(), dst.policy_pod());
    if src_pod.is_none() && dst_pod.is_none() {
        return PolicyOutcome::Unknown;
    }
    let traffic = Traffic {
        view,
        protocol,
        port,
        dst_pod,
    };
    let ingress = match dst_pod.filter(|_| !from_own_node(src, dst)) {
        Some(pod) => match traffic.side(Direction::Ingress, pod, src) {
            Ok(admitting) => admitting,
            Err(isolating) => return PolicyOutcome::denied(Direction::Ingress, pod, isolating),
        },
        None => Vec::new(),
    };
    let egress = match src_pod {
        Some(pod) => match traffic.side(Direction::Egress, pod, dst) {
            Ok(admitting) => admitting,
            Err(isolating) => return PolicyOutcome::denied(Direction::Egress, pod, isolating),
        },
        None => Vec::new(),
    };
    PolicyOutcome::Allowed { ingress, egress }
}

/// The API lets traffic from a pod's own node in whatever its policies say (the
/// `NetworkPolicySpec.ingress` contract), so kubelet probes keep working.
fn from_own_node(src: &Peer, dst: &Peer) -> bool {
    dst.policy_pod()
        .is_some_and(|pod| pod.host_ip == Some(src.ip))
}

impl PolicyOutcome {
    fn denied(direction: Direction, pod: &PodRecord, policies: Vec<String>) -> Self {
        let (namespace, pod) = (Arc::clone(&pod.namespace), Arc::clone(&pod.name));
        match direction {
            Direction::Ingress => Self::IngressDenied {
                namespace,
                pod,
                policies,
            },
            Direction::Egress => Self::EgressDenied {
                namespace,
                pod,
                policies,
            },
        }
    }

    /// A plain-English sentence naming the objects. `src`, `dst`, `protocol` and `port`
    /// are what [`evaluate`] was given.
    pub fn reason(&self, src: &Peer, dst: &Peer, protocol: Protocol, port: u16) -> String {
        let on = format!("on {} {port}", protocol.as_str());
        match self {
            Self::IngressDenied {
                namespace,
                pod,
                policies,
            } => denial(
                namespace,
                pod,
                policies,
                Direction::Ingress,
                &format!("admits {} {on}", src.describe()),
            ),
            Self::EgressDenied {
                namespace,
                pod,
                policies,
            } => denial(
                namespace,
                pod,
                policies,
                Direction::Egress,
                &format!("lets it reach {} {on}", dst.describe()),
            ),
            Self::Allowed { ingress, egress } => {
                allowance(ingress, egress, from_own_node(src, dst))
            }
            Self::Unknown => format!(
                "Neither {} nor {} is a known pod, so NetworkPolicy cannot be evaluated",
                src.ip, dst.ip
            ),
        }
    }

    /// The one command that confirms a denial: describing the (first) policy.
    pub fn next(&self) -> Option<String> {
        match self {
            Self::IngressDenied {
                namespace,
                policies,
                ..
            }
            | Self::EgressDenied {
                namespace,
                policies,
                ..
            } => policies
                .first()
                .map(|name| format!("kubectl describe networkpolicy {name} -n {namespace}")),
            Self::Allowed { .. } | Self::Unknown => None,
        }
    }

    pub fn is_denied(&self) -> bool {
        matches!(self, Self::IngressDenied { .. } | Self::EgressDenied { .. })
    }
}

/// "NetworkPolicy ns/a selects pod for ingress and no rule admits ...".
fn denial(
    namespace: &str,
    pod: &str,
    policies: &[String],
    direction: Direction,
    admits: &str,
) -> String {
    let named = policies
        .iter()
        .map(|name| format!("{namespace}/{name}"))
        .collect::<Vec<_>>()
        .join(", ");
    let direction = direction.word();
    if policies.len() == 1 {
        format!("NetworkPolicy {named} selects {pod} for {direction} and no rule {admits}")
    } else {
        format!(
            "NetworkPolicies {named} select {pod} for {direction} and none of their rules {admits}"
        )
    }
}

fn allowance(ingress: &[String], egress: &[String], from_own_node: bool) -> String {
    if ingress.is_empty() && egress.is_empty() && !from_own_node {
        return "No NetworkPolicy isolates either end, so the drop is elsewhere".into();
    }
    let ingress = match ingress {
        [] if from_own_node => "from the pod's own node, always allowed".to_string(),
        [] => "not isolated".to_string(),
        names => names.join(", "),
    };
    let egress = match egress {
        [] => "not isolated".to_string(),
        names => names.join(", "),
    };
    format!(
        "NetworkPolicies allow this traffic (ingress: {ingress}; egress: {egress}), so the drop is elsewhere"
    )
}
