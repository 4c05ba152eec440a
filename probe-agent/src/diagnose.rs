//! diagnose: why a failing flow failed, in the words of the incident.
//!
//! The tracker says *what* happened to a flow (TIMEOUT, REFUSED, NXDOMAIN...); this
//! module says *why*: a [`Cause`] id, a reason naming the Kubernetes objects involved and
//! the one command that confirms it. It reads the cluster as [`crate::enrich`] last saw
//! it and what the probe saw on this node; it never blocks and never calls the API.

pub mod policy;

use crate::model::Cause;

/// A cause with its words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub cause: Cause,
    pub reason: String,
    /// The one command that confirms the cause.
    pub next: Option<String>,
}
