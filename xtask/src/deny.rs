//! `cargo xtask deny`: `cargo deny check` on the workspace (deny.toml): licenses, bans
//! (wildcards, duplicates reported), sources (crates.io only); `--advisories` adds the
//! RustSec advisories, whose database is fetched from GitHub.

use std::process::Command;

use anyhow::{Context, Result};
use xtask::exec;

use crate::util;

/// The cargo-deny release the checks are written for (deny.toml's format).
const CARGO_DENY_VERSION: &str = "0.20.2";

#[derive(clap::Args, Debug)]
pub struct DenyArgs {
    /// Also check the RustSec advisory database (needs github.com, which some build
    /// machines cannot reach).
    #[arg(long)]
    advisories: bool,
}

pub fn run(args: DenyArgs) -> Result<()> {
    ensure_cargo_deny()?;
    let mut checks = vec!["licenses", "bans", "sources"];
    if args.advisories {
        checks.push("advisories");
    }
    let mut cmd = util::cargo(["deny", "--all-features", "check"]);
    cmd.args(&checks);
    exec::run_streaming(&mut cmd).context(if args.advisories {
        "cargo deny found problems (or could not fetch the advisory database from github.com)"
    } else {
        "cargo deny found problems"
    })
}

/// Installs cargo-deny from crates.io when it is missing or another release.
fn ensure_cargo_deny() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    if installed.is_some_and(|v| v.trim().ends_with(CARGO_DENY_VERSION)) {
        return Ok(());
    }
    println!("xtask: installing cargo-deny {CARGO_DENY_VERSION} (a few minutes, once)");
    exec::run_streaming(&mut util::cargo([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        CARGO_DENY_VERSION,
    ]))
    .context("installing cargo-deny")
}
