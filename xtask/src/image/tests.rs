use std::fs;

use serde_json::Value;

use super::{
    check::{check_config, check_layer, same_reference},
    *,
};

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
    // 64-bit, little-endian, ELF version 1.
    e[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
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
