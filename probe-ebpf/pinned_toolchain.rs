//! Which rustup toolchain builds the eBPF program: the nightly pinned in
//! probe-ebpf/rust-toolchain.toml. Shared, with `#[path]`, by probe-agent's build script and
//! `cargo xtask bootstrap`, so both pick the same compiler and LLVM.

use std::{path::Path, process::Command};

/// The pinned channel, e.g. `nightly-2026-05-20`.
pub fn pinned_channel(ebpf_dir: &Path) -> Result<String, String> {
    let path = ebpf_dir.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|err| format!("reading {}: {err}", path.display()))?;
    let file: toml::Table = text
        .parse()
        .map_err(|err| format!("{}: {err}", path.display()))?;
    file.get("toolchain")
        .and_then(|toolchain| toolchain.get("channel"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no `channel` under [toolchain]", path.display()))
}

/// The toolchain to run: the pinned channel when rustup has it, else the machine's `nightly`
/// when it is that same build (a nightly is built from the previous days' commits), else an
/// error that says how to install the pinned one.
pub fn resolve(ebpf_dir: &Path) -> Result<String, String> {
    let pinned = pinned_channel(ebpf_dir)?;
    let date = pinned
        .strip_prefix("nightly-")
        .and_then(|date| chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok())
        .ok_or_else(|| format!("the pinned channel {pinned} is not nightly-YYYY-MM-DD"))?;
    if commit_date(&pinned).is_some() {
        return Ok(pinned);
    }
    let install = format!("rustup toolchain install {pinned} --component rust-src");
    match commit_date("nightly") {
        Some(have) if (date - chrono::Days::new(2)..=date).contains(&have) => Ok("nightly".into()),
        Some(have) => Err(format!(
            "the eBPF program is pinned to {pinned} (probe-ebpf/rust-toolchain.toml), but the \
             installed nightly was built from {have}: install the pinned one with\n  {install}"
        )),
        None => Err(format!(
            "the eBPF program is built with {pinned} (probe-ebpf/rust-toolchain.toml), which is \
             not installed: install it with\n  {install}"
        )),
    }
}

/// The `commit-date` that `rustc +<toolchain> -vV` reports; `None` when it does not run.
fn commit_date(toolchain: &str) -> Option<chrono::NaiveDate> {
    let out = Command::new("rustc")
        .args([&format!("+{toolchain}"), "-vV"])
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let date = text
        .lines()
        .find_map(|line| line.strip_prefix("commit-date:"))?;
    chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").ok()
}
