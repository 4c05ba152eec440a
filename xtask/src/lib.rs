//! netprobe's developer tasks. The binary (`cargo xtask ...`) builds, demos, tests and
//! benchmarks the probe; this library holds what the agent's privileged integration tests
//! share with it: [`lab`], a simulated Kubernetes node made of network namespaces.

pub mod exec;
pub mod lab;
