//! Tests that need root: the real kernel program (BPF_PROG_TEST_RUN) and the whole agent
//! on a simulated node made of network namespaces with real traffic.
//! Built only with `--features privileged-tests` (`cargo xtask test` does that).

mod api_auth;
mod bridge;
mod causes;
mod conntrack;
mod datapaths;
mod dead_task;
mod delivered;
mod differential;
mod discovery;
mod e2e;
mod kernel;
mod observe_cluster;
mod real_traffic;
mod resilience;
mod security;
