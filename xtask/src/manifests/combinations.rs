//! Every way deploy/ is meant to be applied, rendered by `kubectl kustomize` and checked:
//! the base alone (what `kubectl apply -k deploy/` applies to a bare cluster: built-in
//! kinds only), the base with each component and with both, and the shipped overlay
//! overlays/monitoring (which must render what the base with components/prometheus-operator
//! does).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lab::exec;
use serde_json::Value;

use super::{Checks, deploy_dir, parse_objects, policy, seccomp, validate};
use crate::util;

/// The components of deploy/components, by directory name.
pub const PROMETHEUS_OPERATOR: &str = "prometheus-operator";
pub const SECCOMP: &str = "seccomp";

/// The kinds components/prometheus-operator adds, each named `netprobe`.
pub const OPERATOR_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// The API group of the Prometheus Operator's kinds: a bare cluster has none of them.
const OPERATOR_GROUP: &str = "monitoring.coreos.com/";

pub fn component_dir(name: &str) -> PathBuf {
    deploy_dir().join("components").join(name)
}

/// The shipped overlay: the base with components/prometheus-operator.
pub fn overlay_dir() -> PathBuf {
    util::workspace_root().join("overlays").join("monitoring")
}

/// deploy/components/prometheus-operator/prometheusrule.yaml: the alerts.
pub fn rule_path() -> PathBuf {
    component_dir(PROMETHEUS_OPERATOR).join("prometheusrule.yaml")
}

fn kubectl_kustomize(dir: &Path) -> Result<String> {
    let kubectl = exec::find_tool("kubectl").context(
        "kubectl not found: install it (on Debian: apt-get install kubernetes-client; \
         `cargo xtask bootstrap` as root does)",
    )?;
    exec::run(
        std::process::Command::new(kubectl)
            .arg("kustomize")
            .arg(dir),
    )
}

/// `kubectl kustomize` of the base with `components` (none: the base itself), through an
/// overlay written under target/ as a user's would be (kustomize takes no component on
/// its own).
pub fn render_with(components: &[&str]) -> Result<String> {
    if components.is_empty() {
        return kubectl_kustomize(&deploy_dir());
    }
    let overlay = util::workspace_root()
        .join("target")
        .join("netprobe-manifests")
        .join(format!("overlay-{}", components.join("+")));
    std::fs::create_dir_all(&overlay)?;
    // kustomize wants paths relative to the overlay: target/netprobe-manifests/<overlay>.
    let mut text = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                    resources:\n  - ../../../deploy\ncomponents:\n"
        .to_owned();
    for c in components {
        text.push_str(&format!("  - ../../../deploy/components/{c}\n"));
    }
    std::fs::write(overlay.join("kustomization.yaml"), text)?;
    kubectl_kustomize(&overlay)
}

/// One rendering: its name, its objects, where it was written.
pub struct Rendered {
    pub name: String,
    pub objects: Vec<Value>,
    pub path: PathBuf,
}

fn rendered(out: &Path, name: &str, text: String) -> Result<Rendered> {
    let path = out.join(format!(
        "rendered-{}.yaml",
        name.replace(['/', ' ', '+'], "-")
    ));
    std::fs::write(&path, &text)?;
    let objects = parse_objects(&text).with_context(|| format!("parsing {name}"))?;
    println!("   {name}: {} objects -> {}", objects.len(), path.display());
    Ok(Rendered {
        name: name.to_owned(),
        objects,
        path,
    })
}

/// Every combination, rendered: the base, base + each component, base + both, and the
/// shipped overlay, in that order.
pub fn render_all(out: &Path) -> Result<Vec<Rendered>> {
    let mut all = Vec::new();
    for components in [
        &[][..],
        &[PROMETHEUS_OPERATOR][..],
        &[SECCOMP][..],
        &[PROMETHEUS_OPERATOR, SECCOMP][..],
    ] {
        let name = if components.is_empty() {
            "deploy/".to_owned()
        } else {
            format!("deploy/ + {}", components.join(" + "))
        };
        all.push(rendered(out, &name, render_with(components)?)?);
    }
    all.push(rendered(
        out,
        "overlays/monitoring",
        kubectl_kustomize(&overlay_dir())?,
    )?);
    Ok(all)
}

/// Validates every rendering strictly and checks each against the policy and against the
/// base: a component adds or changes only what it is for.
pub fn check(python: &Path, all: &[Rendered], dashboard: &Value) -> Result<()> {
    for r in all {
        println!("   validating {}", r.name);
        validate(python, &r.path).with_context(|| format!("{} is not valid", r.name))?;
    }
    let [base, operator, seccomp_only, both, overlay] = all else {
        anyhow::bail!("{} renderings, want 5", all.len());
    };
    let mut c = Checks::default();
    for r in all {
        let mut p = policy(&r.objects, dashboard);
        if r.name.contains(SECCOMP) {
            // The base's RuntimeDefault, replaced: what replaces it is checked below.
            p.problems.retain(|p| !p.starts_with("seccompProfile:"));
        }
        p.prefix(&r.name);
        c.merge(p);
    }
    c.merge(combination_checks(
        &base.objects,
        &operator.objects,
        &seccomp_only.objects,
        &both.objects,
        &overlay.objects,
    ));
    c.finish("renderings of the base and its components")
}

/// What each combination must be, given the base's objects.
pub fn combination_checks(
    base: &[Value],
    operator: &[Value],
    seccomp_only: &[Value],
    both: &[Value],
    overlay: &[Value],
) -> Checks {
    let mut c = Checks::default();
    let operator_kinds = |objects: &[Value]| -> Vec<String> {
        objects
            .iter()
            .filter(|o| {
                o["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(OPERATOR_GROUP))
            })
            .map(|o| o["kind"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    c.eq(
        "deploy/ (a bare cluster): Prometheus Operator kinds",
        operator_kinds(base),
        Vec::new(),
    );
    let want: Vec<String> = OPERATOR_KINDS.iter().map(|k| k.to_string()).collect();
    for (name, objects) in [
        ("deploy/ + prometheus-operator", operator),
        ("deploy/ + prometheus-operator + seccomp", both),
    ] {
        let mut got = operator_kinds(objects);
        got.sort();
        let mut want = want.clone();
        want.sort();
        c.eq(&format!("{name}: Prometheus Operator kinds"), got, want);
    }
    // The operator's component adds its two objects and changes nothing of the base.
    let without_operator = |objects: &[Value]| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| !OPERATOR_KINDS.contains(&o["kind"].as_str().unwrap_or("")))
            .cloned()
            .collect()
    };
    c.check(without_operator(operator) == base, || {
        "components/prometheus-operator changes the base's objects".into()
    });
    // The seccomp component changes the DaemonSet's seccompProfile only, alone or not.
    let mut s = seccomp::overlay_checks(base, seccomp_only);
    s.prefix("deploy/ + seccomp");
    c.merge(s);
    let mut s = seccomp::overlay_checks(operator, both);
    s.prefix("deploy/ + prometheus-operator + seccomp");
    c.merge(s);
    // The shipped overlay is the base with the operator's component.
    c.check(overlay == operator, || {
        "overlays/monitoring does not render what deploy/ + components/prometheus-operator \
         does"
            .into()
    });
    c
}
