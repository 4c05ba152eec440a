//! NetworkPolicy (networking.k8s.io/v1) evaluation: which policy, if any, stops a flow.
//! (Placeholder until the evaluator lands: evaluates nothing.)

use std::{net::IpAddr, sync::Arc};

use crate::{
    enrich::{ClusterView, PodRecord},
    model::Protocol,
};

pub struct Peer<'a> {
    pub ip: IpAddr,
    pub pod: Option<&'a PodRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    IngressDenied {
        namespace: Arc<str>,
        pod: Arc<str>,
        policies: Vec<String>,
    },
    EgressDenied {
        namespace: Arc<str>,
        pod: Arc<str>,
        policies: Vec<String>,
    },
    Allowed {
        ingress: Vec<String>,
        egress: Vec<String>,
    },
    Unknown,
}

pub fn evaluate(
    _view: &ClusterView,
    _src: &Peer,
    _dst: &Peer,
    _protocol: Protocol,
    _port: u16,
) -> PolicyOutcome {
    PolicyOutcome::Unknown
}

impl PolicyOutcome {
    pub fn reason(&self, _src: &Peer, _protocol: Protocol, _port: u16) -> String {
        String::new()
    }
    pub fn next(&self) -> Option<String> {
        None
    }
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::IngressDenied { .. } | Self::EgressDenied { .. })
    }
}
