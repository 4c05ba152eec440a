//! diagnose: why a failing flow failed, in the words of the incident.
//!
//! The tracker says *what* happened to a flow (TIMEOUT, REFUSED, NXDOMAIN...); this
//! module says *why*: a [`Cause`] id, a reason naming the Kubernetes objects involved and
//! the one command that confirms it. It reads the cluster as [`crate::enrich`] last saw
//! it and what the probe saw on this node; it never blocks and never calls the API.

pub mod policy;

use std::sync::Arc;

use crate::model::Cause;

/// A cause with its words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub cause: Cause,
    /// Shared words (see [`crate::text`]): the same diagnosis made again allocates nothing.
    pub reason: Arc<str>,
    /// The one command that confirms the cause.
    pub next: Option<Arc<str>>,
}

pub mod dns;
pub mod path;
pub mod service;

use crate::{
    enrich::ClusterView,
    model::{DnsSummary, Flow, VerdictKind},
};

pub use path::PathFacts;

/// A flow that reached a failing verdict, with what the tracker knows beyond it.
#[derive(Clone, Debug)]
pub struct Failure<'a> {
    pub flow: &'a Flow,
    pub verdict: VerdictKind,
    pub dns: Option<&'a DnsSummary>,
    /// For an NXDOMAIN: the name the pod asked for, and every name its search path
    /// tried, in order.
    pub lookup: Option<(&'a str, &'a [String])>,
    pub path: PathFacts,
}

/// Why `failure` failed; `None` for a verdict that is not a failure.
pub fn explain(view: &ClusterView, failure: &Failure) -> Option<Diagnosis> {
    let flow = failure.flow;
    let qname = failure.dns.map_or("?", |dns| dns.qname.as_str());
    Some(match failure.verdict {
        VerdictKind::Ok | VerdictKind::Pending | VerdictKind::Aborted => return None,
        VerdictKind::Timeout => path::timeout(view, flow, &failure.path),
        VerdictKind::Refused | VerdictKind::Unreachable => {
            service::rejected(view, flow, failure.verdict)
        }
        VerdictKind::Reset => Diagnosis {
            cause: Cause::ConnectionReset,
            reason: "the server (or a middlebox on its behalf) reset the established connection"
                .into(),
            next: None,
        },
        VerdictKind::Nxdomain => {
            let single = [qname.to_string()];
            let (asked, tried) = failure
                .lookup
                .unwrap_or((qname.trim_end_matches('.'), &single));
            dns::name_not_found(view, asked, tried)
        }
        VerdictKind::Servfail | VerdictKind::DnsRefused | VerdictKind::DnsError => {
            let logs = match view.service_by_ip.get(&flow.dst_ip) {
                Some(service) => format!(
                    "kubectl logs -n {} svc/{} --tail=50",
                    service.namespace, service.name
                ),
                None => "kubectl logs -n kube-system -l k8s-app=kube-dns --tail=50".into(),
            };
            dns::server_error(&dns_server(view, flow), logs)
        }
        VerdictKind::DnsTimeout => path::policy_denial(view, flow)
            .unwrap_or_else(|| dns::no_answer(&dns_server(view, flow))),
    })
}

/// The DNS server a flow asked: its Service's name, else its address.
fn dns_server(view: &ClusterView, flow: &Flow) -> String {
    match view.service_by_ip.get(&flow.dst_ip) {
        Some(service) => format!(
            "{} ({})",
            service::qualified(&service.namespace, &service.name),
            flow.dst_ip
        ),
        None => flow.dst_ip.to_string(),
    }
}
