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
    io::Read,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xtask::exec;

use crate::{build, toolchain, util};

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

/// Builds the image in `work` (an OCI layout and a bundle, made afresh) and writes the
/// docker-archive to `archive`.
fn assemble(binary: &Path, spec: &Spec, work: &Path, archive: &Path) -> Result<()> {
    ensure!(
        !work.to_string_lossy().contains(':'),
        "umoci and skopeo take `path:tag`: the path {} must not contain ':'",
        work.display()
    );
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(work)?;
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let image = format!("{}:build", layout.display());
    let created = rfc3339_utc(spec.epoch);
    let umoci = |args: &[&str]| exec::run(&mut exec::command("umoci", args));

    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    let mut unpack = vec!["unpack", "--image", &image];
    if !util::is_root() {
        unpack.push("--rootless");
    }
    let bundle_arg = bundle.to_string_lossy();
    unpack.push(&bundle_arg);
    umoci(&unpack)?;

    // The root file system: the binary and its directories, every mtime the commit's.
    let rootfs = bundle.join("rootfs");
    let target = rootfs.join(BINARY);
    let bin_dir = target.parent().expect("BINARY has directories");
    fs::create_dir_all(bin_dir)?;
    fs::copy(binary, &target)
        .with_context(|| format!("copying {} to {}", binary.display(), target.display()))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(spec.epoch.max(0) as u64);
    // Deepest first: setting a directory's mtime does not touch its parent's.
    let mut paths = vec![target.clone()];
    paths.extend(PARENT_DIRS.iter().rev().map(|d| rootfs.join(d)));
    for path in &paths {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        fs::File::open(path)
            .and_then(|f| f.set_modified(mtime))
            .with_context(|| format!("setting the mtime of {}", path.display()))?;
    }

    umoci(&[
        "repack",
        "--image",
        &image,
        "--history.created",
        &created,
        "--history.created_by",
        &format!("cargo xtask image: COPY probe-agent /{BINARY}"),
        &bundle_arg,
    ])?;
    let mut config: Vec<String> = [
        "config",
        "--image",
        &image,
        "--no-history",
        "--created",
        &created,
        "--os",
        "linux",
        "--architecture",
        &spec.architecture,
        "--config.entrypoint",
        &format!("/{BINARY}"),
        "--config.cmd",
        CMD,
        "--config.user",
        USER,
        "--config.exposedports",
        PORT,
    ]
    .map(str::to_owned)
    .into();
    for (name, value) in &spec.labels {
        config.push("--config.label".into());
        config.push(format!("{name}={value}"));
    }
    exec::run(&mut exec::command("umoci", &config))?;
    umoci(&["gc", "--layout", &layout.to_string_lossy()])?;

    // skopeo will not overwrite an archive: write a new one, then rename it into place.
    let partial = archive.with_extension("tar.partial");
    if partial.exists() {
        fs::remove_file(&partial)?;
    }
    exec::run(&mut exec::command(
        "skopeo",
        [
            // No signature policy to consult: we copy our own image between local files.
            "--insecure-policy",
            "copy",
            "--quiet",
            &format!("oci:{image}"),
            &format!("docker-archive:{}:{}", partial.display(), spec.tag),
        ],
    ))?;
    fs::rename(&partial, archive)
        .with_context(|| format!("moving {} to {}", partial.display(), archive.display()))?;
    Ok(())
}

/// What [`check_archive`] found.
#[derive(Debug)]
pub struct Checked {
    /// `sha256:<config digest>`: what `docker images` / `crictl images` show as IMAGE ID.
    pub image_id: String,
    /// The layer, uncompressed.
    pub layer_size: u64,
    /// The agent binary in the layer.
    pub binary: Vec<u8>,
}

/// Checks a docker-archive against `spec`: one image tagged `spec.tag`, its config
/// (entrypoint, cmd, user, port, labels, platform), exactly one layer holding the binary
/// (and its parent directories, root-owned and read-only for others), the binary static.
/// Every problem found is in the error.
pub fn check_archive(archive: &[u8], spec: &Spec) -> Result<Checked> {
    let files = archive_files(archive)?;
    let json = |name: &str| -> Result<Value> {
        let bytes = files
            .get(name.trim_start_matches("./"))
            .with_context(|| format!("the archive has no {name}"))?;
        serde_json::from_slice(bytes).with_context(|| format!("{name} is not JSON"))
    };
    let manifest = json("manifest.json").context("not a docker-archive")?;
    let images = manifest.as_array().context("manifest.json is not a list")?;
    ensure!(
        images.len() == 1,
        "manifest.json lists {} images, not 1",
        images.len()
    );
    let image = &images[0];
    let tags = strings(&image["RepoTags"]);
    ensure!(
        tags.iter().any(|t| same_reference(t, &spec.tag)),
        "the image is tagged {tags:?}, not {}",
        spec.tag
    );
    let config_name = image["Config"]
        .as_str()
        .context("manifest.json names no Config")?;
    let config = json(config_name)?;
    let layers = strings(&image["Layers"]);
    ensure!(
        layers.len() == 1,
        "the image has {} layers, not exactly 1 (the binary)",
        layers.len()
    );
    let layer = files
        .get(layers[0].trim_start_matches("./"))
        .with_context(|| format!("the archive has no layer {}", layers[0]))?;

    let mut problems = check_config(&config, spec);
    let (binary, layer_problems) = check_layer(layer);
    problems.extend(layer_problems);
    if let Some(binary) = &binary {
        match elf_interpreter(binary) {
            Ok(None) => {}
            Ok(Some(interpreter)) => problems.push(format!(
                "/{BINARY} is dynamically linked (interpreter {interpreter})"
            )),
            Err(e) => problems.push(format!("/{BINARY}: {e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "the image is not what it should be:\n  - {}",
            problems.join("\n  - ")
        );
    }
    // `<hex>.json` (skopeo, older docker save) or `blobs/sha256/<hex>` (docker save ≥ 25).
    let file_name = config_name.rsplit('/').next().unwrap_or(config_name);
    Ok(Checked {
        image_id: format!("sha256:{}", file_name.trim_end_matches(".json")),
        layer_size: layer.len() as u64,
        binary: binary.expect("no problems means the binary was found"),
    })
}

/// `docker.io/netprobe/probe-agent:1.2.3` is `netprobe/probe-agent:1.2.3` (skopeo writes the
/// former, `docker save` the latter; containerd and the kubelet normalise both the same way).
fn same_reference(tag: &str, wanted: &str) -> bool {
    let normal = |t: &str| -> String {
        let t = t.strip_prefix("docker.io/").unwrap_or(t);
        t.strip_prefix("library/").unwrap_or(t).to_owned()
    };
    normal(tag) == normal(wanted)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The regular files of a tar archive, by path (without a leading `./`).
fn archive_files(archive: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("reading {path} from the archive"))?;
        files.insert(path.trim_start_matches("./").to_owned(), data);
    }
    Ok(files)
}

/// The problems with an image config (docker or OCI, the same fields).
pub fn check_config(config: &Value, spec: &Spec) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |what: &str, got: &Value, want: Value| {
        if *got != want {
            problems.push(format!("{what} is {got}, not {want}"));
        }
    };
    let c = &config["config"];
    expect(
        "Entrypoint",
        &c["Entrypoint"],
        serde_json::json!([format!("/{BINARY}")]),
    );
    expect("Cmd", &c["Cmd"], serde_json::json!([CMD]));
    expect("User", &c["User"], serde_json::json!(USER));
    expect(
        "ExposedPorts",
        &c["ExposedPorts"],
        serde_json::json!({ PORT: {} }),
    );
    expect("Labels", &c["Labels"], serde_json::json!(spec.labels));
    expect("os", &config["os"], serde_json::json!("linux"));
    expect(
        "architecture",
        &config["architecture"],
        serde_json::json!(spec.architecture),
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    if diff_ids != 1 {
        problems.push(format!(
            "the config lists {diff_ids} layers (diff_ids), not 1"
        ));
    }
    problems
}

/// Checks an (uncompressed) layer: only [`BINARY`], a root-owned `0755` regular file, and
/// its parent directories, root-owned and not writable by others. Returns the binary and
/// the problems.
pub fn check_layer(layer: &[u8]) -> (Option<Vec<u8>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut binary = None;
    let mut tar = tar::Archive::new(layer);
    let entries = match tar.entries() {
        Ok(entries) => entries,
        Err(e) => return (None, vec![format!("the layer is not a tar archive: {e}")]),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(format!("the layer is not a valid tar archive: {e}"));
                break;
            }
        };
        let raw = entry.path().map(|p| p.to_string_lossy().into_owned());
        let path = raw.unwrap_or_default();
        let path = path.trim_start_matches("./").trim_end_matches('/');
        let path = if path == "." { "" } else { path }.to_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0) & 0o7777;
        let owner = (
            header.uid().unwrap_or(u64::MAX),
            header.gid().unwrap_or(u64::MAX),
        );
        let shown = format!("/{path}");
        if owner != (0, 0) {
            problems.push(format!(
                "{shown} is owned by {}:{}, not root",
                owner.0, owner.1
            ));
        }
        if path == BINARY {
            if !kind.is_file() {
                problems.push(format!("{shown} is not a regular file ({kind:?})"));
                continue;
            }
            if mode != 0o755 {
                problems.push(format!("{shown} has mode {mode:o}, not 755"));
            }
            let mut data = Vec::new();
            match entry.read_to_end(&mut data) {
                Ok(_) => binary = Some(data),
                Err(e) => problems.push(format!("reading {shown}: {e}")),
            }
        } else if PARENT_DIRS.contains(&path.as_str()) {
            if !kind.is_dir() {
                problems.push(format!("{shown} is not a directory ({kind:?})"));
            } else if mode & 0o022 != 0 {
                problems.push(format!("{shown} is writable by others (mode {mode:o})"));
            }
        } else {
            problems.push(format!(
                "the layer holds {shown}: only /{BINARY} and its directories belong there"
            ));
        }
    }
    if binary.is_none() && problems.is_empty() {
        problems.push(format!("the layer has no /{BINARY}"));
    }
    (binary, problems)
}

/// The program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`) of a 64-bit
/// little-endian ELF executable, `None` for a static one (static-pie included).
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    ensure!(elf.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let bytes = |at: usize, n: usize| -> Result<&[u8]> {
        at.checked_add(n)
            .and_then(|end| elf.get(at..end))
            .context("truncated ELF file")
    };
    let u16_at = |at| -> Result<usize> {
        Ok(u16::from_le_bytes(bytes(at, 2)?.try_into().expect("2 bytes")).into())
    };
    let u64_at = |at| -> Result<usize> {
        let v = u64::from_le_bytes(bytes(at, 8)?.try_into().expect("8 bytes"));
        usize::try_from(v).context("ELF offset out of range")
    };
    // Elf64_Ehdr: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    ensure!(phentsize >= 56, "ELF program header size {phentsize} < 56");
    for i in 0..phnum {
        // Elf64_Phdr: p_type at 0, p_offset at 8, p_filesz at 32.
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(bytes(ph, 4)?.try_into().expect("4 bytes"));
        if p_type == PT_INTERP {
            let path = bytes(u64_at(ph + 8)?, u64_at(ph + 32)?)?;
            let path = path.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(path).into_owned()));
        }
    }
    Ok(None)
}

/// Seconds since the epoch as RFC 3339 UTC, e.g. `2026-11-23T15:52:57Z`.
pub fn rfc3339_utc(epoch: i64) -> String {
    // Days to a civil date: Howard Hinnant's algorithm.
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "7c41b6dd2cc50a910f0a1ade5005b4461d72446c";

    /// How skopeo names the image in the archive: `docker.io/<tag>`.
    fn qualified() -> String {
        format!("docker.io/{}", tag())
    }

    fn spec() -> Spec {
        Spec::new(
            HEAD,
            1_795_449_177,
            Some("https://example.org/netprobe"),
            "amd64",
        )
    }

    /// A 64-bit little-endian ELF header with the given program header types (PT_INTERP
    /// pointing at `interp`).
    fn elf(types: &[u32], interp: &str) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        let strings = 64 + 56 * types.len();
        for &t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            ph[8..16].copy_from_slice(&(strings as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
            e.extend(ph);
        }
        e.extend(interp.as_bytes());
        e.push(0);
        e
    }

    #[test]
    fn interpreter_of_elf_files() {
        let dynamic = elf(&[6, 3, 1, 2], "/lib64/ld-linux-x86-64.so.2");
        assert_eq!(
            elf_interpreter(&dynamic).unwrap().as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        // static-pie: a PT_DYNAMIC but no PT_INTERP.
        assert_eq!(elf_interpreter(&elf(&[6, 1, 2], "")).unwrap(), None);
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(&[3], "/lib/ld.so");
        truncated.truncate(80);
        assert!(elf_interpreter(&truncated).is_err());
        // A real dynamic executable (this test's own binary).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_interpreter(&me).unwrap().is_some());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_449_177), "2026-11-23T15:52:57Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn source_labels() {
        assert_eq!(
            source_label("https://me:tok@github.com/x/y.git").as_deref(),
            Some("https://github.com/x/y.git")
        );
        assert_eq!(
            source_label("git@github.com:x/y").as_deref(),
            Some("git@github.com:x/y")
        );
        assert_eq!(
            source_label("https://h/a@b").as_deref(),
            Some("https://h/a@b")
        );
        for local in ["/work/main", "../netprobe", "file:///srv/netprobe.git", ""] {
            assert_eq!(source_label(local), None, "{local}");
        }
    }

    #[test]
    fn references() {
        assert!(same_reference(&qualified(), &tag()));
        assert!(same_reference(&tag(), &tag()));
        assert!(same_reference(
            "docker.io/library/busybox:1.36",
            "busybox:1.36"
        ));
        assert!(!same_reference(&format!("ghcr.io/{}", tag()), &tag()));
        assert!(!same_reference(
            &format!("{REPOSITORY}:{VERSION}.1"),
            &tag()
        ));
    }

    #[test]
    fn spec_labels() {
        let s = spec();
        assert_eq!(
            s.tag,
            format!("netprobe/probe-agent:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(s.labels[&label("version")], env!("CARGO_PKG_VERSION"));
        assert_eq!(s.labels[&label("revision")], HEAD);
        assert_eq!(s.labels[&label("created")], "2026-11-23T15:52:57Z");
        assert_eq!(s.labels[&label("licenses")], "Apache-2.0 OR MIT");
        assert_eq!(s.labels.len(), 7);
        assert_eq!(Spec::new(HEAD, 0, None, "amd64").labels.len(), 6);
        assert_eq!(
            oci_architecture("x86_64-unknown-linux-gnu").unwrap(),
            "amd64"
        );
        assert_eq!(
            oci_architecture("aarch64-unknown-linux-gnu").unwrap(),
            "arm64"
        );
        assert!(oci_architecture("sparc-unknown-linux-gnu").is_err());
    }

    /// A tar with `(path, mode, uid, contents)`; `None` contents is a directory.
    fn tar(entries: &[(&str, u32, u64, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for &(path, mode, uid, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_mtime(0);
            match data {
                Some(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn good_layer(binary: &[u8]) -> Vec<u8> {
        tar(&[
            ("./", 0o755, 0, None),
            ("usr/", 0o755, 0, None),
            ("usr/local/", 0o755, 0, None),
            ("usr/local/bin/", 0o755, 0, None),
            (BINARY, 0o755, 0, Some(binary)),
        ])
    }

    fn config(spec: &Spec) -> Value {
        serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-11-23T15:52:57Z",
            "config": {
                "User": USER,
                "ExposedPorts": {"9810/tcp": {}},
                "Entrypoint": ["/usr/local/bin/probe-agent"],
                "Cmd": ["run"],
                "Labels": spec.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:00"]},
        })
    }

    fn docker_archive(tags: &[&str], config: &Value, layers: &[Vec<u8>]) -> Vec<u8> {
        let layer_names: Vec<String> = (0..layers.len()).map(|i| format!("{i}.tar")).collect();
        let manifest = serde_json::json!([{
            "Config": "abc123.json",
            "RepoTags": tags,
            "Layers": layer_names,
        }]);
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let config = serde_json::to_vec(config).unwrap();
        let mut entries = vec![
            ("manifest.json", 0o644, 0, Some(manifest.as_slice())),
            ("abc123.json", 0o644, 0, Some(config.as_slice())),
        ];
        for (name, layer) in layer_names.iter().zip(layers) {
            entries.push((name, 0o644, 0, Some(layer.as_slice())));
        }
        tar(&entries)
    }

    #[test]
    fn a_good_archive_passes() {
        let s = spec();
        let binary = elf(&[6, 1, 2], "");
        let archive = docker_archive(&[qualified().as_str()], &config(&s), &[good_layer(&binary)]);
        let checked = check_archive(&archive, &s).unwrap();
        assert_eq!(checked.image_id, "sha256:abc123");
        assert_eq!(checked.binary, binary);
    }

    #[test]
    fn every_config_problem_is_reported() {
        let s = spec();
        let mut c = config(&s);
        c["config"]["User"] = "0:0".into();
        c["config"]["Cmd"] = serde_json::json!(["observe"]);
        c["config"]["Labels"][label("revision")] = "0000".into();
        c["config"]["ExposedPorts"] = serde_json::json!({"9810/tcp": {}, "22/tcp": {}});
        let problems = check_config(&c, &s).join("\n");
        for what in ["User", "Cmd", "Labels", "ExposedPorts"] {
            assert!(problems.contains(what), "{what} missing in {problems}");
        }
        assert!(!problems.contains("Entrypoint"), "{problems}");
        assert!(check_config(&config(&s), &s).is_empty());
        // The revision must be the one the spec was made with (git HEAD).
        let other = Spec::new(
            "1111",
            s.epoch,
            Some("https://example.org/netprobe"),
            "amd64",
        );
        assert!(check_config(&config(&s), &other)[0].contains("Labels"));
    }

    #[test]
    fn layer_problems() {
        let ok = elf(&[1], "");
        assert!(check_layer(&good_layer(&ok)).1.is_empty());
        // Only the binary, no directories: fine too.
        assert!(
            check_layer(&tar(&[(BINARY, 0o755, 0, Some(&ok))]))
                .1
                .is_empty()
        );

        let extra = tar(&[
            (BINARY, 0o755, 0, Some(&ok)),
            ("bin/", 0o755, 0, None),
            ("bin/sh", 0o755, 0, Some(b"sh")),
        ]);
        let (_, problems) = check_layer(&extra);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("/bin/sh"));

        let (_, problems) = check_layer(&tar(&[
            ("usr/", 0o777, 0, None),
            (BINARY, 0o4755, 65532, Some(&ok)),
        ]));
        let problems = problems.join("\n");
        assert!(problems.contains("/usr is writable"), "{problems}");
        assert!(problems.contains("owned by 65532"), "{problems}");
        assert!(problems.contains("mode 4755"), "{problems}");

        let (binary, problems) = check_layer(&tar(&[("usr/", 0o755, 0, None)]));
        assert!(binary.is_none());
        assert!(problems[0].contains("no /usr/local/bin/probe-agent"));
    }

    #[test]
    fn archive_problems() {
        let s = spec();
        let layer = good_layer(&elf(&[1], ""));
        let wrong_tag = docker_archive(
            &[format!("{REPOSITORY}:9").as_str()],
            &config(&s),
            std::slice::from_ref(&layer),
        );
        assert!(format!("{:#}", check_archive(&wrong_tag, &s).unwrap_err()).contains("tagged"));
        let two = docker_archive(&[tag().as_str()], &config(&s), &[layer.clone(), layer]);
        assert!(format!("{:#}", check_archive(&two, &s).unwrap_err()).contains("2 layers"));
        let dynamic = docker_archive(
            &[tag().as_str()],
            &config(&s),
            &[good_layer(&elf(&[3], "/lib64/ld-linux-x86-64.so.2"))],
        );
        let err = format!("{:#}", check_archive(&dynamic, &s).unwrap_err());
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(check_archive(b"not a tar", &s).is_err());
    }
}
