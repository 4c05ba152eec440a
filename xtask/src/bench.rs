//! `cargo xtask bench`: the performance budgets of docs/budgets.md, measured by probe-agent's
//! benchmark targets (`datapath`: classifier cost and veth throughput; `agent`: decode and
//! track rate, memory, verdict latency).

use anyhow::Result;
use lab::exec;

use crate::{build, toolchain, util};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Run only this benchmark target (`datapath` or `agent`).
    #[arg(long)]
    bench: Option<String>,
    /// Passed on to the benchmark program(s).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    toolchain::bootstrap()?;
    build::build_agent()?;
    let mut cmd = util::cargo(["bench", "-p", "probe-agent"]);
    if util::is_root() {
        // The kernel benchmarks (`datapath`) load programs and build namespaces: they are
        // behind the agent's root-only feature.
        cmd.args(["--features", "privileged-tests"]);
    } else {
        eprintln!(
            "xtask: WARNING: not root, so the `datapath` benchmark (eBPF cost, veth throughput) \
             is NOT run; run `{} bench` for all budgets",
            util::SUDO_HINT
        );
    }
    // Only the benchmark targets: plain `cargo bench` also runs every unit test as "ignored".
    cmd.args(["--bench", args.bench.as_deref().unwrap_or("*")]);
    if !args.args.is_empty() {
        cmd.arg("--").args(&args.args);
    }
    exec::run_streaming(&mut cmd)
}
