//! deploy/components/seccomp: the base with netprobe's own seccomp profile (for nodes
//! whose runtime's default profile forbids bpf() without CAP_SYS_ADMIN), rendered on top
//! of the base and checked: valid objects, the same objects as the base but for the
//! DaemonSet's `seccompProfile`, and a profile that lets bpf() through with CAP_BPF and
//! perf_event_open() with CAP_PERFMON and stays a default-deny filter.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Checks, deploy_dir, find, read, str_at};

/// The profile's file name, in the component and under the kubelet's seccomp directory
/// (`profiles/<name>`, what the component's `localhostProfile` says).
pub const PROFILE: &str = "netprobe.json";

pub fn component_dir() -> PathBuf {
    deploy_dir().join("components").join("seccomp")
}

pub fn profile_path() -> PathBuf {
    component_dir().join(PROFILE)
}

/// `kubectl kustomize` of an overlay of the base with the component (what a user's
/// overlay does: kustomize takes no component on its own).
pub fn render() -> Result<String> {
    super::combinations::render_with(&[super::combinations::SECCOMP])
}

/// The profile, read and checked.
pub fn check() -> Result<()> {
    let profile: Value = serde_json::from_str(&read(&profile_path())?)
        .with_context(|| format!("{} is not JSON", profile_path().display()))?;
    profile_checks(&profile).finish("the seccomp profile")
}

const SECCOMP: &str = "/spec/template/spec/containers/0/securityContext/seccompProfile";

/// The component changes the DaemonSet's seccompProfile to the Localhost profile, and
/// nothing else.
pub fn overlay_checks(base: &[Value], with: &[Value]) -> Checks {
    let mut c = Checks::default();
    c.eq("objects with the component", with.len(), base.len());
    let Ok(ds) = find(with, "DaemonSet", "netprobe") else {
        c.check(false, || "no DaemonSet netprobe with the component".into());
        return c;
    };
    c.eq(
        "seccompProfile.type with the component",
        str_at(ds, &format!("{SECCOMP}/type")),
        Some("Localhost"),
    );
    let localhost = format!("profiles/{PROFILE}");
    c.eq(
        "seccompProfile.localhostProfile with the component",
        str_at(ds, &format!("{SECCOMP}/localhostProfile")),
        Some(localhost.as_str()),
    );
    for (b, w) in base.iter().zip(with) {
        let (mut b, mut w) = (b.clone(), w.clone());
        if b["kind"] == "DaemonSet" {
            for o in [&mut b, &mut w] {
                if let Some(p) = o.pointer_mut(SECCOMP) {
                    *p = Value::Null;
                }
            }
        }
        c.check(b == w, || {
            format!(
                "the component changes {} {} beyond its seccompProfile",
                b["kind"], b["metadata"]["name"]
            )
        });
    }
    c
}

/// Whether a rule of a containers/common-format profile applies to a container whose
/// bounding set holds `caps`: every `includes.caps` held and no `excludes.caps` held.
fn applies(rule: &Value, caps: &[&str]) -> bool {
    let list = |k: &str| -> Vec<&str> {
        rule.pointer(&format!("/{k}/caps"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    list("includes").iter().all(|c| caps.contains(c))
        && !list("excludes").iter().any(|c| caps.contains(c))
}

/// What the profile does with `syscall` for a container holding `caps` (the DaemonSet's):
/// the actions of the rules that name it and apply, or the default action.
pub fn action_for(profile: &Value, syscall: &str, caps: &[&str]) -> Vec<String> {
    let actions: Vec<String> = profile["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|s| s == syscall))
                && applies(r, caps)
        })
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect();
    if actions.is_empty() {
        vec![
            profile["defaultAction"]
                .as_str()
                .unwrap_or("none")
                .to_owned(),
        ]
    } else {
        actions
    }
}

/// The DaemonSet's capabilities, as the profile names them.
const AGENT_CAPS: &[&str] = &["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];

pub fn profile_checks(profile: &Value) -> Checks {
    let mut c = Checks::default();
    c.eq(
        "the profile's defaultAction",
        profile["defaultAction"].as_str(),
        Some("SCMP_ACT_ERRNO"),
    );
    let allow = vec!["SCMP_ACT_ALLOW".to_owned()];
    for syscall in ["bpf", "perf_event_open"] {
        c.eq(
            &format!("{syscall}() with the agent's capabilities"),
            action_for(profile, syscall, AGENT_CAPS),
            allow.clone(),
        );
        c.check(
            action_for(profile, syscall, &["CAP_NET_ADMIN"]) != allow,
            || {
                format!(
                    "the profile allows {syscall}() without CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN"
                )
            },
        );
    }
    for syscall in ["read", "setsockopt", "sendmsg", "recvmsg", "epoll_wait"] {
        c.eq(
            &format!("{syscall}()"),
            action_for(profile, syscall, AGENT_CAPS),
            allow.clone(),
        );
    }
    // Still the runtime's filter: what it refuses a container stays refused.
    for syscall in [
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "open_by_handle_at",
        "iopl",
        "userfaultfd",
    ] {
        c.check(action_for(profile, syscall, AGENT_CAPS) != allow, || {
            format!("the profile allows {syscall}() to the agent")
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Value {
        serde_json::from_str(&std::fs::read_to_string(profile_path()).unwrap()).unwrap()
    }

    #[test]
    fn the_shipped_profile_lets_the_agent_load_and_little_else() {
        let checks = profile_checks(&profile());
        assert!(checks.problems().is_empty(), "{:?}", checks.problems());
    }

    #[test]
    fn a_profile_of_the_runtimes_default_fails_the_checks() {
        // podman's and CRI-O's default: bpf() and perf_event_open() only with
        // CAP_SYS_ADMIN (containers/common's seccomp.json).
        let mut p = profile();
        let syscalls = p["syscalls"].as_array_mut().unwrap();
        syscalls.retain(|r| !r["comment"].as_str().unwrap_or("").starts_with("netprobe:"));
        syscalls.push(serde_json::json!({
            "names": ["bpf", "perf_event_open"],
            "action": "SCMP_ACT_ERRNO",
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        }));
        let checks = profile_checks(&p);
        assert_eq!(checks.problems().len(), 2, "{:?}", checks.problems());
    }
}
