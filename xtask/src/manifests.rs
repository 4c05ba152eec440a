//! `cargo xtask check-manifests`: the Kubernetes manifests in deploy/ as a cluster would
//! take them, without a cluster.
//!
//! 1. `kubectl kustomize deploy/` renders them (what `kubectl apply -k deploy/` applies).
//! 2. Every rendered object is validated, strictly (an unknown field is an error):
//!    built-in kinds with kubernetes-validate, the prometheus-operator kinds against their
//!    CRD schemas (xtask/scripts/validate_manifests.py, in a venv under target/).
//! 3. The security and operations policy of deploy/README.md is asserted here, in Rust:
//!    read-only RBAC on exactly four resources, capabilities exactly BPF, NET_ADMIN and
//!    PERFMON, not privileged, probes, tolerations, labels, ...
//! 4. The Grafana dashboard: data source only through the `${datasource}` variable, the
//!    variables, the panels; every query parses (as a recording rule for promtool).
//! 5. The alerts: `promtool check rules` on the PrometheusRule's groups, and
//!    `promtool test rules` (xtask/testdata/alerts_test.yaml): each alert fires on the
//!    series it is meant for, with its annotations rendered, and not on healthy ones.
//!
//! Needs no root; needs kubectl, promtool and python3 (`cargo xtask bootstrap` as root
//! installs them on Debian). `cargo xtask check-monitoring` evaluates the same queries
//! against a real Prometheus scraping the demo's agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use lab::exec;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{image, util};

pub mod combinations;
mod dashboard;
mod kind;
mod policy;
pub mod seccomp;

pub use dashboard::{Query, dashboard_checks, dashboard_queries};
pub use kind::{doc_checks, kind_cluster_checks};
pub use policy::policy;

/// Kubernetes versions the built-in objects are validated against: an old one still in
/// use and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", "1.37"];

pub fn deploy_dir() -> PathBuf {
    util::workspace_root().join("deploy")
}

pub fn dashboard_path() -> PathBuf {
    deploy_dir().join("grafana").join("netprobe.json")
}

pub fn kind_cluster_path() -> PathBuf {
    deploy_dir().join("kind").join("cluster.yaml")
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn testdata() -> PathBuf {
    util::workspace_root().join("xtask").join("testdata")
}

pub fn run() -> Result<()> {
    let out = util::workspace_root()
        .join("target")
        .join("netprobe-manifests");
    std::fs::create_dir_all(&out)?;

    println!(
        "== Rendering every combination: kubectl kustomize of deploy/, of deploy/ with each \
         component and with both, of overlays/monitoring"
    );
    let all = combinations::render_all(&out)?;
    // The base with the Prometheus Operator's objects: what the checks below read.
    let objects = all[1].objects.clone();

    println!("\n== Schemas (strict: unknown fields are errors), policy, components");
    let python = ensure_venv()?;
    let dashboard = read_dashboard()?;
    combinations::check(&python, &all, &dashboard)?;
    // The validator must reject what the API server would reject or silently drop.
    let broken = with_unknown_fields(&objects)?;
    let broken_path = out.join("broken.yaml");
    std::fs::write(&broken_path, &broken)?;
    let rejected = validator(&python, &broken_path).output()?;
    let said = String::from_utf8_lossy(&rejected.stdout);
    ensure!(
        !rejected.status.success()
            && said.contains("INVALID DaemonSet")
            && said.contains("INVALID ServiceMonitor")
            && said.contains("INVALID PrometheusRule"),
        "the validator accepted objects with unknown fields ({}):\n{said}",
        broken_path.display()
    );
    println!("   and it rejects unknown fields in a DaemonSet, a ServiceMonitor, a PrometheusRule");

    println!("\n== Policy (deploy/README.md) and dashboard");
    let mut checks = policy(&objects, &dashboard);
    checks.merge(dashboard_checks(&dashboard));
    checks.finish("policy and dashboard")?;

    println!("\n== components/seccomp: netprobe's seccomp profile");
    seccomp::check()?;

    println!("\n== Kind cluster (deploy/kind/cluster.yaml) and what the docs say of it");
    let mut checks = kind_cluster_checks(&read(&kind_cluster_path())?);
    let root = util::workspace_root();
    for doc in [root.join("README.md"), deploy_dir().join("README.md")] {
        let shown = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        checks.merge(doc_checks(&shown, &read(&doc)?));
    }
    checks.finish("Kind cluster and docs")?;

    println!("\n== Alert rules: promtool check rules, promtool test rules");
    let rule = find(&objects, "PrometheusRule", "netprobe")?;
    let rules_path = out.join("netprobe-rules.yaml");
    write_rule_groups(rule, &rules_path)?;
    let promtool = exec::find_tool("promtool").context(
        "promtool not found: install Debian's `prometheus` package (`cargo xtask bootstrap` \
         as root does)",
    )?;
    print!(
        "{}",
        exec::run(
            Command::new(&promtool)
                .args(["check", "rules"])
                .arg(&rules_path)
        )?
    );
    // The unit tests name the rules file relative to themselves: both in `out`.
    let tests_path = out.join("alerts_test.yaml");
    std::fs::copy(testdata().join("alerts_test.yaml"), &tests_path)?;
    print!(
        "{}",
        exec::run(
            Command::new(&promtool)
                .args(["test", "rules"])
                .arg(&tests_path)
        )?
    );

    println!("\n== Dashboard queries parse (as recording rules: promtool check rules)");
    let queries = dashboard_queries(&dashboard)?;
    let as_rules = json!({"groups": [{
        "name": "netprobe-dashboard",
        "rules": queries.iter().enumerate().map(|(i, q)| json!({
            "record": format!("netprobe_dashboard:query{i}"),
            "expr": q.expr,
        })).collect::<Vec<_>>(),
    }]});
    let queries_path = out.join("dashboard-queries.yaml");
    std::fs::write(&queries_path, serde_json::to_string_pretty(&as_rules)?)?;
    exec::run(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&queries_path),
    )
    .with_context(|| {
        format!(
            "a dashboard query does not parse ({})",
            queries_path.display()
        )
    })?;
    for q in &queries {
        println!("   ok  {}", q.what);
    }
    println!(
        "\nmanifests: {} renderings valid ({} objects with the Prometheus Operator's), policy \
         holds, {} alert rules and {} dashboard queries parse",
        all.len(),
        objects.len(),
        alert_rules(rule)?.len(),
        queries.len()
    );
    Ok(())
}

/// `kubectl kustomize deploy/`: the base.
pub fn render() -> Result<String> {
    combinations::render_with(&[])
}

/// The objects of a multi-document YAML stream, as JSON values.
pub fn parse_objects(yaml: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).context("parsing YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

pub fn read_dashboard() -> Result<Value> {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} named {name} in the manifests"))
}

/// Writes a PrometheusRule's `spec` (its rule groups) as a Prometheus rules file (JSON is
/// YAML).
pub fn write_rule_groups(rule: &Value, path: &Path) -> Result<()> {
    let spec = rule.get("spec").context("PrometheusRule without spec")?;
    std::fs::write(path, serde_json::to_string_pretty(spec)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// One alerting rule of the PrometheusRule.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: String,
    pub expr: String,
}

pub fn alert_rules(rule: &Value) -> Result<Vec<AlertRule>> {
    let mut rules = Vec::new();
    for group in rule["spec"]["groups"]
        .as_array()
        .context("no spec.groups")?
    {
        for r in group["rules"].as_array().context("a group without rules")? {
            let name = r["alert"]
                .as_str()
                .with_context(|| format!("a rule that is not an alert: {r}"))?;
            let expr = r["expr"]
                .as_str()
                .with_context(|| format!("alert {name} without expr"))?;
            rules.push(AlertRule {
                name: name.to_owned(),
                expr: expr.trim().to_owned(),
            });
        }
    }
    Ok(rules)
}

/// Named checks, all run, all failures reported together.
#[derive(Default)]
pub struct Checks {
    passed: usize,
    problems: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.problems.push(problem());
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.check(ok, || format!("{what}: {got:?}, want {want:?}"));
    }

    /// Says which rendering each problem is of.
    fn prefix(&mut self, what: &str) {
        for p in &mut self.problems {
            *p = format!("{what}: {p}");
        }
    }

    fn merge(&mut self, other: Checks) {
        self.passed += other.passed;
        self.problems.extend(other.problems);
    }

    #[cfg(test)]
    fn problems(&self) -> &[String] {
        &self.problems
    }

    fn finish(self, what: &str) -> Result<()> {
        if self.problems.is_empty() {
            println!("   {} checks of the {what} hold", self.passed);
            return Ok(());
        }
        for p in &self.problems {
            println!("   FAIL {p}");
        }
        bail!(
            "{} of {} checks of the {what} failed (see above)",
            self.problems.len(),
            self.problems.len() + self.passed
        )
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn strings(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The venv with kubernetes-validate and jsonschema (xtask/scripts/requirements.txt),
/// created or updated when the requirements changed; returns its python.
fn ensure_venv() -> Result<PathBuf> {
    let venv = util::workspace_root().join("target").join("netprobe-venv");
    let python = venv.join("bin").join("python");
    let requirements = util::workspace_root()
        .join("xtask")
        .join("scripts")
        .join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)?;
    let stamp = venv.join("netprobe-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    let python3 = exec::find_tool("python3").context(
        "python3 not found: install it (Debian: apt-get install python3-venv; \
         `cargo xtask bootstrap` as root does)",
    )?;
    println!(
        "   creating {} with {}",
        venv.display(),
        requirements.display()
    );
    exec::run(
        Command::new(&python3)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .context("creating the venv (on Debian the venv module is in python3-venv)")?;
    exec::run_streaming(
        Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

fn validator(python: &Path, rendered: &Path) -> Command {
    let root = util::workspace_root();
    let mut cmd = Command::new(python);
    cmd.arg(
        root.join("xtask")
            .join("scripts")
            .join("validate_manifests.py"),
    )
    .arg("--crds")
    .arg(testdata().join("crds"));
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    cmd.arg(rendered);
    cmd
}

fn validate(python: &Path, rendered: &Path) -> Result<()> {
    let out = validator(python, rendered).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success(),
        "some manifests are not valid (see above)"
    );
    Ok(())
}

/// The objects again with a field no schema has in a DaemonSet's container, a
/// ServiceMonitor endpoint and a PrometheusRule rule.
fn with_unknown_fields(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        let mut o = o.clone();
        let target = match o["kind"].as_str() {
            Some("DaemonSet") => o.pointer_mut("/spec/template/spec/containers/0"),
            Some("ServiceMonitor") => o.pointer_mut("/spec/endpoints/0"),
            Some("PrometheusRule") => o.pointer_mut("/spec/groups/0/rules/0"),
            _ => None,
        };
        if let Some(Value::Object(map)) = target {
            map.insert("readinesProbe".into(), json!({}));
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&o)?);
    }
    Ok(out)
}
