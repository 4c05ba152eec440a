//! Running external tools (ip, nft, cargo, ...) with errors that say what failed and why.

use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with no stdin, capturing its output. Fails on a non-zero exit
/// with the command line and its stderr in the error. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    check(cmd, &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    // Small inputs only (rulesets): writing before reading cannot dead-lock on a full pipe.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.as_bytes())
        .with_context(|| format!("writing stdin of `{}`", describe(cmd)))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", describe(cmd)))?;
    check(cmd, &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` with inherited stdio (its output streams to the user). Fails on non-zero exit.
pub fn run_streaming(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

fn check(cmd: &Command, output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let detail = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    bail!("`{}` failed ({}): {detail}", describe(cmd), output.status)
}

/// Absolute path of a system tool. Looks in PATH, then in the sbin directories, because
/// `sudo` and CI shells do not always put /usr/sbin (where ip, nft, dnsmasq live) on PATH.
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Like [`tool`], but `None` when it is not installed.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `Command::new(tool(name))` with `args`.
pub fn command<I, S>(name: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(tool(name));
    cmd.args(args);
    cmd
}

/// Stops `child` the way a kubelet stops a container: SIGTERM, up to `grace` to exit
/// (the agent detaches its programs then), SIGKILL after. Returns whether it exited by
/// itself; reaps it either way.
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    use nix::{sys::signal, unistd::Pid};
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    let _ = signal::kill(Pid::from_raw(child.id() as i32), signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_command_and_carry_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c echo boom >&2; exit 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn stdin_is_fed() {
        let out = run_with_stdin(&mut Command::new("cat"), "hello").unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn finds_sh() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("surely-not-a-tool-xyz").is_none());
    }
}
