//! Builds the kernel program (probe-ebpf's binary) for the BPF target with the pinned
//! nightly and bpf-linker, so the agent embeds it. `cargo xtask build` installs both on a fresh
//! machine; without them the agent still builds (for `cargo test`), embeds no program,
//! and says at start-up how to get one.

use std::{env, fs, path::PathBuf};

#[path = "../probe-ebpf/pinned_toolchain.rs"]
mod pinned_toolchain;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("../probe-ebpf");
    println!("cargo:rerun-if-env-changed=PATH");

    if which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found: building probe-agent without its eBPF program; run `cargo xtask build` to install the toolchain"
        );
        write_empty_objects(&out_dir)?;
        println!("cargo:rerun-if-changed={}", ebpf_dir.display());
        return Ok(());
    }
    // aya-build's own switch, for builds that never load the program (the fuzz targets).
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        write_empty_objects(&out_dir)?;
        return Ok(());
    }

    // aya-build relays every line the nested cargo prints as a build warning: keep that
    // cargo quiet so only real problems show.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let root_dir = ebpf_dir.canonicalize()?;
    let root_dir = root_dir.to_str().expect("UTF-8 path");
    let mut packages = vec![aya_build::Package {
        name: "probe-ebpf",
        root_dir,
        ..Default::default()
    }];
    // The privileged tests also load a foreign program (a CNI's datapath stand-in) next to
    // the agent's; other builds skip its second BPF compilation.
    let foreign_dir = manifest_dir.join("tests/foreign-ebpf").canonicalize()?;
    let foreign_dir = foreign_dir.to_str().expect("UTF-8 path");
    if env::var_os("CARGO_FEATURE_PRIVILEGED_TESTS").is_some() {
        packages.push(aya_build::Package {
            name: "foreign-ebpf",
            root_dir: foreign_dir,
            ..Default::default()
        });
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("rust-toolchain.toml").display()
    );
    let toolchain = pinned_toolchain::resolve(&ebpf_dir).map_err(anyhow::Error::msg)?;
    aya_build::build_ebpf(packages, aya_build::Toolchain::Custom(&toolchain))
}

/// Empty stand-ins for the objects, so the crate still compiles without the BPF toolchain.
fn write_empty_objects(out_dir: &std::path::Path) -> anyhow::Result<()> {
    for object in ["probe-ebpf", "foreign-ebpf"] {
        fs::write(out_dir.join(object), [])?;
    }
    Ok(())
}
