//! The NetworkPolicy rules themselves: which policies isolate a pod, and whether a rule's
//! peers and ports admit the far end.

use std::{borrow::Cow, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::core::{Expression, Selector};

use super::Peer;
use crate::{
    enrich::{ClusterView, Labels, NamespaceRecord, PodRecord},
    model::Protocol,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// As `spec.policyTypes` spells it.
    fn policy_type(self) -> &'static str {
        match self {
            Self::Ingress => "Ingress",
            Self::Egress => "Egress",
        }
    }

    pub(super) fn word(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// What rules are matched against, besides the peer.
pub(super) struct Traffic<'v, 'a> {
    pub(super) view: &'v ClusterView,
    pub(super) protocol: Protocol,
    pub(super) port: u16,
    /// Named ports are looked up among the destination pod's, in either direction.
    pub(super) dst_pod: Option<&'a PodRecord>,
}

impl Traffic<'_, '_> {
    /// One side of the flow: `subject` is the pod policies may isolate, `other` the far
    /// end. Ok: the policies that admit the traffic (empty when none isolates `subject`);
    /// Err: the policies that isolate `subject`, none of which admits it.
    pub(super) fn side(
        &self,
        direction: Direction,
        subject: &PodRecord,
        other: &Peer,
    ) -> Result<Vec<String>, Vec<String>> {
        let mut isolating = Vec::new();
        let mut admitting = Vec::new();
        for policy in self.view.policies_in(&subject.namespace) {
            let spec = spec_of(policy);
            if !isolates(&spec, subject, direction) {
                continue;
            }
            let name = policy.metadata.name.clone().unwrap_or_default();
            if self.admits(&spec, direction, &subject.namespace, other) {
                admitting.push(name.clone());
            }
            isolating.push(name);
        }
        if isolating.is_empty() || !admitting.is_empty() {
            Ok(admitting)
        } else {
            Err(isolating)
        }
    }

    /// Whether a rule of `spec` in `direction` admits `other` on this protocol and port.
    fn admits(
        &self,
        spec: &NetworkPolicySpec,
        direction: Direction,
        namespace: &str,
        other: &Peer,
    ) -> bool {
        rules(spec, direction).iter().any(|rule| {
            let peer_ok = rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|peer| peer_matches(self.view, peer, namespace, other));
            let port_ok = rule.ports.is_empty() || rule.ports.iter().any(|p| self.port_matches(p));
            peer_ok && port_ok
        })
    }

    fn port_matches(&self, rule: &NetworkPolicyPort) -> bool {
        let protocol = rule.protocol.as_deref().unwrap_or("TCP");
        if protocol != self.protocol.as_str() {
            return false;
        }
        match &rule.port {
            // Every port of the protocol.
            None => true,
            Some(IntOrString::Int(first)) => {
                let last = rule.end_port.unwrap_or(*first);
                (*first..=last).contains(&i32::from(self.port))
            }
            // The API only accepts names here (IANA_SVC_NAME has a letter), never digits.
            Some(IntOrString::String(name)) => self.dst_pod.is_some_and(|pod| {
                pod.ports.iter().any(|declared| {
                    declared.name.as_deref() == Some(name.as_str())
                        && *declared.protocol == *protocol
                        && declared.port == self.port
                })
            }),
        }
    }
}

/// The API server always stores a spec; an object without one is read as `spec: {}`
/// (every pod, Ingress, no rules), which is what the API would have made of it.
fn spec_of(policy: &NetworkPolicy) -> Cow<'_, NetworkPolicySpec> {
    policy
        .spec
        .as_ref()
        .map_or_else(|| Cow::Owned(NetworkPolicySpec::default()), Cow::Borrowed)
}

/// Whether a policy (of `pod`'s namespace) isolates `pod` in `direction`.
fn isolates(spec: &NetworkPolicySpec, pod: &PodRecord, direction: Direction) -> bool {
    // An absent podSelector is an empty one: every pod of the namespace.
    let selected = spec
        .pod_selector
        .as_ref()
        .is_none_or(|selector| selects(selector, &pod.labels));
    selected && has_type(spec, direction)
}

fn has_type(spec: &NetworkPolicySpec, direction: Direction) -> bool {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == direction.policy_type()),
        // The API server's default: Ingress always, Egress when there are egress rules
        // (an empty `egress: []` does not count).
        _ => match direction {
            Direction::Ingress => true,
            Direction::Egress => spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
        },
    }
}

/// An ingress or egress rule: the far ends it admits (`from` / `to`) and on which ports.
struct Rule<'p> {
    peers: &'p [NetworkPolicyPeer],
    ports: &'p [NetworkPolicyPort],
}

impl<'p> Rule<'p> {
    /// An empty list matches everything, as an absent one does: both become empty.
    fn new(peers: Option<&'p [NetworkPolicyPeer]>, ports: Option<&'p [NetworkPolicyPort]>) -> Self {
        Self {
            peers: peers.unwrap_or_default(),
            ports: ports.unwrap_or_default(),
        }
    }
}

fn rules(spec: &NetworkPolicySpec, direction: Direction) -> Vec<Rule<'_>> {
    match direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| Rule::new(r.from.as_deref(), r.ports.as_deref()))
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| Rule::new(r.to.as_deref(), r.ports.as_deref()))
            .collect(),
    }
}

/// Whether one `from`/`to` entry of a policy in `namespace` matches `other`.
fn peer_matches(
    view: &ClusterView,
    peer: &NetworkPolicyPeer,
    namespace: &str,
    other: &Peer,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return in_block(block, other.ip);
    }
    // The API rejects an entry with no selector and no ipBlock; it matches nothing here.
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return false;
    }
    // Selectors match pods only: a node or an outside address is matched by ipBlock alone.
    let Some(pod) = other.policy_pod() else {
        return false;
    };
    let in_namespace = match &peer.namespace_selector {
        // A podSelector alone looks in the policy's own namespace.
        None => *pod.namespace == *namespace,
        Some(selector) => selects(selector, &namespace_labels(view, &pod.namespace)),
    };
    // Both selectors in one entry: pods matching the one in namespaces matching the other.
    in_namespace
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|selector| selects(selector, &pod.labels))
}

/// A namespace's labels. Until the Namespace itself is known, the one label the API
/// server sets on every namespace, so selecting a namespace by name still works.
fn namespace_labels<'v>(view: &'v ClusterView, name: &str) -> Cow<'v, Labels> {
    match view.namespaces.get(name) {
        Some(record) => Cow::Borrowed(&record.labels),
        None => Cow::Owned(NamespaceRecord::default_labels(name)),
    }
}

/// Inside `cidr` and outside every `except`. A CIDR that does not parse contains nothing.
fn in_block(block: &IPBlock, ip: IpAddr) -> bool {
    let contains = |cidr: &str| cidr.parse::<IpNet>().is_ok_and(|net| net.contains(&ip));
    contains(&block.cidr) && !block.except.iter().flatten().any(|cidr| contains(cidr))
}

/// `matchLabels` AND `matchExpressions`; an empty selector matches everything. A selector
/// the API would reject (an unknown operator, In without values) selects nothing.
pub(super) fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|selector| {
        selector
            .into_iter()
            .all(|expression| matches(&expression, labels))
    })
}

/// kube's `Expression::matches`, on a [`Labels`].
fn matches(expression: &Expression, labels: &Labels) -> bool {
    match expression {
        Expression::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
        Expression::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
        Expression::Exists(key) => labels.contains_key(key),
        Expression::DoesNotExist(key) => !labels.contains_key(key),
        Expression::Equal(key, value) => labels.get(key) == Some(value),
        Expression::NotEqual(key, value) => labels.get(key) != Some(value),
    }
}
