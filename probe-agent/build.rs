//! Builds the kernel program (probe-ebpf's binary) for the BPF target with nightly and
//! bpf-linker, so the agent embeds it. `cargo xtask build` installs both on a fresh
//! machine; without them the agent still builds (for `cargo test`), embeds no program,
//! and says at start-up how to get one.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("../probe-ebpf");
    println!("cargo:rerun-if-env-changed=PATH");

    if which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found: building probe-agent without its eBPF program; run `cargo xtask build` to install the toolchain"
        );
        fs::write(out_dir.join("probe-ebpf"), [])?;
        println!("cargo:rerun-if-changed={}", ebpf_dir.display());
        return Ok(());
    }
    // aya-build's own switch, for builds that never load the program (the fuzz targets).
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("probe-ebpf"), [])?;
        return Ok(());
    }

    // aya-build relays every line the nested cargo prints as a build warning: keep that
    // cargo quiet so only real problems show.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let root_dir = ebpf_dir.canonicalize()?;
    let root_dir = root_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "probe-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
