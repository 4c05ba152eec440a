//! Small helpers shared by the tasks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// `CARGO_HOME`, as cargo and rustup resolve it.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// How to run a task as root without losing the user's cargo (sudo resets PATH).
pub const SUDO_HINT: &str = "sudo -E env \"PATH=$PATH\" cargo xtask";

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo <args>` run from the workspace root.
pub fn cargo<const N: usize>(args: [&str; N]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    lab::is_root()
}

/// Fails with a clear message when not root.
pub fn require_root(task: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask {task}` needs root ({why}): run `{SUDO_HINT} {task}`");
    }
    Ok(())
}

/// Makes sure `$CARGO_HOME/bin` is on PATH for the programs we start: bpf-linker is
/// installed there and aya-build calls it by name.
pub fn put_cargo_bin_on_path() -> Result<()> {
    let bin = cargo_home()?.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return Ok(());
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))?;
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { std::env::set_var("PATH", joined) };
    Ok(())
}
