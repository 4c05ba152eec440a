//! netprobe's agent: loads the kernel program onto pod veths, turns its events into
//! per-connection verdicts and serves them over HTTP.
//!
//! Data flows one way through one module per concern:
//! `loader`/`attach` (kernel side) → `decode` (wire bytes → typed packets) →
//! `track` (per-flow state machine → verdicts, named by `enrich` from the Kubernetes
//! API) → `serve` (HTTP API) and `metrics`.

pub mod attach;
pub mod config;
pub mod decode;
pub mod diagnose;
pub mod enrich;
pub mod kube_events;
pub mod loader;
pub mod local_addresses;
pub mod metrics;
pub mod model;
pub mod nat;
pub mod observe;
pub mod privileges;
pub mod run;
pub mod serve;
pub mod text;
pub mod track;
