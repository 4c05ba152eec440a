//! `cargo xtask test`: everything CI checks, in order, with a summary.

use std::process::Command;

use anyhow::{Result, bail};
use xtask::exec;

use crate::{toolchain, util};

struct Suite {
    name: &'static str,
    /// Needs root (namespaces, eBPF).
    privileged: bool,
    cmd: Command,
}

fn suites() -> Vec<Suite> {
    let suite = |name, privileged, cmd| Suite {
        name,
        privileged,
        cmd,
    };
    vec![
        suite(
            "format",
            false,
            util::cargo(["fmt", "--all", "--", "--check"]),
        ),
        // --all-features: the privileged test code is linted too, not only compiled as root.
        suite(
            "clippy",
            false,
            util::cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        suite("unit tests", false, util::cargo(["test", "--workspace"])),
        // Licenses, bans, sources and RustSec advisories of every dependency (deny.toml).
        suite("cargo deny", false, util::cargo(["xtask", "deny"])),
        // Each fuzz target of probe-agent/fuzz for a short run (nightly, cargo-fuzz); a
        // crash fails it and leaves the input under target/fuzz/artifacts/.
        suite(
            "fuzz (20 s per target)",
            false,
            util::cargo(["xtask", "fuzz", "--seconds", "20"]),
        ),
        // Builds the static agent and its image, then reads the archive back and checks it
        // (config, labels, the one layer, the binary static). No root once umoci and skopeo
        // are installed (umoci runs rootless).
        suite("image", false, util::cargo(["xtask", "image"])),
        // deploy/ rendered and validated (schemas, policy, dashboard, alert unit tests):
        // no root, but kubectl, promtool and python3 (installed by the bootstrap as root).
        suite(
            "manifests",
            false,
            util::cargo(["xtask", "check-manifests"]),
        ),
        // One at a time: each test builds its own node, but they share the CPU (2 cores)
        // and timeouts are part of what they measure.
        suite(
            "agent privileged tests",
            true,
            util::cargo([
                "test",
                "-p",
                "probe-agent",
                "--features",
                "privileged-tests",
                "--",
                "--test-threads=1",
            ]),
        ),
        suite(
            "lab privileged tests",
            true,
            util::cargo([
                "test",
                "-p",
                "xtask",
                "--features",
                "privileged",
                "--",
                "--test-threads=1",
            ]),
        ),
        suite(
            "demo smoke test",
            true,
            util::cargo(["xtask", "demo", "--no-wait"]),
        ),
        // The DaemonSet's capabilities are enough for the agent, and each is needed.
        suite(
            "DaemonSet capabilities",
            true,
            util::cargo(["xtask", "check-capabilities"]),
        ),
        // The load scenario, bounded: a 10 s SYN flood with the API under wrk.
        suite(
            "soak (quick)",
            true,
            util::cargo(["xtask", "soak", "--quick"]),
        ),
        // The dashboard's queries and the alerts against a Prometheus scraping the demo.
        suite(
            "monitoring end to end",
            true,
            util::cargo(["xtask", "check-monitoring"]),
        ),
    ]
}

pub fn run() -> Result<()> {
    toolchain::bootstrap()?;
    warn_if_disk_is_short();
    let root = util::is_root();
    let all = suites();
    let total = all.len();
    let mut results: Vec<(&str, Result<(), String>)> = Vec::new();
    for (i, mut suite) in all.into_iter().enumerate() {
        println!(
            "\n==> [{}/{total}] {}: {}",
            i + 1,
            suite.name,
            exec::describe(&suite.cmd)
        );
        let result = if suite.privileged && !root {
            // Never a silent skip: not running them is a failure of the run.
            let msg = format!("needs root: run `{} test`", util::SUDO_HINT);
            eprintln!("xtask: NOT RUN: {} {msg}", suite.name);
            Err(msg)
        } else {
            exec::run_streaming(&mut suite.cmd).map_err(|e| format!("{e:#}"))
        };
        results.push((suite.name, result));
    }

    println!("\n==> Summary");
    for (name, result) in &results {
        match result {
            Ok(()) => println!("  pass  {name}"),
            Err(e) => println!("  FAIL  {name}: {e}"),
        }
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        if !root {
            bail!(
                "the privileged suites need root (namespaces, eBPF): run `{} test`",
                util::SUDO_HINT
            );
        }
        bail!("{failed} suite(s) failed");
    }
    Ok(())
}

/// What a run from a clean clone writes (target/ with the fuzz builds and the image), with
/// room to spare: 7.3 GiB measured with .ci/run's settings, about 11 GiB without them.
const DISK_NEEDED_GIB: u64 = 12;

/// A full disk fails every suite after it with ENOSPC, which reads like a dozen bugs:
/// say so up front.
fn warn_if_disk_is_short() {
    let Ok(stat) = nix::sys::statvfs::statvfs(".") else {
        return;
    };
    let free_gib = (stat.blocks_available() * stat.fragment_size()) >> 30;
    println!("xtask: {free_gib} GiB free on the disk of the working tree");
    if free_gib < DISK_NEEDED_GIB {
        eprintln!(
            "xtask: WARNING: a full run writes up to {DISK_NEEDED_GIB} GiB; with {free_gib} GiB free, \
             suites may fail with \"No space left on device\""
        );
    }
}
