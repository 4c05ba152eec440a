//! netprobe's developer tasks. The binary (`cargo xtask ...`) builds, demos, tests and
//! benchmarks the probe; this library holds what the agent's privileged integration tests
//! share with it: [`lab`], a simulated Kubernetes node made of network namespaces, and
//! [`kube_stand_in`], a Kubernetes API server stand-in serving recorded objects, with
//! [`kube_objects`] to build what it serves.

pub mod exec;
pub mod kube_objects;
pub mod kube_stand_in;
pub mod lab;
