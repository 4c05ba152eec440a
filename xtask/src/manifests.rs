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
use serde::Deserialize;
use serde_json::{Value, json};
use xtask::exec;

use crate::{image, util};

pub mod seccomp;

/// Kubernetes versions the built-in objects are validated against: an old one still in
/// use and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", "1.37"];

/// The workspace's version: what `cargo xtask image` tags the image with
/// ([`image::tag`], the DaemonSet's image) and what every `app.kubernetes.io/version`
/// label must say. A version bump that leaves deploy/ behind fails the policy instead of
/// deploying an image that was never built or loaded into Kind.
const VERSION: &str = image::VERSION;

/// The recommended labels every object carries, with the values that must not vary.
const RECOMMENDED_LABELS: &[(&str, Option<&str>)] = &[
    ("app.kubernetes.io/name", Some("netprobe")),
    ("app.kubernetes.io/instance", Some("netprobe")),
    ("app.kubernetes.io/component", None),
    ("app.kubernetes.io/part-of", Some("netprobe")),
    ("app.kubernetes.io/version", Some(VERSION)),
    ("app.kubernetes.io/managed-by", Some("kustomize")),
];

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

    println!("== Rendering: kubectl kustomize deploy/");
    let rendered = render()?;
    let rendered_path = out.join("rendered.yaml");
    std::fs::write(&rendered_path, &rendered)?;
    let objects = parse_objects(&rendered)?;
    println!(
        "   {} objects -> {}",
        objects.len(),
        rendered_path.display()
    );

    println!("\n== Schemas (strict: unknown fields are errors)");
    let python = ensure_venv()?;
    validate(&python, &rendered_path)?;
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

    println!("\n== Policy (deploy/README.md)");
    let dashboard = read_dashboard()?;
    let mut checks = policy(&objects, &dashboard);
    checks.merge(dashboard_checks(&dashboard));
    checks.finish("policy and dashboard")?;

    println!("\n== components/seccomp: the base with netprobe's seccomp profile");
    seccomp::check(&python, &out, &objects)?;

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
        "\nmanifests: {} objects valid, policy holds, {} alert rules and {} dashboard queries parse",
        objects.len(),
        alert_rules(rule)?.len(),
        queries.len()
    );
    Ok(())
}

/// `kubectl kustomize deploy/`.
pub fn render() -> Result<String> {
    let kubectl = exec::find_tool("kubectl").context(
        "kubectl not found: install it (on Debian: apt-get install kubernetes-client; \
         `cargo xtask bootstrap` as root does)",
    )?;
    exec::run(Command::new(kubectl).arg("kustomize").arg(deploy_dir()))
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

/// A dashboard query, with Grafana's variables replaced by what "All" and a 1-minute
/// scrape give: `$node`, `$namespace` -> `.*` (their allValue), `$__rate_interval` -> 1m,
/// `$__range` -> 5m.
#[derive(Debug, Clone)]
pub struct Query {
    /// e.g. `panel 5 "Failing flows by verdict" A`
    pub what: String,
    pub expr: String,
}

pub fn dashboard_queries(dashboard: &Value) -> Result<Vec<Query>> {
    let mut values: BTreeMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__range", "5m"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .context("no templating.list")?
    {
        if let (Some(name), Some(all)) = (var["name"].as_str(), var["allValue"].as_str()) {
            values.insert(name.to_owned(), all.to_owned());
        }
    }
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let what = format!(
                "panel {} {title:?} {}",
                panel["id"],
                target["refId"].as_str().unwrap_or("?")
            );
            let expr = substitute(expr, &values).with_context(|| what.clone())?;
            queries.push(Query { what, expr });
        }
    }
    Ok(queries)
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(p);
        all.extend(p["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Replaces `$name` and `${name}` with `values[name]`; an unknown variable is an error.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').context("unclosed ${")?;
            (&inner[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values
            .get(name)
            .with_context(|| format!("unknown variable ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
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

/// Whether `tolerations` let a pod onto a node with this taint (Kubernetes' matching: an
/// empty key with `Exists` matches every key, an empty effect every effect).
fn tolerated(tolerations: &[Value], key: &str, value: &str, effect: &str) -> bool {
    tolerations.iter().any(|t| {
        let t_key = t["key"].as_str().unwrap_or("");
        let t_effect = t["effect"].as_str().unwrap_or("");
        let exists = t["operator"].as_str() == Some("Exists");
        (t_effect.is_empty() || t_effect == effect)
            && (t_key == key || (t_key.is_empty() && exists))
            && (exists || t["value"].as_str().unwrap_or("") == value)
    })
}

/// The policy of deploy/README.md, on the rendered objects.
pub fn policy(objects: &[Value], dashboard: &Value) -> Checks {
    let mut c = Checks::default();
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let want: BTreeSet<String> = [
        "Namespace/netprobe",
        "ServiceAccount/netprobe",
        "ClusterRole/netprobe",
        "ClusterRole/netprobe-reader",
        "ClusterRoleBinding/netprobe",
        "DaemonSet/netprobe",
        "Service/netprobe",
        "ServiceMonitor/netprobe",
        "PrometheusRule/netprobe",
        "ConfigMap/netprobe-dashboard",
    ]
    .map(String::from)
    .into();
    c.eq("objects", &kinds, &want);

    // Labels and namespace, everywhere.
    let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"];
    for o in objects {
        let id = format!(
            "{} {}",
            o["kind"].as_str().unwrap_or("?"),
            o["metadata"]["name"].as_str().unwrap_or("?")
        );
        let mut label_sets = vec![(id.clone(), &o["metadata"]["labels"])];
        if o["kind"] == "DaemonSet" {
            label_sets.push((
                format!("{id} pod template"),
                &o["spec"]["template"]["metadata"]["labels"],
            ));
        }
        for (whose, labels) in label_sets {
            for (key, want) in RECOMMENDED_LABELS {
                let got = labels[key].as_str();
                c.check(
                    got.is_some_and(|g| !g.is_empty() && want.is_none_or(|w| g == w)),
                    || {
                        format!(
                            "{whose}: label {key} is {got:?}, want {}",
                            want.unwrap_or("set")
                        )
                    },
                );
            }
        }
        let namespace = o["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&o["kind"].as_str().unwrap_or("")) {
            c.eq(&format!("{id}: namespace"), namespace, None);
        } else {
            c.eq(&format!("{id}: namespace"), namespace, Some("netprobe"));
        }
    }
    let Ok(ds) = find(objects, "DaemonSet", "netprobe") else {
        return c;
    };

    // RBAC: read-only on exactly these resources, and creating Events (`--events`).
    if let Ok(role) = find(objects, "ClusterRole", "netprobe") {
        let mut grants = BTreeSet::new();
        for rule in role["rules"].as_array().into_iter().flatten() {
            c.check(
                rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                || format!("ClusterRole rule with resourceNames or nonResourceURLs: {rule}"),
            );
            for group in strings(rule.get("apiGroups")) {
                for resource in strings(rule.get("resources")) {
                    for verb in strings(rule.get("verbs")) {
                        grants.insert(format!("{group}/{resource}:{verb}"));
                    }
                }
            }
        }
        let mut want = BTreeSet::new();
        for (group, resource) in [
            ("", "pods"),
            ("", "services"),
            ("", "namespaces"),
            ("discovery.k8s.io", "endpointslices"),
            ("networking.k8s.io", "networkpolicies"),
        ] {
            for verb in ["get", "list", "watch"] {
                want.insert(format!("{group}/{resource}:{verb}"));
            }
        }
        // Each Event is created once, never patched (no series), read or deleted.
        want.insert("events.k8s.io/events:create".to_string());
        // --api-auth kube: reviews of who reads the agent's API (nothing is stored).
        want.insert("authentication.k8s.io/tokenreviews:create".to_string());
        want.insert("authorization.k8s.io/subjectaccessreviews:create".to_string());
        c.eq("ClusterRole grants (group/resource:verb)", &grants, &want);
    }
    // Readers of the agent's API get its paths, and nothing of the cluster.
    if let Ok(reader) = find(objects, "ClusterRole", "netprobe-reader") {
        c.eq(
            "ClusterRole netprobe-reader rules",
            &reader["rules"],
            &json!([{"nonResourceURLs": ["/v1/*", "/metrics"], "verbs": ["get"]}]),
        );
    }
    if let Ok(binding) = find(objects, "ClusterRoleBinding", "netprobe") {
        c.eq(
            "ClusterRoleBinding roleRef",
            (
                str_at(binding, "/roleRef/kind"),
                str_at(binding, "/roleRef/name"),
            ),
            (Some("ClusterRole"), Some("netprobe")),
        );
        c.eq(
            "ClusterRoleBinding subjects",
            &binding["subjects"],
            &json!([{"kind": "ServiceAccount", "name": "netprobe", "namespace": "netprobe"}]),
        );
    }

    // The DaemonSet.
    let pod = &ds["spec"]["template"]["spec"];
    c.eq(
        "DaemonSet serviceAccountName",
        str_at(pod, "/serviceAccountName"),
        Some("netprobe"),
    );
    c.eq("hostNetwork", pod["hostNetwork"].as_bool(), Some(true));
    c.eq(
        "dnsPolicy",
        str_at(pod, "/dnsPolicy"),
        Some("ClusterFirstWithHostNet"),
    );
    for shared in ["hostPID", "hostIPC"] {
        c.check(pod[shared].as_bool() != Some(true), || {
            format!("the pod shares the host's {shared}")
        });
    }
    c.eq(
        "priorityClassName",
        str_at(pod, "/priorityClassName"),
        Some("system-node-critical"),
    );
    c.eq(
        "terminationGracePeriodSeconds",
        pod["terminationGracePeriodSeconds"].as_i64(),
        Some(10),
    );
    c.eq(
        "updateStrategy",
        (
            str_at(ds, "/spec/updateStrategy/type"),
            ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
                .and_then(Value::as_i64),
        ),
        (Some("RollingUpdate"), Some(1)),
    );
    c.check(pod.get("volumes").is_none(), || {
        format!(
            "the pod has volumes (it needs none, no /sys/fs/bpf): {}",
            pod["volumes"]
        )
    });
    let tolerations = pod["tolerations"].as_array().map_or(&[][..], Vec::as_slice);
    for (key, value, effect) in [
        ("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
        ("node-role.kubernetes.io/master", "", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "", "NoExecute"),
        ("node.kubernetes.io/unreachable", "", "NoExecute"),
        ("dedicated", "gpu", "NoSchedule"),
    ] {
        c.check(tolerated(tolerations, key, value, effect), || {
            format!("the DaemonSet does not tolerate the taint {key}={value}:{effect}")
        });
    }
    let selector = &ds["spec"]["selector"]["matchLabels"];
    c.check(
        selector.as_object().is_some_and(|m| {
            !m.is_empty()
                && !m.contains_key("app.kubernetes.io/version")
                && m.iter()
                    .all(|(k, v)| ds["spec"]["template"]["metadata"]["labels"][k] == *v)
        }),
        || format!("DaemonSet selector {selector} must match the pod labels, without the version"),
    );

    let containers = pod["containers"].as_array().map_or(&[][..], Vec::as_slice);
    c.eq("containers", containers.len(), 1);
    c.check(pod.get("initContainers").is_none(), || {
        "the pod has init containers".into()
    });
    if let Some(k) = containers.first() {
        c.eq("image", str_at(k, "/image"), Some(image::tag().as_str()));
        c.eq(
            "imagePullPolicy",
            str_at(k, "/imagePullPolicy"),
            Some("IfNotPresent"),
        );
        c.eq("args", &k["args"], &json!(["run"]));
        let sc = &k["securityContext"];
        c.eq("privileged", sc["privileged"].as_bool(), Some(false));
        c.eq(
            "allowPrivilegeEscalation",
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
        );
        c.eq(
            "readOnlyRootFilesystem",
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
        );
        c.eq("runAsUser", sc["runAsUser"].as_i64(), Some(0));
        c.eq("runAsNonRoot", sc["runAsNonRoot"].as_bool(), Some(false));
        c.eq(
            "capabilities.drop",
            strings(sc.pointer("/capabilities/drop")),
            ["ALL".to_owned()].into(),
        );
        c.eq(
            "capabilities.add",
            strings(sc.pointer("/capabilities/add")),
            ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into(),
        );
        let seccomp = str_at(sc, "/seccompProfile/type")
            .or_else(|| str_at(pod, "/securityContext/seccompProfile/type"));
        c.eq("seccompProfile", seccomp, Some("RuntimeDefault"));
        c.check(k.get("volumeMounts").is_none(), || {
            "the container mounts volumes".into()
        });

        let env: BTreeMap<&str, &Value> = k["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e)))
            .collect();
        c.eq(
            "env NETPROBE_NODE_NAME",
            env.get("NETPROBE_NODE_NAME")
                .and_then(|e| str_at(e, "/valueFrom/fieldRef/fieldPath")),
            Some("spec.nodeName"),
        );
        c.eq(
            "env NETPROBE_KUBE",
            env.get("NETPROBE_KUBE").and_then(|e| str_at(e, "/value")),
            Some("auto"),
        );
        c.eq(
            "env NETPROBE_LISTEN",
            env.get("NETPROBE_LISTEN").and_then(|e| str_at(e, "/value")),
            Some("0.0.0.0:9810"),
        );
        // Writing Events is opt-in (deploy/README.md, "Operations"): the switch is in the
        // manifest, off.
        c.eq(
            "env NETPROBE_EVENTS",
            env.get("NETPROBE_EVENTS").and_then(|e| str_at(e, "/value")),
            Some("false"),
        );
        c.eq(
            "container ports",
            &k["ports"],
            &json!([{"name": "http", "containerPort": 9810, "protocol": "TCP"}]),
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            c.eq(
                probe,
                (
                    str_at(k, &format!("/{probe}/httpGet/path")),
                    k.pointer(&format!("/{probe}/httpGet/port")),
                ),
                (Some(path), Some(&json!("http"))),
            );
        }
        c.eq(
            "resources",
            &k["resources"],
            &json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}),
        );
    }

    // Service and ServiceMonitor find the agents.
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };
    if let Ok(svc) = find(objects, "Service", "netprobe") {
        c.check(selects(&svc["spec"]["selector"], pod_labels), || {
            "the Service does not select the DaemonSet's pods".into()
        });
        c.eq(
            "Service ports",
            &svc["spec"]["ports"],
            &json!([{"name": "http", "port": 9810, "targetPort": "http", "protocol": "TCP"}]),
        );
        if let Ok(sm) = find(objects, "ServiceMonitor", "netprobe") {
            c.check(
                selects(
                    &sm["spec"]["selector"]["matchLabels"],
                    &svc["metadata"]["labels"],
                ),
                || "the ServiceMonitor does not select the Service".into(),
            );
            let endpoints = sm["spec"]["endpoints"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            c.check(
                endpoints.len() == 1 && endpoints[0]["port"] == "http",
                || format!("ServiceMonitor endpoints: {endpoints:?}, want one on port http"),
            );
            // The agents check who scrapes: Prometheus sends its service account's token.
            c.check(
                endpoints.iter().all(|e| {
                    e["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
                }),
                || "the ServiceMonitor does not send Prometheus's service-account token".into(),
            );
            c.check(
                endpoints.iter().any(|e| {
                    e["relabelings"].as_array().into_iter().flatten().any(|r| {
                        r["sourceLabels"] == json!(["__meta_kubernetes_pod_node_name"])
                            && r["targetLabel"] == "node"
                            && r["action"].as_str().unwrap_or("replace") == "replace"
                    })
                }),
                || {
                    "the ServiceMonitor does not set `node` from __meta_kubernetes_pod_node_name"
                        .into()
                },
            );
        }
    }

    // Alerts: each says who fails to reach what, where, and what to run.
    if let Ok(rule) = find(objects, "PrometheusRule", "netprobe") {
        let mut names = BTreeSet::new();
        for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
            for r in group["rules"].as_array().into_iter().flatten() {
                let name = r["alert"].as_str().unwrap_or("(a recording rule)");
                names.insert(name.to_owned());
                let expr = r["expr"].as_str().unwrap_or("");
                let summary = str_at(r, "/annotations/summary").unwrap_or("");
                let description = str_at(r, "/annotations/description").unwrap_or("");
                c.check(
                    matches!(
                        str_at(r, "/labels/severity"),
                        Some("info" | "warning" | "critical")
                    ),
                    || format!("alert {name}: no severity label"),
                );
                let mut must_name = vec!["node"];
                if expr.contains("netprobe_verdicts_total") {
                    must_name.extend([
                        "src_namespace",
                        "src_workload",
                        "dst_namespace",
                        "dst_service",
                        "dst_port",
                    ]);
                } else if expr.contains("netprobe_dns_failures_total") {
                    must_name.extend(["src_namespace", "src_workload", "qname"]);
                }
                for label in must_name {
                    c.check(description.contains(&format!("$labels.{label}")), || {
                        format!("alert {name}: its description does not name $labels.{label}")
                    });
                }
                c.check(!summary.is_empty(), || format!("alert {name}: no summary"));
                c.check(description.contains("kubectl"), || {
                    format!("alert {name}: its description gives no command to run")
                });
            }
        }
        let want: BTreeSet<String> = [
            "NetprobeConnectionTimeouts",
            "NetprobeConnectionsRefused",
            "NetprobeServiceWithoutEndpoints",
            "NetprobeDNSNameNotFound",
            "NetprobeDNSTimeouts",
            "NetprobeEventsLost",
            "NetprobeAgentDown",
            "NetprobeAgentNotReady",
            "NetprobeNoInterfacesAttached",
        ]
        .map(String::from)
        .into();
        c.eq("alerts", &names, &want);
    }

    // The dashboard ConfigMap carries deploy/grafana/netprobe.json for Grafana's sidecar.
    if let Ok(cm) = find(objects, "ConfigMap", "netprobe-dashboard") {
        c.eq(
            "dashboard ConfigMap label grafana_dashboard",
            str_at(cm, "/metadata/labels/grafana_dashboard"),
            Some("1"),
        );
        let shipped: Option<Value> =
            str_at(cm, "/data/netprobe.json").and_then(|text| serde_json::from_str(text).ok());
        c.check(shipped.as_ref() == Some(dashboard), || {
            "the ConfigMap's netprobe.json is not deploy/grafana/netprobe.json".into()
        });
    }
    c
}

/// The fields of Kind's `kind.x-k8s.io/v1alpha4` Cluster, of its nodes and of its
/// `networking` (Kind decodes its config strictly: anything else is an error).
const KIND_CLUSTER_FIELDS: &[&str] = &[
    "kind",
    "apiVersion",
    "name",
    "nodes",
    "networking",
    "featureGates",
    "runtimeConfig",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
    "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
];
const KIND_NODE_FIELDS: &[&str] = &[
    "role",
    "image",
    "extraMounts",
    "extraPortMappings",
    "labels",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
];
const KIND_NETWORKING_FIELDS: &[&str] = &[
    "ipFamily",
    "apiServerPort",
    "apiServerAddress",
    "podSubnet",
    "serviceSubnet",
    "disableDefaultCNI",
    "kubeProxyMode",
    "dnsSearch",
];
/// The nodes the README's quick start promises: "1 control plane + 2 workers" (three
/// agents, one on the tainted control plane; pod-to-pod traffic that crosses nodes).
const KIND_ROLES: &[&str] = &["control-plane", "worker", "worker"];

/// deploy/kind/cluster.yaml, as the README's quick start relies on it: a Kind v1alpha4
/// Cluster named like the `--name` of `kind load` ([`image::KIND_CLUSTER`]), its nodes,
/// kindnet (its host-side interfaces are `veth…`, which the agent's default globs match)
/// and kube-proxy (its reject of a Service port without endpoints is the UNREACHABLE the
/// quick start shows). No unknown fields.
pub fn kind_cluster_checks(text: &str) -> Checks {
    let mut c = Checks::default();
    let what = "kind/cluster.yaml";
    let docs = match parse_objects(text) {
        Ok(docs) => docs,
        Err(e) => {
            c.check(false, || format!("{what}: not YAML: {e:#}"));
            return c;
        }
    };
    c.eq(&format!("{what}: documents"), docs.len(), 1);
    let Some(cluster) = docs.first() else {
        return c;
    };
    let strict = |c: &mut Checks, whose: &str, v: &Value, known: &[&str]| {
        let Some(map) = v.as_object() else {
            c.check(false, || format!("{whose}: not a mapping: {v}"));
            return;
        };
        for key in map.keys() {
            c.check(known.contains(&key.as_str()), || {
                format!("{whose}: unknown field {key:?} (Kind knows {known:?})")
            });
        }
    };
    strict(&mut c, what, cluster, KIND_CLUSTER_FIELDS);
    c.eq(
        &format!("{what}: apiVersion"),
        str_at(cluster, "/apiVersion"),
        Some("kind.x-k8s.io/v1alpha4"),
    );
    c.eq(
        &format!("{what}: kind"),
        str_at(cluster, "/kind"),
        Some("Cluster"),
    );
    c.eq(
        &format!("{what}: name (kind load ... --name, context kind-<name>)"),
        str_at(cluster, "/name"),
        Some(image::KIND_CLUSTER),
    );
    let nodes = cluster["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    for (i, node) in nodes.iter().enumerate() {
        strict(
            &mut c,
            &format!("{what}: nodes[{i}]"),
            node,
            KIND_NODE_FIELDS,
        );
    }
    let roles: Vec<&str> = nodes
        .iter()
        .map(|n| n["role"].as_str().unwrap_or("(none)"))
        .collect();
    c.eq(&format!("{what}: node roles"), roles.as_slice(), KIND_ROLES);
    if let Some(networking) = cluster.get("networking") {
        strict(
            &mut c,
            &format!("{what}: networking"),
            networking,
            KIND_NETWORKING_FIELDS,
        );
        c.check(networking["disableDefaultCNI"] != true, || {
            format!(
                "{what}: disableDefaultCNI: the quick start relies on kindnet's veth… interfaces"
            )
        });
        c.check(networking["kubeProxyMode"] != "none", || {
            format!("{what}: kubeProxyMode none: the quick start relies on kube-proxy")
        });
    }
    c
}

/// What a README says of the image and the Kind cluster: every `netprobe/probe-agent:<n…>`
/// is this version's tag, and every `kind` command names the cluster of
/// deploy/kind/cluster.yaml (`--name`, `--config`).
pub fn doc_checks(doc: &str, text: &str) -> Checks {
    let mut c = Checks::default();
    let tag = image::tag();
    let prefix = format!("{}:", image::REPOSITORY);
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{doc}:{}", n + 1);
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        for (i, _) in line.match_indices(&prefix) {
            let rest = &line[i + prefix.len()..];
            // `netprobe/probe-agent:<version>` is a placeholder, not a version.
            if rest.starts_with(|ch: char| ch.is_ascii_digit()) {
                let named: String = rest
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || ".-+".contains(*ch))
                    .collect();
                c.check(format!("{prefix}{named}") == tag, || {
                    format!(
                        "{at}: names the image {prefix}{named}, but cargo xtask image builds {tag}"
                    )
                });
            }
        }
        // A kind command: on a line of a code block or between backticks; up to a comment.
        for segment in line.split('`') {
            let words: Vec<&str> = segment
                .split_whitespace()
                .take_while(|w| !w.starts_with('#'))
                .collect();
            let Some(start) = words.windows(2).position(|w| {
                w[0] == "kind" && ["create", "delete", "load", "get", "export"].contains(&w[1])
            }) else {
                continue;
            };
            let words = &words[start..];
            let flag = |name: &str| {
                let i = words.iter().position(|w| *w == name)?;
                words.get(i + 1).copied()
            };
            if words.contains(&"--name") {
                c.eq(
                    &format!("{at}: kind --name"),
                    flag("--name"),
                    Some(image::KIND_CLUSTER),
                );
            } else if words[1] == "load" && in_code {
                // Without --name, kind loads into the cluster named "kind" (prose may
                // name the command without its arguments).
                c.check(false, || {
                    format!("{at}: `kind load` without --name {}", image::KIND_CLUSTER)
                });
            }
            if words.get(1..3) == Some(&["create", "cluster"][..]) {
                c.eq(
                    &format!("{at}: kind create cluster --config"),
                    flag("--config"),
                    Some("deploy/kind/cluster.yaml"),
                );
            }
        }
    }
    c
}

/// Grafana metric families the dashboard must show.
const DASHBOARD_METRICS: &[&str] = &[
    "netprobe_verdicts_total",
    "netprobe_dns_failures_total",
    "netprobe_attached_interfaces",
    "netprobe_ready",
    "netprobe_events_lost_total",
    "netprobe_decode_errors_total",
];

/// The dashboard's structure: data source only through `${datasource}`, the variables,
/// panel kinds, range selectors through Grafana's interval variables.
pub fn dashboard_checks(dashboard: &Value) -> Checks {
    let mut c = Checks::default();
    const DS: &str = "${datasource}";

    // No literal data source anywhere: every `datasource` is the variable, and the only
    // other `uid` is the dashboard's own.
    fn walk(v: &Value, path: &str, top: bool, c: &mut Checks) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{path}.{k}");
                    if k == "datasource" {
                        let uid = match child {
                            Value::String(s) => Some(s.as_str()),
                            Value::Object(o) => o.get("uid").and_then(Value::as_str),
                            _ => None,
                        };
                        c.check(uid == Some(DS), || {
                            format!("dashboard {here}: {child}, want uid {DS}")
                        });
                        if let Value::Object(o) = child {
                            c.check(
                                o.get("type").and_then(Value::as_str) == Some("prometheus"),
                                || format!("dashboard {here}: type is not prometheus"),
                            );
                        }
                    } else if k == "uid" && !top {
                        c.check(child == DS, || {
                            format!("dashboard {here}: a literal uid {child}")
                        });
                    } else {
                        walk(child, &here, false, c);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"), false, c);
                }
            }
            _ => {}
        }
    }
    walk(dashboard, "", true, &mut c);

    let vars: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    c.eq(
        "variable datasource",
        vars.get("datasource")
            .map(|v| (str_at(v, "/type"), str_at(v, "/query"))),
        Some((Some("datasource"), Some("prometheus"))),
    );
    for (name, label) in [("node", "node"), ("namespace", "src_namespace")] {
        let v = vars.get(name);
        c.check(
            v.is_some_and(|v| {
                v["type"] == "query"
                    && v["includeAll"] == true
                    && v["allValue"] == ".*"
                    && v["query"]
                        .as_str()
                        .is_some_and(|q| q.starts_with("label_values(") && q.contains(label))
            }),
            || format!("dashboard variable {name}: want a label_values(..., {label}) query with All = .*"),
        );
    }

    let all = panels(dashboard);
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        c.check(ids.insert(p["id"].to_string()), || {
            format!("panel {title:?}: duplicate id {}", p["id"])
        });
        let kind = p["type"].as_str().unwrap_or("");
        c.check(matches!(kind, "timeseries" | "table" | "stat"), || {
            format!("panel {title:?}: type {kind:?}, want timeseries, table or stat")
        });
        c.check(p.get("gridPos").is_some(), || {
            format!("panel {title:?}: no gridPos")
        });
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        c.check(!targets.is_empty(), || format!("panel {title:?}: no query"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            c.check(!expr.trim().is_empty(), || {
                format!("panel {title:?}: an empty query")
            });
            // Range selectors follow the dashboard's interval: $__rate_interval (rates),
            // $__range (totals over the time picked).
            for window in expr.split('[').skip(1) {
                let window = window.split(']').next().unwrap_or("");
                c.check(window == "$__rate_interval" || window == "$__range", || {
                    format!("panel {title:?}: range [{window}], want $__rate_interval or $__range")
                });
            }
            c.check(!expr.contains("$datasource"), || {
                format!("panel {title:?}: the query mentions $datasource")
            });
            exprs.push_str(expr);
            exprs.push('\n');
        }
        if kind == "table" {
            c.check(
                targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("topk("))),
                || format!("table {title:?}: not bounded by topk"),
            );
        }
    }
    for metric in DASHBOARD_METRICS {
        c.check(exprs.contains(metric), || {
            format!("no dashboard panel shows {metric}")
        });
    }
    c.check(exprs.contains("$__rate_interval"), || {
        "no panel uses $__rate_interval".into()
    });
    c
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubectl kustomize deploy/` renders, put together without kubectl: the
    /// resources the kustomization lists, and the dashboard ConfigMap its generator makes.
    fn objects() -> Vec<Value> {
        let dir = deploy_dir();
        let kustomization: Value =
            parse_objects(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
                .unwrap()
                .remove(0);
        let mut objects = Vec::new();
        for file in kustomization["resources"].as_array().unwrap() {
            let text = std::fs::read_to_string(dir.join(file.as_str().unwrap())).unwrap();
            objects.extend(parse_objects(&text).unwrap());
        }
        let generator = &kustomization["configMapGenerator"][0];
        let file = generator["files"][0].as_str().unwrap();
        let key = Path::new(file).file_name().unwrap().to_str().unwrap();
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": generator["name"],
                "namespace": kustomization["namespace"],
                "labels": kustomization["generatorOptions"]["labels"],
            },
            "data": {key: std::fs::read_to_string(dir.join(file)).unwrap()},
        }));
        objects
    }

    fn problems(objects: &[Value]) -> Vec<String> {
        let dashboard = read_dashboard().unwrap();
        let mut c = policy(objects, &dashboard);
        c.merge(dashboard_checks(&dashboard));
        c.problems().to_vec()
    }

    fn mutated(pointer: &str, value: Value) -> Vec<String> {
        let mut objects = objects();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        // JSON pointer escapes: ~1 is '/', ~0 is '~'.
        let key = key.replace("~1", "/").replace("~0", "~");
        let (kind, parent) = parent.split_once(':').unwrap();
        let o = objects.iter_mut().find(|o| o["kind"] == kind).unwrap();
        let parent = o.pointer_mut(parent).unwrap();
        match parent {
            Value::Object(m) => {
                m.insert(key, value);
            }
            Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
            _ => panic!("{pointer}"),
        }
        problems(&objects)
    }

    #[test]
    fn the_manifests_follow_the_policy() {
        assert_eq!(problems(&objects()), Vec::<String>::new());
    }

    #[test]
    fn policy_violations_are_caught() {
        let sc = "DaemonSet:/spec/template/spec/containers/0/securityContext";
        for (pointer, value, expect) in [
            (format!("{sc}/privileged"), json!(true), "privileged"),
            (
                format!("{sc}/capabilities/add"),
                json!(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]),
                "capabilities.add",
            ),
            (
                format!("{sc}/capabilities/drop"),
                json!([]),
                "capabilities.drop",
            ),
            (
                format!("{sc}/readOnlyRootFilesystem"),
                json!(false),
                "readOnlyRootFilesystem",
            ),
            (
                "DaemonSet:/spec/template/spec/tolerations".into(),
                json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]),
                "control-plane",
            ),
            (
                "DaemonSet:/spec/template/spec/containers/0/readinessProbe/httpGet/path".into(),
                json!("/healthz"),
                "readinessProbe",
            ),
            (
                "ClusterRole:/rules/0/verbs".into(),
                json!(["get", "list", "watch", "create"]),
                "pods:create",
            ),
            (
                "ClusterRole:/rules/0/resources".into(),
                json!(["pods", "services", "namespaces", "secrets"]),
                "secrets",
            ),
            (
                "Service:/metadata/labels/app.kubernetes.io~1part-of".into(),
                json!("other"),
                "part-of",
            ),
            (
                "DaemonSet:/spec/template/spec/volumes".into(),
                json!([{"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}}]),
                "volumes",
            ),
        ] {
            let problems = mutated(&pointer, value);
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{pointer}: no problem mentions {expect:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_version_bump_needs_the_manifests_updated() {
        assert_eq!(
            image::tag(),
            format!("netprobe/probe-agent:{}", env!("CARGO_PKG_VERSION"))
        );
        // deploy/ left at another version than the workspace's: the image and every
        // version label are reported.
        let other = "netprobe/probe-agent:0.0.1";
        let problems = mutated(
            "DaemonSet:/spec/template/spec/containers/0/image",
            json!(other),
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("image:") && p.contains(other)),
            "{problems:?}"
        );
        for (pointer, whose) in [
            (
                "ConfigMap:/metadata/labels/app.kubernetes.io~1version",
                "ConfigMap netprobe-dashboard: label app.kubernetes.io/version",
            ),
            (
                "DaemonSet:/spec/template/metadata/labels/app.kubernetes.io~1version",
                "DaemonSet netprobe pod template: label app.kubernetes.io/version",
            ),
        ] {
            let problems = mutated(pointer, json!("0.0.1"));
            assert!(
                problems.iter().any(|p| p.starts_with(whose)),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn the_kind_cluster_is_what_the_readme_says() {
        let text = std::fs::read_to_string(kind_cluster_path()).unwrap();
        assert_eq!(kind_cluster_checks(&text).problems(), &[] as &[String]);
        for (from, to, expect) in [
            ("name: netprobe", "name: kind", "name"),
            (
                "  - role: worker\n  - role: worker",
                "  - role: worker",
                "node roles",
            ),
            (
                "  - role: control-plane",
                "  - role: control-plane\n  - role: control-plane",
                "node roles",
            ),
            (
                "kind.x-k8s.io/v1alpha4",
                "kind.x-k8s.io/v1alpha3",
                "apiVersion",
            ),
            ("kind: Cluster", "kind: Config", "kind"),
            (
                "kind: Cluster",
                "kind: Cluster\nnodeGroups: 2",
                "nodeGroups",
            ),
            (
                "  - role: control-plane",
                "  - role: control-plane\n    replicas: 3",
                "replicas",
            ),
            (
                "name: netprobe",
                "name: netprobe\nnetworking:\n  disableDefaultCNI: true",
                "disableDefaultCNI",
            ),
            (
                "name: netprobe",
                "name: netprobe\nnetworking:\n  kubeProxyMode: none",
                "kubeProxyMode",
            ),
            (
                "name: netprobe",
                "name: netprobe\nnetworking:\n  podSubnets: 10.0.0.0/16",
                "podSubnets",
            ),
            (
                "name: netprobe",
                "name: netprobe\n---\nkind: Cluster",
                "documents",
            ),
        ] {
            assert!(text.contains(from), "{from:?}");
            let problems = kind_cluster_checks(&text.replacen(from, to, 1))
                .problems()
                .to_vec();
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{to:?}: no problem mentions {expect:?}: {problems:?}"
            );
        }
        // Fields Kind has are fine.
        let with_more = text.replacen(
            "name: netprobe",
            "name: netprobe\nnetworking:\n  kubeProxyMode: ipvs\n  podSubnet: 10.244.0.0/16\nfeatureGates: {}",
            1,
        );
        assert_eq!(kind_cluster_checks(&with_more).problems(), &[] as &[String]);
        assert!(!kind_cluster_checks("nodes: [").problems().is_empty());
    }

    #[test]
    fn the_docs_name_this_version_and_the_kind_cluster() {
        let root = util::workspace_root();
        for doc in [root.join("README.md"), deploy_dir().join("README.md")] {
            let text = std::fs::read_to_string(&doc).unwrap();
            assert_eq!(
                doc_checks("doc", &text).problems(),
                &[] as &[String],
                "{}",
                doc.display()
            );
        }
        let tag = image::tag();
        let good = format!(
            "```sh\nkind create cluster --config deploy/kind/cluster.yaml   # named \"netprobe\"\n\
             kind load image-archive t.tar --name netprobe\n```\n\
             tagged `{tag}` or `netprobe/probe-agent:<version>`; `kind load image-archive` in prose\n"
        );
        assert_eq!(doc_checks("X", &good).problems(), &[] as &[String]);
        let bad = "```sh\nkind load image-archive t.tar\nkind load image-archive t.tar --name kind\n\
                   kind create cluster\n```\nrun netprobe/probe-agent:0.0.1, \
                   `kind load image-archive t.tar --name other`\n";
        let problems = doc_checks("X", bad).problems().to_vec();
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(
            problems[0].starts_with("X:2: `kind load` without --name"),
            "{problems:?}"
        );
        assert!(
            problems[3].contains("netprobe/probe-agent:0.0.1"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_literal_datasource_uid_is_caught() {
        let mut dashboard = read_dashboard().unwrap();
        dashboard["panels"][0]["datasource"] =
            json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"});
        let problems = dashboard_checks(&dashboard).problems().to_vec();
        assert!(
            problems.iter().any(|p| p.contains("P1809F7CD0C75ACF3")),
            "{problems:?}"
        );
        let mut dashboard = read_dashboard().unwrap();
        dashboard["panels"][1]["targets"][0]["expr"] = json!("rate(netprobe_packets_total[5m])");
        let problems = dashboard_checks(&dashboard).problems().to_vec();
        assert!(problems.iter().any(|p| p.contains("[5m]")), "{problems:?}");
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let any_no_schedule = [json!({"operator": "Exists", "effect": "NoSchedule"})];
        assert!(tolerated(&any_no_schedule, "a", "", "NoSchedule"));
        assert!(!tolerated(&any_no_schedule, "a", "", "NoExecute"));
        let keyed = [json!({"key": "a", "value": "x", "effect": "NoSchedule"})];
        assert!(tolerated(&keyed, "a", "x", "NoSchedule"));
        assert!(!tolerated(&keyed, "a", "y", "NoSchedule"));
        assert!(!tolerated(&keyed, "b", "x", "NoSchedule"));
    }

    #[test]
    fn dashboard_queries_have_their_variables_replaced() {
        let queries = dashboard_queries(&read_dashboard().unwrap()).unwrap();
        assert!(queries.len() >= 10, "{queries:?}");
        for q in &queries {
            assert!(!q.expr.contains('$'), "{q:?}");
        }
        let values: BTreeMap<String, String> = [("node".to_owned(), ".*".to_owned())].into();
        assert_eq!(
            substitute(r#"up{node=~"$node"} + up{node=~"${node}"}"#, &values).unwrap(),
            r#"up{node=~".*"} + up{node=~".*"}"#
        );
        assert!(substitute("up{x=\"$nope\"}", &values).is_err());
    }

    #[test]
    fn alert_rules_are_read_from_the_prometheusrule() {
        let objects = objects();
        let rules = alert_rules(find(&objects, "PrometheusRule", "netprobe").unwrap()).unwrap();
        assert_eq!(rules.len(), 9);
        assert!(rules.iter().all(|r| !r.expr.is_empty()));
    }
}
