//! Reading a docker-archive back: the image it holds must be the one [`Spec`] describes.

use std::{collections::BTreeMap, io::Read};

use anyhow::{Context, Result, bail, ensure};
use object::{
    Endianness,
    elf::FileHeader64,
    read::elf::{FileHeader, ProgramHeader},
};
use serde_json::Value;

use super::{BINARY, CMD, PARENT_DIRS, PORT, Spec, USER};

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
pub(super) fn same_reference(tag: &str, wanted: &str) -> bool {
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
/// ELF executable, `None` for a static one (static-pie included).
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    let header = FileHeader64::<Endianness>::parse(elf).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("not a 64-bit ELF file")?;
    for segment in header
        .program_headers(endian, elf)
        .context("reading the ELF program headers")?
    {
        if let Some(path) = segment
            .interpreter(endian, elf)
            .context("reading the ELF interpreter")?
        {
            return Ok(Some(String::from_utf8_lossy(path).into_owned()));
        }
    }
    Ok(None)
}
