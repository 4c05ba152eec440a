//! What the agent's privileged integration tests still take from xtask: [`kube_stand_in`],
//! a Kubernetes API server stand-in serving recorded objects. The simulated node is the
//! `lab` crate, re-exported here as [`lab`] (with its [`exec`] and [`kube_objects`]) while
//! the tests move over to it.

pub use lab::{self, exec, kube_objects};
pub mod kube_stand_in;
