//! `cargo xtask fuzz`: probe-agent's cargo-fuzz targets (probe-agent/fuzz/), each for a
//! bounded time, with a summary of executions, coverage and crashes.
//!
//! Each target starts from its committed seeds (`probe-agent/fuzz/corpus/<target>/`, read
//! only) and from what earlier runs found (`target/fuzz/corpus/<target>/`, where new
//! inputs go). A crash, a timeout (10 s on one input) or running out of memory fails the
//! run; the input is kept in `target/fuzz/artifacts/<target>/` and the message says how to
//! replay it. Found crashes become regression tests in probe-agent's unit tests.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use lab::exec;

use crate::{toolchain, util};

/// Every target of probe-agent/fuzz/Cargo.toml, in the order they run.
pub const TARGETS: &[&str] = &[
    "decode_record",
    "decode_packet",
    "dns",
    "track",
    "query_pairs",
    "query_string",
];

/// Targets that get the query dictionary (parameter names and typical values).
const QUERY_TARGETS: &[&str] = &["query_pairs", "query_string"];

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Only these targets (comma-separated; default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: Vec<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    executions: Option<u64>,
    per_second: Option<u64>,
    coverage: Option<String>,
    /// Why it failed, with the input kept, if it did.
    failure: Option<String>,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    toolchain::ensure_fuzz_toolchain()?;
    let targets: Vec<String> = if args.target.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.target
    };
    let root = util::workspace_root();
    let paths = Paths::new(&root);

    // The fuzz crate is its own workspace: `cargo fmt --all` does not reach it.
    let manifest = paths.fuzz_dir.join("Cargo.toml");
    exec::run_streaming(
        Command::new("cargo")
            .arg("fmt")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--", "--check"]),
    )
    .context("the fuzz targets are not formatted: run `cargo fmt --manifest-path probe-agent/fuzz/Cargo.toml`")?;
    println!("xtask: building the fuzz targets (nightly, AddressSanitizer, debug assertions)");
    exec::run_streaming(&mut paths.cargo_fuzz("build", &[]))?;

    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(&paths, target, args.seconds)?);
    }

    println!("\n==> Fuzzing summary ({} s per target)", args.seconds);
    for o in &outcomes {
        let number = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
        println!(
            "  {:<14} {:>10} executions ({:>6}/s)  {:<22} {}",
            o.target,
            number(o.executions),
            number(o.per_second),
            o.coverage.as_deref().unwrap_or(""),
            match &o.failure {
                None => "no crash".to_string(),
                Some(why) => format!("FAILED: {why}"),
            }
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found failures in {} (inputs kept in {}; make each a regression test in probe-agent)",
            failed.join(", "),
            paths.artifacts.display()
        );
    }
    Ok(())
}

struct Paths {
    fuzz_dir: PathBuf,
    target_dir: PathBuf,
    /// Inputs found by earlier runs; libFuzzer adds new ones here.
    corpus: PathBuf,
    artifacts: PathBuf,
    logs: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> Self {
        let target_dir = root.join("target").join("fuzz");
        Self {
            fuzz_dir: root.join("probe-agent").join("fuzz"),
            corpus: target_dir.join("corpus"),
            artifacts: target_dir.join("artifacts"),
            logs: target_dir.join("logs"),
            target_dir,
        }
    }

    /// `cargo +nightly fuzz <task> ... <args>`, with the same build settings for every
    /// task so that `run` reuses what `build` built.
    fn cargo_fuzz(&self, task: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", task, "--debug-assertions", "--fuzz-dir"])
            .arg(&self.fuzz_dir)
            .arg("--target-dir")
            .arg(&self.target_dir)
            .args(args)
            .current_dir(util::workspace_root())
            // The fuzz targets never load the kernel program: skip building it.
            .env("AYA_BUILD_SKIP", "1");
        cmd
    }
}

fn run_target(paths: &Paths, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = paths.corpus.join(target);
    let seeds = paths.fuzz_dir.join("corpus").join(target);
    let artifacts = paths.artifacts.join(target);
    for dir in [&corpus, &artifacts, &paths.logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = paths.logs.join(format!("{target}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut libfuzzer = vec![
        format!("-max_total_time={seconds}"),
        "-print_final_stats=1".into(),
        // One slow input is a finding too: the API and the event loop must keep up.
        "-timeout=10".into(),
        "-rss_limit_mb=2048".into(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ];
    if QUERY_TARGETS.contains(&target) {
        libfuzzer.push(format!(
            "-dict={}",
            paths.fuzz_dir.join("query.dict").display()
        ));
    }
    let corpus_arg = corpus.to_string_lossy().into_owned();
    let seeds_arg = seeds.to_string_lossy().into_owned();
    let mut args = vec![target, corpus_arg.as_str(), seeds_arg.as_str(), "--"];
    args.extend(libfuzzer.iter().map(String::as_str));
    let mut cmd = paths.cargo_fuzz("run", &args);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);

    println!(
        "\n==> fuzz {target} for {seconds} s: {}",
        exec::describe(&cmd)
    );
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", exec::describe(&cmd)))?;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stats = Stats::from_output(&output);
    let outcome = Outcome {
        target: target.to_string(),
        executions: stats.executions,
        per_second: stats.per_second,
        coverage: stats.coverage,
        failure: (!status.success()).then(|| failure(&output, target, &log_path)),
    };
    println!(
        "    {} executions in {:.0} s, {}",
        outcome
            .executions
            .map_or("?".to_string(), |n| n.to_string()),
        started.elapsed().as_secs_f64(),
        match &outcome.failure {
            None => "no crash".to_string(),
            Some(why) => format!("FAILED: {why}"),
        }
    );
    if outcome.failure.is_some() {
        // The crash report: libFuzzer's and the sanitizer's last words.
        let lines: Vec<&str> = output.lines().collect();
        eprintln!("--- last lines of {} ---", log_path.display());
        for line in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{line}");
        }
    }
    Ok(outcome)
}

/// What libFuzzer says about a run (`-print_final_stats=1`).
#[derive(Debug, Default, PartialEq)]
struct Stats {
    executions: Option<u64>,
    per_second: Option<u64>,
    /// "cov N ft M" from the last status line: code edges and features reached.
    coverage: Option<String>,
}

impl Stats {
    fn from_output(output: &str) -> Self {
        let stat = |name: &str| {
            output.lines().find_map(|line| {
                line.strip_prefix(&format!("stat::{name}:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        };
        // The last status line: "#123456\tDONE   cov: 1234 ft: 5678 corp: ...".
        let coverage = output
            .lines()
            .rev()
            .find(|line| line.starts_with('#') && line.contains("cov: "))
            .and_then(|line| {
                let cov = line.split("cov: ").nth(1)?.split_whitespace().next()?;
                let ft = line.split("ft: ").nth(1)?.split_whitespace().next()?;
                Some(format!("cov {cov} ft {ft}"))
            });
        Self {
            executions: stat("number_of_executed_units"),
            per_second: stat("average_exec_per_sec"),
            coverage,
        }
    }
}

/// What went wrong, from libFuzzer's output, and how to replay it.
fn failure(output: &str, target: &str, log: &Path) -> String {
    let kind = if output.contains("ERROR: libFuzzer: timeout") {
        "timeout"
    } else if output.contains("ERROR: libFuzzer: out-of-memory") {
        "out of memory"
    } else if output.contains("ERROR: AddressSanitizer") {
        "memory error"
    } else if output.contains("panicked at") || output.contains("deadly signal") {
        "crash"
    } else {
        "fuzzer failed"
    };
    match output
        .lines()
        .find_map(|l| l.split("Test unit written to ").nth(1))
    {
        Some(input) => format!(
            "{kind}, input {input}; replay: AYA_BUILD_SKIP=1 cargo +nightly fuzz run -a \
             --fuzz-dir probe-agent/fuzz --target-dir target/fuzz {target} {input}"
        ),
        None => format!("{kind}, see {}", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: &str = "#1024\tpulse  cov: 10 ft: 20 corp: 3/4b exec/s: 512 rss: 100Mb
#426856\tDONE   cov: 1918 ft: 4672 corp: 152/30Kb lim: 4096 exec/s: 20326 rss: 390Mb
Done 426856 runs in 21 second(s)
stat::number_of_executed_units: 426856
stat::average_exec_per_sec:     20326
stat::new_units_added:          143
";

    #[test]
    fn stats_from_libfuzzer_output() {
        assert_eq!(
            Stats::from_output(DONE),
            Stats {
                executions: Some(426856),
                per_second: Some(20326),
                coverage: Some("cov 1918 ft 4672".into()),
            }
        );
        assert_eq!(
            Stats::from_output("error: could not compile"),
            Stats::default()
        );
    }

    #[test]
    fn failures_name_the_kind_and_the_input_to_replay() {
        let crash = "thread '<unnamed>' panicked at probe-agent/src/track.rs:434:81:
attempt to add with overflow
==20733== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/target/fuzz/artifacts/track/'; Test unit written to /w/target/fuzz/artifacts/track/crash-da39
";
        let why = failure(crash, "track", Path::new("track.log"));
        assert!(
            why.starts_with("crash, input /w/target/fuzz/artifacts/track/crash-da39;"),
            "{why}"
        );
        assert!(
            why.contains(
                "fuzz run -a --fuzz-dir probe-agent/fuzz --target-dir target/fuzz track /w/"
            ),
            "{why}"
        );
        let slow =
            "==1== ERROR: libFuzzer: timeout after 10 seconds\nTest unit written to /x/timeout-1\n";
        assert!(failure(slow, "dns", Path::new("l")).starts_with("timeout, input /x/timeout-1"));
        assert_eq!(
            failure("", "dns", Path::new("dns.log")),
            "fuzzer failed, see dns.log"
        );
    }
}
