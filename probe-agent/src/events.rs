//! Kubernetes Events for failing flows (`--events`): `kubectl describe pod` shows why the
//! pod's connections fail.

use std::sync::Arc;

use crate::model::{Cause, Flow};

/// A flow from a known pod reached a failing cause: what the tracker hands to the
/// Event writer.
#[derive(Clone, Debug, PartialEq)]
pub struct CauseReport {
    /// The source pod.
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub cause: Cause,
    pub reason: Arc<str>,
    pub next: Option<Arc<str>>,
    pub flow: Flow,
}
