//! `cargo xtask build`: the release agent, with its eBPF program embedded.

use std::{
    io::{BufRead, BufReader, IsTerminal},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context, Result, bail};
use xtask::exec;

use crate::{toolchain, util};

/// What probe-agent's build.rs prints when it builds without the kernel program.
const NO_LINKER_WARNING: &str = "bpf-linker not found";

pub fn run() -> Result<()> {
    toolchain::bootstrap()?;
    let agent = build_agent()?;
    println!("{}", agent.display());
    Ok(())
}

/// Builds `probe-agent` in release mode and returns the binary's path. Fails if the binary
/// would not embed the eBPF program.
pub fn build_agent() -> Result<PathBuf> {
    let first = cargo_build()?;
    if first.embeds_program() {
        return first.executable();
    }
    // A build made before bpf-linker was installed is cached with an empty program (its
    // build script does not rerun just because bpf-linker appeared): rebuild the agent.
    eprintln!("xtask: probe-agent was built without its eBPF program; rebuilding it");
    exec::run_streaming(&mut util::cargo([
        "clean",
        "--release",
        "-p",
        "probe-agent",
    ]))?;
    let second = cargo_build()?;
    if second.linker_missing {
        bail!(
            "probe-agent's build did not find bpf-linker ({NO_LINKER_WARNING}) although \
             `cargo xtask build` installed it: is {} on PATH?",
            toolchain::cargo_home()?.join("bin").display()
        );
    }
    if !second.embeds_program() {
        bail!("probe-agent built, but its embedded eBPF program is empty");
    }
    second.executable()
}

#[derive(Debug, Default)]
struct BuildOutput {
    linker_missing: bool,
    /// OUT_DIR of probe-agent's build script, where aya-build puts the program.
    out_dir: Option<PathBuf>,
    executable: Option<PathBuf>,
}

impl BuildOutput {
    fn embeds_program(&self) -> bool {
        let size = self
            .out_dir
            .as_ref()
            .and_then(|d| d.join("probe-ebpf").metadata().ok())
            .map_or(0, |m| m.len());
        !self.linker_missing && size > 0
    }

    fn executable(&self) -> Result<PathBuf> {
        self.executable
            .clone()
            .context("cargo reported no probe-agent executable")
    }
}

/// `cargo build --release -p probe-agent`, showing cargo's output as it comes and reading its
/// JSON messages for the build script's OUT_DIR and the binary's path.
fn cargo_build() -> Result<BuildOutput> {
    let color = if std::io::stderr().is_terminal() {
        "--color=always"
    } else {
        "--color=never"
    };
    let mut cmd = util::cargo([
        "build",
        "--release",
        "-p",
        "probe-agent",
        "--message-format=json-render-diagnostics",
        color,
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", exec::describe(&cmd)))?;
    let stderr = child.stderr.take().expect("piped");
    let warned = std::thread::spawn(move || {
        let mut warned = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            warned |= line.contains(NO_LINKER_WARNING);
            eprintln!("{line}");
        }
        warned
    });
    let mut out = BuildOutput::default();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_agent = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("/probe-agent#") || id.contains("probe-agent@"));
        if !is_agent {
            continue;
        }
        match msg["reason"].as_str() {
            Some("build-script-executed") => {
                out.out_dir = msg["out_dir"].as_str().map(PathBuf::from);
            }
            Some("compiler-artifact") if msg["target"]["name"] == "probe-agent" => {
                if let Some(exe) = msg["executable"].as_str() {
                    out.executable = Some(PathBuf::from(exe));
                }
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    out.linker_missing = warned.join().unwrap_or(false);
    if !status.success() {
        bail!("`{}` failed ({status})", exec::describe(&cmd));
    }
    Ok(out)
}
