//! `cargo xtask build`: the release agent, with its eBPF program embedded.

use std::{
    io::{BufRead, BufReader, IsTerminal},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use lab::exec;

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
    build(None)
}

/// Like [`build_agent`], but statically linked against glibc (`-C target-feature=+crt-static`)
/// for `triple` (a `*-linux-gnu` target), so that it runs in a `FROM scratch` image. The
/// explicit `--target` keeps the flag off build scripts and proc-macros (which must stay
/// dynamic) and puts this build in `target/<triple>/release`, apart from [`build_agent`]'s:
/// neither invalidates the other. The eBPF program is built by the same build script.
pub fn build_static_agent(triple: &str) -> Result<PathBuf> {
    build(Some(triple))
}

/// `cargo <args> -p probe-agent`, for the host (`target` `None`) or statically linked for
/// `target`.
fn agent_cargo<const N: usize>(args: [&str; N], target: Option<&str>) -> Command {
    let mut cmd = util::cargo(args);
    cmd.args(["-p", "probe-agent"]);
    if let Some(triple) = target {
        // Our flags, not the caller's: CARGO_ENCODED_RUSTFLAGS would take precedence.
        cmd.args(["--target", triple])
            .env("RUSTFLAGS", STATIC_RUSTFLAGS)
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
    }
    cmd
}

/// How [`build_static_agent`] links: glibc statically, without DWARF (a quarter of the
/// binary; symbol names stay, so backtraces keep their function names).
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=debuginfo";

fn build(target: Option<&str>) -> Result<PathBuf> {
    let first = cargo_build(target)?;
    if first.embeds_program() {
        return first.executable();
    }
    // A build made before bpf-linker was installed is cached with an empty program (its
    // build script does not rerun just because bpf-linker appeared): rebuild the agent.
    eprintln!("xtask: probe-agent was built without its eBPF program; rebuilding it");
    exec::run_streaming(&mut agent_cargo(["clean", "--release"], target))?;
    let second = cargo_build(target)?;
    if second.linker_missing {
        bail!(
            "probe-agent's build did not find bpf-linker ({NO_LINKER_WARNING}) although \
             `cargo xtask build` installed it: is {} on PATH?",
            util::cargo_home()?.join("bin").display()
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

/// `cargo build --release -p probe-agent` (see [`agent_cargo`] for `target`), showing cargo's
/// output as it comes and reading its JSON messages for the build script's OUT_DIR and the
/// binary's path.
fn cargo_build(target: Option<&str>) -> Result<BuildOutput> {
    let color = if std::io::stderr().is_terminal() {
        "--color=always"
    } else {
        "--color=never"
    };
    let mut cmd = agent_cargo(
        [
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            color,
        ],
        target,
    );
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
