//! `cargo xtask image`: the agent's container image, built without a Docker engine, as a
//! docker-archive (`docker save` format) that `kind load image-archive` imports.
//!
//! The agent is linked statically against glibc ([`build::build_static_agent`]), so the image
//! is `FROM scratch`: one layer holding `/usr/local/bin/probe-agent` and its parent
//! directories, nothing else. No shell, no package manager, nothing writable, and no CA
//! bundle: in a cluster the agent trusts the API server through the service account's
//! `ca.crt`. umoci builds the image as an OCI layout (rootless when not root), skopeo turns
//! it into the docker-archive. Every timestamp is the HEAD commit's (or `SOURCE_DATE_EPOCH`),
//! so the same binary at the same commit gives the same archive, byte for byte. Then the
//! archive itself is read back and checked ([`check_archive`]); `cargo xtask test` runs this
//! task as its `image` suite.

use std::{
    collections::BTreeMap,
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, SecondsFormat};
use lab::exec;

use crate::{build, toolchain, util};

mod assemble;
mod check;
#[cfg(test)]
mod tests;

use assemble::assemble;
pub use check::{check_archive, elf_interpreter};

/// The image's name; its tag is the workspace version.
pub const REPOSITORY: &str = "netprobe/probe-agent";
/// The workspace's version (xtask shares version and license with probe-agent).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the binary is in the image (no leading slash, as in a layer).
const BINARY: &str = "usr/local/bin/probe-agent";
/// The directories above [`BINARY`], which the layer may list ("" is the root).
const PARENT_DIRS: &[&str] = &["", "usr", "usr/local", "usr/local/bin"];
const CMD: &str = "run";
/// nonroot, as in distroless. The DaemonSet runs the agent as uid 0 with only the
/// capabilities it needs (Kubernetes gives a non-root container no ambient capabilities);
/// `probe-agent observe` works as this user.
const USER: &str = "65532:65532";
/// The API and `/metrics`.
const PORT: &str = "9810/tcp";
/// The archive, under `target/`.
const ARCHIVE: &str = "netprobe-image.tar";
/// The Kind cluster name in the command we print: deploy/kind/cluster.yaml's `name`
/// (`cargo xtask check-manifests` checks it), which the README's quick start uses.
pub const KIND_CLUSTER: &str = "netprobe";
const DESCRIPTION: &str = "netprobe agent: per-connection verdicts (TIMEOUT, REFUSED, RESET, \
                           UNREACHABLE, NXDOMAIN, ...) from an eBPF probe on each pod's veth";

pub fn run() -> Result<()> {
    let started = Instant::now();
    // nightly and bpf-linker: the agent embeds its eBPF program.
    toolchain::bootstrap()?;
    toolchain::ensure_image_packages()?;
    let host = host_triple()?;
    ensure!(
        host.ends_with("-linux-gnu"),
        "`cargo xtask image` links the agent statically against glibc, for a *-linux-gnu host; \
         this host is {host}"
    );
    let spec = Spec::for_head(oci_architecture(&host)?)?;

    let binary_path = build::build_static_agent(&host)?;
    let binary =
        fs::read(&binary_path).with_context(|| format!("reading {}", binary_path.display()))?;
    if let Some(interpreter) = elf_interpreter(&binary)? {
        bail!(
            "{} is dynamically linked (interpreter {interpreter}) although it was built with \
             RUSTFLAGS=\"{}\": it would not run in a FROM scratch image",
            binary_path.display(),
            build::STATIC_RUSTFLAGS
        );
    }
    // It runs on its own: no loader, no shared library.
    exec::run(Command::new(&binary_path).arg("--help"))
        .with_context(|| format!("the static agent {} does not run", binary_path.display()))?;

    let target = util::workspace_root().join("target");
    let archive = target.join(ARCHIVE);
    assemble(
        &binary_path,
        &spec,
        &target.join("netprobe-image"),
        &archive,
    )?;

    let bytes = fs::read(&archive).with_context(|| format!("reading {}", archive.display()))?;
    let checked =
        check_archive(&bytes, &spec).with_context(|| format!("checking {}", archive.display()))?;
    ensure!(
        checked.binary == binary,
        "the binary in the image differs from {}",
        binary_path.display()
    );

    let shown = archive
        .strip_prefix(util::workspace_root())
        .unwrap_or(&archive);
    println!(
        "\nxtask: built {} in {}\n  \
         archive   {} (docker-archive, {})\n  \
         image ID  {}\n  \
         contents  one layer ({} uncompressed): /{BINARY}, statically linked (glibc), \
         FROM scratch\n  \
         config    entrypoint /{BINARY} {CMD}, user {USER}, port {PORT}, revision {}\n\n\
         Load it into a Kind cluster with\n  \
         kind load image-archive {} --name {KIND_CLUSTER}",
        spec.tag,
        minutes(started.elapsed()),
        shown.display(),
        mib(bytes.len() as u64),
        checked.image_id,
        mib(checked.layer_size),
        spec.labels[&label("revision")],
        shown.display(),
    );
    if spec.dirty {
        println!(
            "\nxtask: note: the work tree has uncommitted changes; the revision label names HEAD"
        );
    }
    Ok(())
}

/// What the image must be: what [`assemble`] builds and [`check_archive`] checks.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `netprobe/probe-agent:<workspace version>`
    pub tag: String,
    /// OCI architecture, e.g. `amd64`.
    pub architecture: String,
    /// All of the image's labels.
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch: the image's `created` and every file's mtime.
    pub epoch: i64,
    /// The work tree differs from HEAD (only reported).
    pub dirty: bool,
}

/// `netprobe/probe-agent:<version>`: the image `cargo xtask image` builds, the one
/// deploy/daemonset.yaml must run.
pub fn tag() -> String {
    format!("{REPOSITORY}:{VERSION}")
}

fn label(name: &str) -> String {
    format!("org.opencontainers.image.{name}")
}

impl Spec {
    /// `revision` is the commit, `epoch` its time, `source` the repository's URL if known.
    pub fn new(revision: &str, epoch: i64, source: Option<&str>, architecture: &str) -> Spec {
        let version = VERSION;
        let mut labels = BTreeMap::new();
        let mut add = |name: &str, value: &str| labels.insert(label(name), value.to_owned());
        add("title", "probe-agent");
        add("description", DESCRIPTION);
        add("version", version);
        add("revision", revision);
        add("licenses", env!("CARGO_PKG_LICENSE"));
        add("created", &rfc3339_utc(epoch));
        if let Some(source) = source {
            add("source", source);
        }
        Spec {
            tag: tag(),
            architecture: architecture.to_owned(),
            labels,
            epoch,
            dirty: false,
        }
    }

    /// For the commit checked out: revision, time and remote from git.
    fn for_head(architecture: &str) -> Result<Spec> {
        let git = |args: &[&str]| {
            let mut cmd = Command::new("git");
            cmd.args(args).current_dir(util::workspace_root());
            exec::run(&mut cmd).map(|out| out.trim().to_owned())
        };
        let head = git(&["log", "-1", "--format=%H %ct"])
            .context("the image's revision and date come from git: is this a git checkout?")?;
        let (revision, commit_time) = head
            .split_once(' ')
            .with_context(|| format!("unexpected `git log` output {head:?}"))?;
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number"))?,
            Err(_) => commit_time.parse()?,
        };
        ensure!(
            DateTime::from_timestamp(epoch, 0).is_some(),
            "the image's date, {epoch} s since the epoch, is out of range"
        );
        // `repository` of [workspace.package] (with `repository.workspace = true` here),
        // else where this checkout was cloned from, if that is a public address.
        let source = Some(env!("CARGO_PKG_REPOSITORY").to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| git(&["remote", "get-url", "origin"]).ok())
            .and_then(|url| source_label(&url));
        if source.is_none() {
            eprintln!(
                "xtask: warning: no `repository` in Cargo.toml and no remote git `origin`: \
                 the image has no {} label",
                label("source")
            );
        }
        let mut spec = Spec::new(revision, epoch, source.as_deref(), architecture);
        spec.dirty = !git(&["status", "--porcelain"])?.is_empty();
        Ok(spec)
    }
}

/// A repository address fit for the `source` label: not a local path, and without
/// credentials (`https://user:token@host/x` → `https://host/x`): labels are public.
fn source_label(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() || url.starts_with('/') || url.starts_with('.') || url.starts_with("file:") {
        return None;
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        return Some(format!("{scheme}://{host}"));
    }
    Some(url.to_owned())
}

/// The host's target triple (`rustc -vV`).
fn host_triple() -> Result<String> {
    let out = exec::run(Command::new("rustc").arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(|h| h.trim().to_owned())
        .context("no `host:` line in `rustc -vV`")
}

/// The OCI architecture name of a target triple.
fn oci_architecture(triple: &str) -> Result<&'static str> {
    Ok(match triple.split('-').next().unwrap_or_default() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64gc" => "riscv64",
        "powerpc64le" => "ppc64le",
        "s390x" => "s390x",
        other => bail!("no OCI architecture name known for {other} ({triple})"),
    })
}

/// Seconds since the epoch as RFC 3339 UTC, e.g. `2026-11-23T15:52:57Z`.
pub fn rfc3339_utc(epoch: i64) -> String {
    // Spec::for_head refuses epochs chrono cannot represent.
    DateTime::from_timestamp(epoch, 0)
        .expect("an epoch within chrono's range")
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
