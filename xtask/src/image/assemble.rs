//! The image built with umoci (an OCI layout) and turned into a docker-archive by skopeo.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, ensure};
use lab::exec;

use super::{BINARY, CMD, PARENT_DIRS, PORT, Spec, USER, rfc3339_utc};
use crate::util;

/// Builds the image in `work` (an OCI layout and a bundle, made afresh) and writes the
/// docker-archive to `archive`.
pub fn assemble(binary: &Path, spec: &Spec, work: &Path, archive: &Path) -> Result<()> {
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
