//! The DaemonSet's pod spec as `podman run` flags, field by field.
//!
//! Why flags and not `podman kube play`: podman 4.3's kube play takes Pods and
//! Deployments, not DaemonSets, and leaves out what it does not know without a word
//! (seccomp only through annotations, no `allowPrivilegeEscalation`). Here every field of
//! the pod spec is either translated as a kubelet would apply it, or known to need no
//! flag (said beside it), or refused: a field added to deploy/daemonset.yaml that this
//! code does not know fails the check instead of being ignored.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// What the container is started with, and what the kubelet would probe.
#[derive(Debug, PartialEq)]
pub struct Translated {
    /// `podman run` flags, before the image.
    pub flags: Vec<String>,
    /// The container's args, after the image.
    pub args: Vec<String>,
    /// The image the manifest names (the task runs the one it built and loaded).
    pub image: String,
    /// httpGet probes: (what, port, path).
    pub probes: Vec<(String, u16, String)>,
    /// `seccompProfile.type` (`RuntimeDefault`, `Localhost`, `Unconfined`).
    pub seccomp: String,
}

/// Translates the DaemonSet's pod template. `node_name` is what the downward API's
/// `spec.nodeName` gives; `seccomp_root` stands for the kubelet's seccomp directory
/// (/var/lib/kubelet/seccomp), where a `Localhost` profile's path starts.
/// `RuntimeDefault` is podman's default profile: no flag.
pub fn translate(daemonset: &Value, node_name: &str, seccomp_root: &Path) -> Result<Translated> {
    let pod = daemonset
        .pointer("/spec/template/spec")
        .context("the DaemonSet has no pod template")?;
    let mut flags = Vec::new();
    let pod_fields = pod.as_object().context("the pod spec is not a map")?;
    for (field, value) in pod_fields {
        match field.as_str() {
            "hostNetwork" if value == true => flags.push("--network=host".into()),
            "hostPID" if value == true => flags.push("--pid=host".into()),
            "hostIPC" if value == true => flags.push("--ipc=host".into()),
            "hostNetwork" | "hostPID" | "hostIPC" => {}
            "terminationGracePeriodSeconds" => {
                let s = value.as_u64().context("terminationGracePeriodSeconds")?;
                flags.push(format!("--stop-timeout={s}"));
            }
            // No API server, scheduler or cluster DNS here: these place the pod and name
            // its account, and change nothing in how its container runs on a node.
            "serviceAccountName" | "priorityClassName" | "tolerations" | "dnsPolicy" => {}
            "containers" | "volumes" => {}
            other => bail!("the pod spec's {other:?} is not translated to podman flags"),
        }
    }
    let containers = pod["containers"].as_array().context("no containers")?;
    ensure!(
        containers.len() == 1,
        "the DaemonSet runs {} containers; this check runs one",
        containers.len()
    );
    let c = &containers[0];
    let mut args = Vec::new();
    let mut probes = Vec::new();
    let mut image = String::new();
    let mut seccomp_type = String::from("RuntimeDefault");
    for (field, value) in c.as_object().context("the container is not a map")? {
        match field.as_str() {
            // The caller names the container (one per run, unique).
            "name" => {}
            "image" => image = str_of(value)?.to_owned(),
            // The image is loaded beforehand, never pulled (IfNotPresent on a node that has it).
            "imagePullPolicy" => flags.push("--pull=never".into()),
            "command" => {
                let command = strings(value)?;
                let (first, rest) = command.split_first().context("empty command")?;
                flags.push(format!("--entrypoint={first}"));
                args.extend(rest.iter().cloned());
            }
            "args" => args.extend(strings(value)?),
            "env" => flags.extend(env(value, node_name)?),
            // With hostNetwork the container port is the node's: nothing to publish.
            "ports" => {}
            "readinessProbe" | "livenessProbe" => {
                let path = value
                    .pointer("/httpGet/path")
                    .and_then(Value::as_str)
                    .with_context(|| format!("{field} is not an httpGet probe"))?;
                let port = probe_port(c, &value["httpGet"]["port"])?;
                probes.push((field.clone(), port, path.to_owned()));
            }
            "resources" => flags.extend(resources(value)?),
            "securityContext" => {
                let (more, kind) = security_context(value, seccomp_root)?;
                flags.extend(more);
                seccomp_type = kind;
            }
            "volumeMounts" => flags.extend(volume_mounts(value, pod)?),
            other => bail!("the container's {other:?} is not translated to podman flags"),
        }
    }
    Ok(Translated {
        flags,
        args,
        image,
        probes,
        seccomp: seccomp_type,
    })
}

fn str_of(v: &Value) -> Result<&str> {
    v.as_str().with_context(|| format!("{v} is not a string"))
}

fn strings(v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .with_context(|| format!("{v} is not a list"))?
        .iter()
        .map(|s| str_of(s).map(str::to_owned))
        .collect()
}

fn env(value: &Value, node_name: &str) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for var in value.as_array().context("env is not a list")? {
        let name = str_of(&var["name"])?;
        let text = if let Some(v) = var.get("value") {
            str_of(v)?.to_owned()
        } else {
            match var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str)
            {
                Some("spec.nodeName") => node_name.to_owned(),
                _ => bail!(
                    "env {name}: only values and the downward API's spec.nodeName are translated"
                ),
            }
        };
        flags.push(format!("--env={name}={text}"));
    }
    Ok(flags)
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(container: &Value, port: &Value) -> Result<u16> {
    if let Some(n) = port.as_u64() {
        return Ok(u16::try_from(n)?);
    }
    let name = str_of(port)?;
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .with_context(|| format!("the container declares no port named {name:?}"))
}

/// Memory limit and CPU request as the kubelet sets them: `memory.max` from the limit,
/// CPU shares from the request (millicores × 1024 / 1000, at least 2).
fn resources(value: &Value) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    if let Some(mem) = value.pointer("/limits/memory") {
        flags.push(format!("--memory={}", bytes(str_of(mem)?)?));
    }
    if let Some(cpu) = value.pointer("/requests/cpu") {
        let milli = millicores(str_of(cpu)?)?;
        flags.push(format!("--cpu-shares={}", (milli * 1024 / 1000).max(2)));
    }
    if let Some(cpu) = value.pointer("/limits/cpu") {
        let milli = millicores(str_of(cpu)?)?;
        flags.push(format!("--cpus={}.{:03}", milli / 1000, milli % 1000));
    }
    Ok(flags)
}

fn bytes(quantity: &str) -> Result<u64> {
    for (suffix, unit) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return Ok(n.parse::<u64>()? * unit);
        }
    }
    quantity
        .parse()
        .with_context(|| format!("memory quantity {quantity:?}"))
}

fn millicores(quantity: &str) -> Result<u64> {
    match quantity.strip_suffix('m') {
        Some(m) => Ok(m.parse()?),
        None => Ok(quantity.parse::<u64>()? * 1000),
    }
}

fn security_context(sc: &Value, seccomp_root: &Path) -> Result<(Vec<String>, String)> {
    let mut flags = Vec::new();
    let mut kind = String::from("RuntimeDefault");
    let user = sc.get("runAsUser").and_then(Value::as_u64);
    let group = sc.get("runAsGroup").and_then(Value::as_u64);
    for (field, value) in sc.as_object().context("securityContext is not a map")? {
        match field.as_str() {
            "runAsUser" | "runAsGroup" => {}
            // Checked by the kubelet against the image's user; the user is set explicitly.
            "runAsNonRoot" => {}
            "privileged" if value == true => flags.push("--privileged".into()),
            "privileged" => {}
            "allowPrivilegeEscalation" if value == false => {
                flags.push("--security-opt=no-new-privileges".into())
            }
            "allowPrivilegeEscalation" => {}
            // A kubelet mounts no tmpfs over a read-only root; podman does unless told.
            "readOnlyRootFilesystem" if value == true => {
                flags.push("--read-only".into());
                flags.push("--read-only-tmpfs=false".into());
            }
            "readOnlyRootFilesystem" => {}
            "capabilities" => {
                for cap in strings(&value["drop"]).unwrap_or_default() {
                    flags.push(format!("--cap-drop={}", cap_name(&cap)));
                }
                for cap in strings(&value["add"]).unwrap_or_default() {
                    flags.push(format!("--cap-add={}", cap_name(&cap)));
                }
            }
            "seccompProfile" => {
                kind = str_of(&value["type"])?.to_owned();
                match kind.as_str() {
                    "RuntimeDefault" => {}
                    "Unconfined" => flags.push("--security-opt=seccomp=unconfined".into()),
                    "Localhost" => {
                        let file = str_of(&value["localhostProfile"])?;
                        let path = seccomp_root.join(file);
                        ensure!(path.is_file(), "no seccomp profile {}", path.display());
                        flags.push(format!("--security-opt=seccomp={}", path.display()));
                    }
                    other => bail!("seccompProfile type {other:?} is not translated"),
                }
            }
            other => bail!("securityContext.{other} is not translated to podman flags"),
        }
    }
    match (user, group) {
        (Some(u), Some(g)) => flags.push(format!("--user={u}:{g}")),
        (Some(u), None) => flags.push(format!("--user={u}")),
        (None, Some(_)) => bail!("runAsGroup without runAsUser is not translated"),
        (None, None) => {}
    }
    Ok((flags, kind))
}

/// `ALL` stays `ALL`; `BPF` is `CAP_BPF`.
fn cap_name(cap: &str) -> String {
    if cap == "ALL" || cap.starts_with("CAP_") {
        cap.to_owned()
    } else {
        format!("CAP_{cap}")
    }
}

/// hostPath volumes, mounted where the container says (read-only when it says so).
fn volume_mounts(mounts: &Value, pod: &Value) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for m in mounts.as_array().context("volumeMounts is not a list")? {
        let name = str_of(&m["name"])?;
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .with_context(|| format!("no volume {name:?}"))?;
        let host = volume
            .pointer("/hostPath/path")
            .and_then(Value::as_str)
            .with_context(|| format!("volume {name:?}: only hostPath volumes are translated"))?;
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        flags.push(format!("--volume={host}:{}{ro}", str_of(&m["mountPath"])?));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests;

    fn daemonset() -> Value {
        let path = manifests::deploy_dir().join("daemonset.yaml");
        let objects = manifests::parse_objects(&std::fs::read_to_string(path).unwrap()).unwrap();
        manifests::find(&objects, "DaemonSet", "netprobe")
            .unwrap()
            .clone()
    }

    #[test]
    fn the_daemonset_as_podman_flags() {
        let t = translate(&daemonset(), "node-a", Path::new("/nowhere")).unwrap();
        for flag in [
            "--network=host",
            "--stop-timeout=10",
            "--pull=never",
            "--env=NETPROBE_NODE_NAME=node-a",
            "--env=NETPROBE_KUBE=auto",
            "--env=NETPROBE_LISTEN=0.0.0.0:9810",
            "--memory=268435456",
            "--cpu-shares=102",
            "--security-opt=no-new-privileges",
            "--read-only",
            "--cap-drop=ALL",
            "--cap-add=CAP_BPF",
            "--cap-add=CAP_NET_ADMIN",
            "--cap-add=CAP_PERFMON",
            "--user=0",
        ] {
            assert!(t.flags.iter().any(|f| f == flag), "{flag} in {:?}", t.flags);
        }
        assert!(
            !t.flags.iter().any(|f| f.contains("seccomp")),
            "{:?}",
            t.flags
        );
        assert_eq!(t.args, ["run"]);
        assert_eq!(t.seccomp, "RuntimeDefault");
        let mut probes = t.probes.clone();
        probes.sort();
        assert_eq!(
            probes,
            [
                ("livenessProbe".to_owned(), 9810, "/healthz".to_owned()),
                ("readinessProbe".to_owned(), 9810, "/readyz".to_owned()),
            ]
        );
    }

    #[test]
    fn a_localhost_profile_is_a_file_under_the_seccomp_root() {
        let mut ds = daemonset();
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
            serde_json::json!({"type": "Localhost", "localhostProfile": "seccomp/netprobe.json"});
        // deploy/components/ stands for the kubelet's seccomp directory.
        let root = manifests::deploy_dir().join("components");
        let t = translate(&ds, "n", &root).unwrap();
        let flag = format!(
            "--security-opt=seccomp={}",
            root.join("seccomp/netprobe.json").display()
        );
        assert!(t.flags.contains(&flag), "{:?}", t.flags);
        assert_eq!(t.seccomp, "Localhost");
        let missing = translate(&ds, "n", Path::new("/nowhere")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("no seccomp profile"),
            "{missing:#}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_not_ignored() {
        let mut ds = daemonset();
        ds["spec"]["template"]["spec"]["shareProcessNamespace"] = Value::Bool(true);
        assert!(translate(&ds, "n", Path::new("/nowhere")).is_err());
        let mut ds = daemonset();
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["procMount"] =
            "Unmasked".into();
        assert!(translate(&ds, "n", Path::new("/nowhere")).is_err());
    }

    #[test]
    fn host_path_volumes_are_mounted() {
        let mut ds = daemonset();
        let pod = &mut ds["spec"]["template"]["spec"];
        pod["volumes"] = serde_json::json!([{"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}}]);
        pod["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "bpf", "mountPath": "/sys/fs/bpf", "readOnly": true}]);
        let t = translate(&ds, "n", Path::new("/nowhere")).unwrap();
        assert!(
            t.flags
                .contains(&"--volume=/sys/fs/bpf:/sys/fs/bpf:ro".to_owned())
        );
    }
}
