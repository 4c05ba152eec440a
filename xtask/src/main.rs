//! `cargo xtask <task>`: netprobe's developer tasks. See README.md.

mod bench;
mod build;
mod capabilities;
mod demo;
mod deny;
mod fuzz;
mod image;
mod manifests;
mod monitoring;
mod runtime;
mod soak;
mod test;
mod toolchain;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "netprobe's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Install what is missing (nightly rust-src, bpf-linker, Debian packages), then build
    /// the release agent with its eBPF program; prints the binary's path.
    Build,
    /// A simulated node with pods, the agent watching it, and the incidents of docs/verdicts.md
    /// played against it (root).
    Demo(demo::DemoArgs),
    /// Format, lint, unit tests, then (root) the privileged suites and the demo.
    Test,
    /// Run probe-agent's fuzz targets (decoder, DNS, tracker, API query parser) for a
    /// bounded time each; fails on any crash (nightly, cargo-fuzz: installed if missing).
    Fuzz(fuzz::FuzzArgs),
    /// Run probe-agent's benchmarks (the performance budgets of docs/budgets.md).
    Bench(bench::BenchArgs),
    /// Only install what is missing (toolchain, bpf-linker, Debian packages).
    Bootstrap,
    /// The agent's container image, without a Docker engine: a static agent, FROM scratch,
    /// written as a docker-archive (target/netprobe-image.tar) for `kind load image-archive`.
    Image,
    /// Render deploy/ with `kubectl kustomize` and check it: schemas (strict), security and
    /// RBAC policy, the Grafana dashboard, the alerts (promtool check and test rules).
    CheckManifests,
    /// The dashboard's queries and the alerts' expressions against a real Prometheus that
    /// scrapes the demo's agent while the incidents happen (root).
    CheckMonitoring,
    /// The agent with exactly deploy/daemonset.yaml's capabilities attaches and gets ready,
    /// and without any one of them fails (root).
    CheckCapabilities,
    /// The image under podman + runc as the DaemonSet says: refused with a clear error
    /// under podman's default seccomp profile, judging containers' traffic on a bridge
    /// and a CNI ptp network under deploy/components/seccomp's profile (root).
    CheckRuntime(runtime::RuntimeArgs),
    /// Load and fault scenarios on a simulated node (root): a SYN flood with the API
    /// under HTTP load; one line per figure with its budget.
    Soak(soak::SoakArgs),
    /// `cargo deny check`: licenses, bans, sources and RustSec advisories of every
    /// dependency (deny.toml); offline against this machine's database copy if need be.
    Deny(deny::DenyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The error chain on one line, without the backtrace anyhow would print under
    // RUST_BACKTRACE=1 (set in CI): the messages say what to do, a backtrace does not.
    if let Err(e) = util::put_cargo_bin_on_path().and_then(|()| run(cli.task)) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Build => build::run(),
        Task::Demo(args) => demo::run(args),
        Task::Test => test::run(),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Bootstrap => toolchain::bootstrap(),
        Task::Image => image::run(),
        Task::CheckManifests => manifests::run(),
        Task::CheckMonitoring => monitoring::run(),
        Task::CheckCapabilities => capabilities::run(),
        Task::CheckRuntime(args) => runtime::run(args),
        Task::Soak(args) => soak::run(args),
        Task::Deny(args) => deny::run(args),
    }
}
