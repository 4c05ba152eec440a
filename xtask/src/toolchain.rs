//! Sets up a fresh machine: the nightly pinned in probe-ebpf/rust-toolchain.toml with
//! rust-src (the eBPF program is built with `-Z build-std`), bpf-linker built against that
//! nightly's own LLVM, and the Debian packages
//! the demo, tests and benchmarks drive (ip, nft, dnsmasq, iperf3, dig, curl; prometheus,
//! python3-venv and, without a kubectl, kubernetes-client for the deploy/ checks).
//! Each step checks first and does nothing when already done.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail, ensure};
use lab::exec::{self, run, run_streaming};

use crate::util::{self, cargo_home};

/// bpf-linker release we build. 0.13 links against an LLVM shared library, which lets us
/// use the exact LLVM that nightly rustc emits bitcode for.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages used by `cargo xtask demo`, `test` and `bench`.
pub const PACKAGES: &[&str] = &[
    "iproute2",       // ip: namespaces, veths, routes
    "nftables",       // nft: Services (DNAT), rejects and drops in the lab
    "dnsmasq-base",   // the lab's DNS server
    "dnsutils",       // dig, in the lab tests
    "curl",           // HTTP clients in the demo, API examples
    "iperf3",         // throughput benchmark
    "hping3",         // SYN flood in the agent's privileged tests (SIGTERM under load)
    "tshark",         // the oracle for what a veth carried, in the lab tests
    "busybox-static", // busybox nslookup: a resolver of its own, in the real-traffic tests
    // `cargo xtask check-manifests` / `check-monitoring`: promtool checks and unit-tests the
    // alerts, prometheus scrapes the demo's agent. (On a machine with systemd the package
    // also starts a prometheus service on :9090; the checks use their own, on a free port.)
    "prometheus",
    "python3-venv", // the venv for kubernetes-validate and jsonschema (check-manifests)
];

/// Installed only when no `kubectl` is on PATH (any kubectl does: the checks use its
/// `kustomize`, which deploy/ keeps compatible with Debian's old kustomize v2).
const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// Debian packages only `cargo xtask image` uses (only that task installs them). Each
/// package's name is also its tool's.
pub const IMAGE_PACKAGES: &[&str] = &[
    "umoci",  // builds the image as an OCI layout, no daemon, rootless when not root
    "skopeo", // OCI layout → docker-archive, what `kind load image-archive` takes
];

#[path = "../../probe-ebpf/pinned_toolchain.rs"]
mod pinned_toolchain;

/// Runs every step; see the module docs.
pub fn bootstrap() -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    let nightly = rustc_info(&toolchain)?;
    ensure_rust_src(&toolchain)?;
    ensure_bpf_linker(&toolchain, &nightly)?;
    ensure_cargo_fuzz()?;
    ensure_packages()?;
    Ok(())
}

/// What `cargo xtask fuzz` needs: nightly (checked) and cargo-fuzz.
pub fn ensure_fuzz_toolchain() -> Result<()> {
    rustc_info("nightly")?;
    ensure_cargo_fuzz()
}

/// cargo-fuzz, for `cargo xtask fuzz` (a suite of `cargo xtask test`): installed from
/// crates.io into `$CARGO_HOME/bin` when `cargo fuzz` does not run (about 40 s).
fn ensure_cargo_fuzz() -> Result<()> {
    let runs = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if runs {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz (`cargo xtask fuzz` runs the agent's fuzz targets)");
    run_streaming(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// What `rustc +nightly -vV` says about itself.
#[derive(Debug, PartialEq, Eq)]
pub struct RustcInfo {
    /// e.g. `1.97.0-nightly`
    pub release: String,
    pub llvm_major: u32,
    pub llvm_minor: u32,
}

impl RustcInfo {
    /// Name of the LLVM shared library in nightly's sysroot, e.g.
    /// `libLLVM.so.22.1-rust-1.97.0-nightly`.
    pub fn llvm_soname(&self) -> String {
        format!(
            "libLLVM.so.{}.{}-rust-{}",
            self.llvm_major, self.llvm_minor, self.release
        )
    }
}

/// Parses `rustc -vV` output.
pub fn parse_rustc_vv(text: &str) -> Result<RustcInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no `{name}` line in rustc -vV output:\n{text}"))
    };
    let release = field("release:")?.to_owned();
    let llvm = field("LLVM version:")?;
    let mut parts = llvm.split('.');
    let mut number = || -> Result<u32> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("cannot parse LLVM version {llvm:?}"))
    };
    Ok(RustcInfo {
        release,
        llvm_major: number()?,
        llvm_minor: number()?,
    })
}

/// The rustup toolchain that builds the eBPF program: the pinned nightly, installed by
/// rustup when it can fetch it, or the machine's `nightly` when that is the same build.
fn ebpf_toolchain() -> Result<String> {
    let ebpf_dir = util::workspace_root().join("probe-ebpf");
    if let Ok(toolchain) = pinned_toolchain::resolve(&ebpf_dir) {
        return Ok(toolchain);
    }
    let pinned = pinned_toolchain::pinned_channel(&ebpf_dir).map_err(anyhow::Error::msg)?;
    println!("xtask: installing {pinned}, the nightly the eBPF program is pinned to");
    let installed = run_streaming(Command::new("rustup").args([
        "toolchain",
        "install",
        &pinned,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]));
    pinned_toolchain::resolve(&ebpf_dir)
        .map_err(anyhow::Error::msg)
        .with_context(|| match installed {
            Ok(()) => "rustup installed it, yet it does not run".to_owned(),
            Err(err) => format!("rustup could not install it: {err:#}"),
        })
}

/// What `rustc +<toolchain> -vV` says about itself.
fn rustc_info(toolchain: &str) -> Result<RustcInfo> {
    let out = Command::new("rustc")
        .args([&format!("+{toolchain}"), "-vV"])
        .output();
    match out {
        Ok(out) if out.status.success() => parse_rustc_vv(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => bail!(
            "no {toolchain} Rust toolchain (`rustc +{toolchain} -vV`: {}).\n\
             Install it with\n  rustup toolchain install {toolchain} --component rust-src",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => bail!(
            "cannot run rustc ({e}): install Rust with rustup (https://rustup.rs), then\n  \
             rustup toolchain install {toolchain} --component rust-src"
        ),
    }
}

fn ensure_rust_src(toolchain: &str) -> Result<()> {
    let installed = run(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
    .with_context(|| format!("listing {toolchain}'s components (is rustup installed?)"))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        return Ok(());
    }
    println!("xtask: adding rust-src to {toolchain} (the eBPF build compiles core from source)");
    run_streaming(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        toolchain,
    ]))
}

/// The installed bpf-linker's version, if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    // "bpf-linker 0.13.0"
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

fn ensure_bpf_linker(toolchain: &str, nightly: &RustcInfo) -> Result<()> {
    let wanted_minor = BPF_LINKER_VERSION.rsplit_once('.').expect("x.y.z").0;
    // Built for this nightly's LLVM: its prefix exists (a moved pin needs a new build).
    let built_for_it = cargo_home()?
        .join("netprobe-llvm")
        .join(nightly.llvm_soname())
        .exists();
    if let Some(v) = bpf_linker_version()
        && v.starts_with(&format!("{wanted_minor}."))
        && built_for_it
    {
        return Ok(());
    }
    install_bpf_linker(toolchain, nightly, &cargo_home()?)
}

/// Builds bpf-linker against nightly's own libLLVM (see docs/development.md, "bpf-linker"):
/// a fake LLVM prefix whose `lib/` points at the sysroot's library, then `cargo install`.
pub fn install_bpf_linker(toolchain: &str, nightly: &RustcInfo, cargo_home: &Path) -> Result<()> {
    let sysroot =
        run(Command::new("rustc").args([&format!("+{toolchain}"), "--print", "sysroot"]))?;
    let soname = nightly.llvm_soname();
    let library = Path::new(sysroot.trim()).join("lib").join(&soname);
    ensure!(
        library.exists(),
        "nightly's LLVM library {} is missing: bpf-linker must link against the LLVM that \
         nightly rustc uses (LLVM {}.{}). Reinstall it with `rustup toolchain install {toolchain}`.",
        library.display(),
        nightly.llvm_major,
        nightly.llvm_minor
    );
    // Kept for good: the installed binary has an rpath to <prefix>/lib.
    let prefix = cargo_home.join("netprobe-llvm").join(&soname);
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&lib)?;
    let llvm_config = bin.join("llvm-config");
    // bpf-linker's build script only needs llvm-config to exist; it takes the library
    // from <prefix>/lib.
    std::fs::write(
        &llvm_config,
        "#!/bin/sh\n# Placeholder for bpf-linker's build (see netprobe's xtask/src/toolchain.rs).\nexit 0\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&llvm_config, std::fs::Permissions::from_mode(0o755))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    println!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        library.display()
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        // Replaces a broken or older install.
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{}", nightly.llvm_major),
        "--root",
    ])
    .arg(cargo_home)
    .env("LLVM_PREFIX", &prefix);
    run_streaming(&mut cmd)?;
    let installed = cargo_home.join("bin").join("bpf-linker");
    let out = run(Command::new(&installed).arg("--version"))
        .with_context(|| format!("the freshly built {} does not run", installed.display()))?;
    println!("xtask: installed {}", out.trim());
    Ok(())
}

/// Whether Debian package `name` is installed (`dpkg -s` says "install ok installed").
fn package_installed(name: &str) -> bool {
    Command::new("dpkg")
        .args(["-s", name])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == "Status: install ok installed")
        })
        .unwrap_or(false)
}

/// The packages of [`PACKAGES`] not installed, and [`KUBECTL_PACKAGE`] when there is no
/// kubectl.
pub fn missing_packages() -> Vec<&'static str> {
    let mut missing = missing_of(PACKAGES);
    if exec::find_tool("kubectl").is_none() {
        missing.extend(missing_of(&[KUBECTL_PACKAGE]));
    }
    missing
}

fn missing_of(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect()
}

fn ensure_packages() -> Result<()> {
    if exec::find_tool("dpkg").is_none() {
        // Not Debian: say which tools are missing; installing them is up to the user.
        let missing: Vec<_> = [
            "ip",
            "nft",
            "dnsmasq",
            "dig",
            "curl",
            "iperf3",
            "promtool",
            "prometheus",
            "python3",
            "kubectl",
        ]
        .into_iter()
        .filter(|t| exec::find_tool(t).is_none())
        .collect();
        if !missing.is_empty() {
            eprintln!(
                "xtask: warning: not a Debian system and these tools are missing (the demo, \
                 tests and benchmarks need them): {}",
                missing.join(" ")
            );
        }
        return Ok(());
    }
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        eprintln!(
            "xtask: warning: Debian packages needed by `cargo xtask demo`, `test` and `bench` \
             are missing: {list}\n  install them with: sudo apt-get install -y {list}\n  \
             (or run the task as root, which installs them: {})",
            util::SUDO_HINT,
            list = missing.join(" ")
        );
        return Ok(());
    }
    apt_install(&missing)?;
    let still = missing_packages();
    ensure!(
        still.is_empty(),
        "apt-get did not install: {}",
        still.join(" ")
    );
    Ok(())
}

/// Installs [`IMAGE_PACKAGES`] when missing (as root), or fails saying how: `cargo xtask
/// image` cannot work without them.
pub fn ensure_image_packages() -> Result<()> {
    ensure_task_packages("image", IMAGE_PACKAGES)
}

/// What `cargo xtask soak` drives besides [`PACKAGES`] (which has hping3, the SYN flood).
pub const SOAK_PACKAGES: &[&str] = &[
    "wrk",         // HTTP load on the API
    "tcpreplay",   // the SYN-rate ramp: SYNs at the rate asked (hping3 -i tops out at ~15 k/s)
    "netsniff-ng", // trafgen: writes the SYNs tcpreplay replays
];

/// What `cargo xtask check-runtime` drives besides [`PACKAGES`].
pub const RUNTIME_PACKAGES: &[&str] = &[
    "podman",                          // the container engine
    "runc",                            // its OCI runtime here (crun fails on hybrid cgroups)
    "golang-github-containers-common", // podman's default seccomp profile
    "containernetworking-plugins",     // the CNI ptp network
    "busybox-static",                  // the client and server containers' image
    "dnsmasq-base",                    // the DNS server, in a container's namespace
    "nftables",                        // the firewalls inside the servers' namespaces
    "bpftool",                         // what programs the stopped agent left loaded
    "iproute2",                        // tc: the filters it left on the veths
    "tshark",                          // what the client's veth carried, against the counts
];

/// Installs the Debian `packages` one task needs when missing (as root), or fails saying
/// how: `cargo xtask <task>` cannot work without them.
pub fn ensure_task_packages(task: &str, packages: &[&'static str]) -> Result<()> {
    if exec::find_tool("dpkg").is_none() {
        let missing: Vec<_> = packages
            .iter()
            .copied()
            .filter(|t| exec::find_tool(t).is_none())
            .collect();
        ensure!(
            missing.is_empty(),
            "`cargo xtask {task}` needs {}: install them with your package manager",
            missing.join(" and ")
        );
        return Ok(());
    }
    let missing = missing_of(packages);
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        util::is_root(),
        "`cargo xtask {task}` needs the Debian packages {list}: install them with\n  \
         sudo apt-get install -y --no-install-recommends {list}\n  \
         (or run the task as root, which installs them: `{} {task}`)",
        util::SUDO_HINT,
        list = missing.join(" ")
    );
    apt_install(&missing)?;
    let still = missing_of(packages);
    ensure!(
        still.is_empty(),
        "apt-get did not install: {}",
        still.join(" ")
    );
    Ok(())
}

/// `apt-get update`, then `apt-get install` of `missing` (root).
fn apt_install(missing: &[&str]) -> Result<()> {
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        run_streaming(&mut cmd)
    };
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(missing);
    apt(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn llvm_soname_from_rustc_vv() {
        let info = parse_rustc_vv(NIGHTLY_VV).unwrap();
        assert_eq!(
            info,
            RustcInfo {
                release: "1.97.0-nightly".into(),
                llvm_major: 22,
                llvm_minor: 1
            }
        );
        assert_eq!(info.llvm_soname(), "libLLVM.so.22.1-rust-1.97.0-nightly");
    }

    #[test]
    fn rustc_vv_without_llvm_is_an_error() {
        let err = parse_rustc_vv("release: 1.97.0-nightly\n").unwrap_err();
        assert!(format!("{err:#}").contains("LLVM version"));
        assert!(parse_rustc_vv("release: 1\nLLVM version: x.y\n").is_err());
    }
}

#[cfg(test)]
mod pin_tests {
    use super::pinned_toolchain;

    fn ebpf_dir_pinned_to(channel: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("netprobe-pin-{}-{channel}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!("[toolchain]\nchannel = \"{channel}\"\ncomponents = [\"rust-src\"]\n");
        std::fs::write(dir.join("rust-toolchain.toml"), toml).unwrap();
        dir
    }

    #[test]
    fn the_repository_pins_a_dated_nightly() {
        let dir = crate::util::workspace_root().join("probe-ebpf");
        let channel = pinned_toolchain::pinned_channel(&dir).unwrap();
        assert!(channel.starts_with("nightly-20"), "{channel}");
    }

    #[test]
    fn another_nightly_is_refused_with_the_command_that_installs_the_pinned_one() {
        let err = pinned_toolchain::resolve(&ebpf_dir_pinned_to("nightly-2031-01-01")).unwrap_err();
        assert!(
            err.contains("rustup toolchain install nightly-2031-01-01 --component rust-src"),
            "{err}"
        );
    }

    #[test]
    fn an_undated_channel_is_an_error() {
        let err = pinned_toolchain::resolve(&ebpf_dir_pinned_to("nightly")).unwrap_err();
        assert!(err.contains("nightly-YYYY-MM-DD"), "{err}");
    }
}
