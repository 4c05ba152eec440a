//! `cargo xtask test`: everything CI checks, in order, with a summary.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lab::exec;

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
                "lab",
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
        // The image run by podman + runc as the DaemonSet says, on real container networks
        // (a bridge and a CNI ptp network), under the default and netprobe's seccomp profile.
        suite(
            "container runtime",
            true,
            util::cargo(["xtask", "check-runtime"]),
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
    // What each failed suite printed that says why, repeated above the summary: a CI log
    // is often read from its end.
    let mut why: Vec<(&str, Vec<String>)> = Vec::new();
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
            match run_teed(&mut suite.cmd, READERS_DRAIN) {
                Ok((true, _)) => Ok(()),
                Ok((false, output)) => {
                    why.push((suite.name, telling_lines(&output)));
                    Err(format!("`{}` failed", exec::describe(&suite.cmd)))
                }
                Err(e) => Err(format!("{e:#}")),
            }
        };
        results.push((suite.name, result));
    }

    for (name, lines) in &why {
        println!("\n==> Why {name} failed (excerpt; the full output is above)");
        for line in lines {
            println!("  | {line}");
        }
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

/// How long the output of a finished suite may take to drain.
const READERS_DRAIN: Duration = Duration::from_secs(5);

/// Runs `cmd` with its output streamed through (stdout to stdout, stderr to stderr) and
/// kept. Returns whether it succeeded, and its lines, both streams interleaved.
fn run_teed(cmd: &mut Command, drain: Duration) -> Result<(bool, Vec<String>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", exec::describe(cmd)))?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    fn copy<R: Read + Send + 'static>(
        from: R,
        mut to: impl Write + Send + 'static,
        lines: Arc<Mutex<Vec<String>>>,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = to.write_all(&line);
                let _ = to.flush();
                let text = String::from_utf8_lossy(&line);
                lines
                    .lock()
                    .expect("no panic while held")
                    .push(text.trim_end().to_string());
                line.clear();
            }
        })
    }
    let out = copy(
        child.stdout.take().expect("piped"),
        std::io::stdout(),
        Arc::clone(&lines),
    );
    let err = copy(
        child.stderr.take().expect("piped"),
        std::io::stderr(),
        Arc::clone(&lines),
    );
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", exec::describe(cmd)))?;
    // A process the suite left running (a daemon it failed to stop) may still hold the
    // pipes open: give the readers a moment to drain, never wait for it.
    let drained = Instant::now() + drain;
    while !(out.is_finished() && err.is_finished()) && Instant::now() < drained {
        thread::sleep(Duration::from_millis(10));
    }
    let lines = std::mem::take(&mut *lines.lock().expect("no panic while held"));
    Ok((status.success(), lines))
}

/// The lines of a failed suite's output that say why: each panic, sanitizer report or
/// error with the lines after it (a few of each), and the last lines.
fn telling_lines(output: &[String]) -> Vec<String> {
    const AFTER: usize = 8;
    const REPORTS: usize = 4;
    const LAST: usize = 12;
    let mut picked = Vec::new();
    let mut next = 0;
    let starts = output
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.contains("panicked at")
                || l.contains("ERROR: ")
                || l.starts_with("error")
                || l.contains("FAILED: ")
        })
        .map(|(i, _)| i)
        .take(REPORTS);
    for start in starts {
        let from = start.max(next);
        let to = (start + AFTER).min(output.len());
        if from < to {
            if from > next && !picked.is_empty() {
                picked.push("…".to_string());
            }
            picked.extend(output[from..to].iter().cloned());
            next = to;
        }
    }
    let tail = output.len().saturating_sub(LAST).max(next);
    if tail > next && !picked.is_empty() {
        picked.push("…".to_string());
    }
    picked.extend(output[tail..].iter().cloned());
    picked
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

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        time::{Duration, Instant},
    };

    use super::{run_teed, telling_lines};

    #[test]
    fn output_is_kept_and_a_leftover_daemon_does_not_hold_the_run() {
        let started = Instant::now();
        let (ok, lines) = run_teed(
            Command::new("sh").args(["-c", "echo out; echo err >&2; sleep 5 & exit 3"]),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(!ok);
        let mut lines = lines;
        lines.sort();
        assert_eq!(lines, ["err", "out"]);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_panic_and_the_last_lines_are_told() {
        let mut output = lines("running 3 tests\ntest a ... ok\n");
        output.extend(lines(
            "thread 'b' panicked at src/b.rs:1:5:\nassertion failed\nleft: 1\nright: 2",
        ));
        output.extend((0..30).map(|i| format!("noise {i}")));
        output.extend(lines("test result: FAILED. 1 passed; 1 failed"));
        let told = telling_lines(&output);
        assert_eq!(told[0], "thread 'b' panicked at src/b.rs:1:5:");
        assert_eq!(told[1], "assertion failed");
        assert!(told.contains(&"…".to_string()));
        assert_eq!(
            told.last().unwrap(),
            "test result: FAILED. 1 passed; 1 failed"
        );
        assert!(told.len() <= 8 + 1 + 12, "{told:#?}");
    }

    #[test]
    fn short_output_is_told_whole_once() {
        let output = lines("error: could not compile\nsecond line");
        assert_eq!(telling_lines(&output), output);
    }
}
