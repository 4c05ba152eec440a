//! `cargo xtask check-monitoring` (root): the dashboard's queries and the alerts' expressions
//! against a real Prometheus that scrapes a real agent while the demo's incidents happen.
//!
//! Prometheus (Debian's) starts first, scraping every second an agent address that is
//! not up yet, with the PrometheusRule's groups as its rule file. Then the demo runs in
//! this process (`demo::run_then`): simulated node, agent, incidents, verdicts checked.
//! While the agent still serves, every dashboard query (variables as "All", 1-minute
//! intervals) and every alert expression is evaluated with /api/v1/query:
//!
//! - each dashboard query must be valid and return at least one series;
//! - each alert about a failure the demo plays must return its series (the timeout alert
//!   the checkout -> db:5432 TIMEOUT, ...), and Prometheus must have it firing;
//! - the alerts about the agent itself (events lost, down, not ready, attached to
//!   nothing) must NOT fire in this healthy run: their expression must be valid and
//!   return nothing, and the series it is built on must exist (that they do fire when
//!   they should is what `promtool test rules` checks, in `cargo xtask check-manifests`).
//!
//! Everything is stopped on the way out, failure or not: Prometheus killed (it also dies
//! with this process), the demo's agent stopped and its namespaces removed.

use std::{
    collections::BTreeSet,
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use xtask::exec;

use crate::{demo, manifests, toolchain, util};

/// What each alert should do while the demo's incidents are fresh.
enum Expect {
    /// It fires, with at least one series carrying these labels (`*` at the end of a
    /// value: a prefix).
    Fires(&'static [(&'static str, &'static str)]),
    /// A healthy run does not fire it: the expression returns nothing, and the series it
    /// is built on exists.
    Quiet(&'static str),
}

const ALERTS: &[(&str, Expect)] = &[
    (
        "NetprobeConnectionTimeouts",
        Expect::Fires(&[("dst_port", "5432")]),
    ),
    (
        "NetprobeConnectionsRefused",
        Expect::Fires(&[("dst_port", "9090")]),
    ),
    (
        "NetprobeServiceWithoutEndpoints",
        Expect::Fires(&[("dst_port", "80")]),
    ),
    (
        "NetprobeDNSNameNotFound",
        Expect::Fires(&[("qname", "paymnt-service.*")]),
    ),
    (
        "NetprobeDNSTimeouts",
        Expect::Fires(&[("qname", "payment-service.*")]),
    ),
    (
        "NetprobeEventsLost",
        Expect::Quiet("netprobe_events_lost_total"),
    ),
    ("NetprobeAgentDown", Expect::Quiet(r#"up{job="netprobe"}"#)),
    ("NetprobeAgentNotReady", Expect::Quiet("netprobe_ready")),
    (
        "NetprobeNoInterfacesAttached",
        Expect::Quiet("netprobe_attached_interfaces"),
    ),
];

/// The verdicts and DNS failure rcodes the demo's incidents produce: Prometheus must have
/// scraped all of them before anything is evaluated.
const VERDICTS: &[&str] = &[
    "OK",
    "TIMEOUT",
    "REFUSED",
    "UNREACHABLE",
    "NXDOMAIN",
    "DNS_TIMEOUT",
];
const DNS_RCODES: &[&str] = &["NXDOMAIN", "TIMEOUT"];

/// The `node` label the scrape config gives the agent (the ServiceMonitor's relabeling
/// does this in a cluster).
const NODE: &str = "demo-node";

pub fn run() -> Result<()> {
    util::require_root(
        "check-monitoring",
        "it runs the demo: network namespaces and eBPF programs",
    )?;
    toolchain::bootstrap()?;
    let prometheus = exec::find_tool("prometheus").context(
        "prometheus not found: install Debian's `prometheus` package (`cargo xtask bootstrap` \
         as root does)",
    )?;

    let dir = util::workspace_root()
        .join("target")
        .join("netprobe-monitoring");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;

    let rule_file = manifests::deploy_dir().join("prometheusrule.yaml");
    let objects = manifests::parse_objects(&std::fs::read_to_string(&rule_file)?)
        .with_context(|| format!("reading {}", rule_file.display()))?;
    let rule = manifests::find(&objects, "PrometheusRule", "netprobe")?;
    let rules_path = dir.join("netprobe-rules.yaml");
    manifests::write_rule_groups(rule, &rules_path)?;
    let alerts = manifests::alert_rules(rule)?;
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    let expected: BTreeSet<&str> = ALERTS.iter().map(|(n, _)| *n).collect();
    ensure!(
        names == expected,
        "the alerts in {} are {names:?} but this check knows {expected:?}: say in ALERTS \
         (xtask/src/monitoring.rs) what each new alert does in the demo",
        rule_file.display()
    );
    let queries = manifests::dashboard_queries(&manifests::read_dashboard()?)?;

    let agent_addr = free_loopback_addr()?;
    let prometheus_addr = free_loopback_addr()?;
    let config = dir.join("prometheus.yml");
    let config_text = json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules_path],
        "scrape_configs": [{
            // The job name a ServiceMonitor gives: the Service's name.
            "job_name": "netprobe",
            "static_configs": [{"targets": [agent_addr.to_string()], "labels": {"node": NODE}}],
        }],
    });
    std::fs::write(&config, serde_json::to_string_pretty(&config_text)?)?;

    println!(
        "== Prometheus: scraping {agent_addr} every second, rules from {}",
        rule_file.display()
    );
    let mut prom = Prometheus::start(&prometheus, &dir, &config, prometheus_addr)?;
    prom.wait_ready()?;
    println!(
        "   ready on http://{prometheus_addr} (its log: {})",
        prom.log.display()
    );

    let mut evaluate = |alive: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        evaluate(&mut prom, &alerts, &queries, alive)
    };
    demo::run_then(demo::DemoArgs::no_wait(agent_addr), Some(&mut evaluate))
}

fn evaluate(
    prom: &mut Prometheus,
    alerts: &[manifests::AlertRule],
    queries: &[manifests::Query],
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    println!("\n== Waiting for Prometheus to have every incident's series");
    wait_for_incidents(prom, alive)?;

    let mut problems = Vec::new();
    println!("\n== Dashboard queries (variables: All; $__rate_interval 1m, $__range 5m)\n");
    for q in queries {
        match prom.query(&q.expr) {
            Ok(series) => {
                println!("  {:>3} series  {}", series.len(), q.what);
                if series.is_empty() {
                    problems.push(format!("{}: no series: {}", q.what, q.expr));
                }
            }
            Err(e) => {
                println!("  ERROR       {}: {e:#}", q.what);
                problems.push(format!("{}: {e:#}", q.what));
            }
        }
    }
    let nodes = prom.label_values("node", "netprobe_attached_interfaces")?;
    println!(
        "  {:>3} values  variable node: label_values(netprobe_attached_interfaces, node) = {nodes:?}",
        nodes.len()
    );
    if !nodes.iter().any(|n| n == NODE) {
        problems.push(format!("variable node does not list {NODE}: {nodes:?}"));
    }
    let namespaces = prom.label_values("src_namespace", "netprobe_verdicts_total")?;
    println!(
        "  {:>3} values  variable namespace: label_values(netprobe_verdicts_total, src_namespace) = {namespaces:?}",
        namespaces.len()
    );

    println!("\n== Alert expressions\n");
    for alert in alerts {
        let expect = &ALERTS
            .iter()
            .find(|(n, _)| *n == alert.name)
            .expect("checked in run")
            .1;
        let series = match prom.query(&alert.expr) {
            Ok(series) => series,
            Err(e) => {
                println!("  ERROR       {}: {e:#}", alert.name);
                problems.push(format!("alert {}: {e:#}", alert.name));
                continue;
            }
        };
        match expect {
            Expect::Fires(labels) => {
                println!("  {:>3} series  alert {} (fires)", series.len(), alert.name);
                let matching = series.iter().any(|s| {
                    labels.iter().all(|(k, want)| {
                        let got = s["metric"][k].as_str().unwrap_or("");
                        match want.strip_suffix('*') {
                            Some(prefix) => got.starts_with(prefix),
                            None => got == *want,
                        }
                    })
                });
                if !matching {
                    problems.push(format!(
                        "alert {}: want a series with {labels:?}, got {}",
                        alert.name,
                        Value::Array(series.clone())
                    ));
                }
            }
            Expect::Quiet(selector) => {
                let base = prom.query(selector);
                let base_len = base.as_ref().map_or(0, Vec::len);
                println!(
                    "  {:>3} series  alert {} (quiet in a healthy run); {base_len} series of {selector}",
                    series.len(),
                    alert.name
                );
                if !series.is_empty() {
                    problems.push(format!(
                        "alert {} fires in a healthy run: {}",
                        alert.name,
                        Value::Array(series)
                    ));
                }
                match base {
                    Ok(b) if !b.is_empty() => {}
                    Ok(_) => {
                        problems.push(format!("alert {}: no series of {selector}", alert.name))
                    }
                    Err(e) => problems.push(format!("alert {}: {selector}: {e:#}", alert.name)),
                }
            }
        }
    }

    // Prometheus itself evaluated the same rules: all healthy, the right ones firing.
    let (rules, active) = prom.rule_states()?;
    println!("\n== What Prometheus' own rule evaluation fires (summaries as rendered)\n");
    for r in &rules {
        for summary in &r.summaries {
            println!("  {}: {summary}", r.name);
        }
        if r.health != "ok" {
            problems.push(format!(
                "Prometheus evaluates {}: {} {}",
                r.name, r.health, r.error
            ));
        }
    }
    let firing: BTreeSet<&str> = ALERTS
        .iter()
        .filter(|(_, e)| matches!(e, Expect::Fires(_)))
        .map(|(n, _)| *n)
        .collect();
    let active: BTreeSet<&str> = active.iter().map(String::as_str).collect();
    println!(
        "\n  {} rules evaluated, all healthy: {}; alerts active: {active:?}",
        rules.len(),
        rules.iter().all(|r| r.health == "ok")
    );
    if active != firing {
        problems.push(format!(
            "alerts active in Prometheus: {active:?}, want exactly {firing:?}"
        ));
    }
    alive()?;

    println!(
        "\nmonitoring: {} dashboard queries and {} alert expressions evaluated",
        queries.len(),
        alerts.len()
    );
    if !problems.is_empty() {
        for p in &problems {
            println!("  FAIL {p}");
        }
        bail!(
            "{} problem(s) with the dashboard or the alerts (see above; Prometheus' log: {})",
            problems.len(),
            prom.log.display()
        );
    }
    Ok(())
}

/// Waits until Prometheus has scraped every verdict and DNS failure the incidents made,
/// then a few more scrapes and rule evaluations.
fn wait_for_incidents(prom: &mut Prometheus, alive: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        alive()?;
        prom.ensure_alive()?;
        let verdicts = prom.label_set("verdict", "netprobe_verdicts_total")?;
        let rcodes = prom.label_set("rcode", "netprobe_dns_failures_total")?;
        let missing: Vec<String> = VERDICTS
            .iter()
            .filter(|v| !verdicts.contains(**v))
            .map(|v| format!("netprobe_verdicts_total{{verdict=\"{v}\"}}"))
            .chain(
                DNS_RCODES
                    .iter()
                    .filter(|r| !rcodes.contains(**r))
                    .map(|r| format!("netprobe_dns_failures_total{{rcode=\"{r}\"}}")),
            )
            .collect();
        if missing.is_empty() {
            println!("   all there: verdicts {verdicts:?}, DNS failures {rcodes:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after 60 s Prometheus still has no {} (it has verdicts {verdicts:?}, DNS \
                 failures {rcodes:?}); its log: {}",
                missing.join(", "),
                prom.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Rates need two samples in their window and the rules an evaluation after the data.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        alive()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// A loopback address with a free port (free when asked: good enough for a test).
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

/// Percent-encodes a query-string value (RFC 3986: everything but unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Debian's prometheus, started as a child with its data in a temporary directory; killed
/// on drop (and by the kernel if this process dies first).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, config: &Path, addr: SocketAddr) -> Result<Prometheus> {
        let log = dir.join("prometheus.log");
        let log_file = File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Own process group: Ctrl-C reaches only xtask, which stops it in order.
            .process_group(0);
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exec::describe(&cmd)))?;
        Ok(Prometheus { child, addr, log })
    }

    fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "prometheus exited ({status}); the end of {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.ensure_alive()?;
            if let Ok((200, _)) = demo::http_get(self.addr, "/-/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready after 30 s; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GETs an API path; the `data` of a successful answer.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = demo::http_get(self.addr, path)?;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {status}, not JSON: {body}"))?;
        ensure!(
            status == 200 && json["status"] == "success",
            "HTTP {status}: {} {}",
            json["errorType"].as_str().unwrap_or(""),
            json["error"].as_str().unwrap_or(&body)
        );
        Ok(json["data"].clone())
    }

    /// Evaluates `expr` now (/api/v1/query); the series of the instant vector.
    fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        ensure!(
            data["resultType"] == "vector",
            "a {} instead of an instant vector",
            data["resultType"]
        );
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Values of `label` on the series of `metric` (what Grafana's label_values() lists).
    fn label_values(&self, label: &str, metric: &str) -> Result<Vec<String>> {
        let data = self.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode(metric)
        ))?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Like [`Self::label_values`], as a set (the empty value included: /api/v1/query).
    fn label_set(&self, label: &str, metric: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .query(&format!("count by ({label}) ({metric})"))?
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
            .collect())
    }

    /// Every rule's state, and the alerts pending or firing.
    fn rule_states(&self) -> Result<(Vec<RuleState>, BTreeSet<String>)> {
        let data = self.api("/api/v1/rules")?;
        let mut rules = Vec::new();
        let mut active = BTreeSet::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for r in group["rules"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or("?").to_owned();
                if r["state"] == "firing" || r["state"] == "pending" {
                    active.insert(name.clone());
                }
                let summaries = r["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["annotations"]["summary"].as_str().map(str::to_owned))
                    .collect();
                rules.push(RuleState {
                    name,
                    summaries,
                    health: r["health"].as_str().unwrap_or("?").to_owned(),
                    error: r["lastError"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
        Ok((rules, active))
    }
}

/// How Prometheus' own evaluation of a rule went (/api/v1/rules).
struct RuleState {
    name: String,
    /// The rendered summary of each of its active alerts.
    summaries: Vec<String>,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    health: String,
    error: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        exec::terminate(&mut self.child, Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            url_encode(r#"sum by (a) (x{b=~".*"}[1m])"#),
            "sum%20by%20%28a%29%20%28x%7Bb%3D~%22.%2A%22%7D%5B1m%5D%29"
        );
    }

    #[test]
    fn every_alert_in_the_manifests_has_an_expectation() {
        let text =
            std::fs::read_to_string(manifests::deploy_dir().join("prometheusrule.yaml")).unwrap();
        let objects = manifests::parse_objects(&text).unwrap();
        let rule = manifests::find(&objects, "PrometheusRule", "netprobe").unwrap();
        let names: BTreeSet<String> = manifests::alert_rules(rule)
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        let known: BTreeSet<String> = ALERTS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, known);
    }
}
