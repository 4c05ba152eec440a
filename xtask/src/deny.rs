//! `cargo xtask deny`: `cargo deny check` on the workspace (deny.toml): licenses, bans
//! (wildcards, duplicates reported), sources (crates.io only), and the RustSec advisories.
//!
//! The advisory database is a git repository on github.com. Where github.com cannot be
//! reached, the newest copy this machine already has (cargo-deny's own
//! `$CARGO_HOME/advisory-dbs`) is used offline and its age printed; with none at all, the
//! advisories are reported as not checked (or fail the run under `--require-advisories`).

use std::{
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use lab::exec;

use crate::util;

/// The cargo-deny release the checks are written for (deny.toml's format).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// Where cargo-deny keeps the RustSec database for its default URL
/// (`{CARGO_HOME}/advisory-dbs/{name}-{hash of the URL}`).
const ADVISORY_DB_DIR: &str = "advisory-dbs/advisory-db-3157b0e258782691";

#[derive(clap::Args, Debug)]
pub struct DenyArgs {
    /// Fail when no advisory database can be fetched and none is on this machine,
    /// instead of reporting the advisories as not checked.
    #[arg(long)]
    require_advisories: bool,
}

pub fn run(args: DenyArgs) -> Result<()> {
    ensure_cargo_deny()?;
    let mut cmd = util::cargo(["deny", "--all-features", "check"]);
    cmd.args(["licenses", "bans", "sources"]);
    exec::run_streaming(&mut cmd).context("cargo deny found problems")?;
    check_advisories(args.require_advisories)
}

fn check_advisories(required: bool) -> Result<()> {
    let fetched = Command::new("cargo")
        .args(["deny", "fetch", "db"])
        .output()
        .is_ok_and(|out| out.status.success());
    let db = util::cargo_home()?.join(ADVISORY_DB_DIR);
    let mut cmd = util::cargo(["deny", "--all-features"]);
    if fetched {
        println!("xtask: RustSec advisory database fetched");
    } else if let Some(committed) = last_commit(&db) {
        let age_days = SystemTime::now()
            .duration_since(committed)
            .unwrap_or(Duration::ZERO)
            .as_secs()
            / 86_400;
        println!(
            "xtask: github.com unreachable: checking advisories against this machine's copy \
             of the RustSec database ({}, last commit {age_days} days ago)",
            db.display()
        );
        // Offline: cargo-deny would otherwise try to fetch it again, and fail.
        cmd.arg("--offline");
    } else {
        let msg = format!(
            "advisories NOT checked: the RustSec database could not be fetched from github.com \
             and there is no copy at {}",
            db.display()
        );
        if required {
            bail!("{msg}");
        }
        eprintln!("xtask: WARNING: {msg}");
        return Ok(());
    }
    cmd.args(["check", "advisories"]);
    exec::run_streaming(&mut cmd).context("cargo deny found advisories against dependencies")
}

/// When the database copy at `db` was last committed to; `None` if it is not one.
fn last_commit(db: &Path) -> Option<SystemTime> {
    let out = Command::new("git")
        .arg("-C")
        .arg(db)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let secs: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
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
