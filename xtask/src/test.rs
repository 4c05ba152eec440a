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
    ]
}

pub fn run() -> Result<()> {
    toolchain::bootstrap()?;
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
