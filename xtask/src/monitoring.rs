//! `cargo xtask check-monitoring` (root): the dashboard's queries and the alerts' expressions
//! against a real Prometheus that scrapes real agents while incidents happen.
//!
//! Prometheus (Debian's) scrapes, every second, four targets of job `netprobe`, each with
//! its own `node` label (as the ServiceMonitor gives each node's agent in a cluster):
//!
//! - `demo-node`: the demo's agent. The demo runs in this process (`demo::run_then`):
//!   simulated node, agent, incidents, verdicts checked;
//! - `lossy-node`: an agent on a second simulated node that really loses events: a SYN
//!   flood (hping3) between two of its pods into a port the node drops, while the agent
//!   is stopped for a few seconds (SIGSTOP, a CPU-starved agent), so that the kernel's
//!   ring buffer overflows;
//! - `bare-node`: an agent on that node whose `--interfaces` glob matches nothing;
//! - `down-node`: an address where nothing listens.
//!
//! While the demo's agent still serves, every dashboard query (variables as "All", 1-minute
//! intervals) and every alert expression is evaluated with /api/v1/query:
//!
//! - each dashboard query must be valid and return at least one series;
//! - each alert about a failure the demo plays must return its series for `demo-node`
//!   (the timeout alert the checkout -> db:5432 TIMEOUT, ...), and Prometheus must have it
//!   firing there;
//! - each alert about the agent itself that is played (events lost, down, attached to
//!   nothing) must return a series for its sick target and none for `demo-node`, and
//!   Prometheus must have it pending for that target (their `for:` is 5 to 15 minutes,
//!   kept as shipped: pending is what a short run sees);
//! - the latency panels (p50, p99 of `netprobe_tcp_handshake_seconds` and
//!   `netprobe_dns_response_seconds` per destination) must have a value, not NaN: steady
//!   traffic between two pods of the lossy node (a connection and a DNS query every
//!   200 ms, `traffic`) keeps their one-minute rates fresh; what the demo's agent timed
//!   during its incidents is printed;
//! - `promtool check metrics` on the live `/metrics` (as curl gets it: the text format) of
//!   the demo's agent and of the lossy one must be clean;
//! - `NetprobeAgentNotReady` is not played: an agent that serves `/metrics` has its
//!   programs loaded and attached (it loads them before serving and exits if loading
//!   fails; `netprobe_ready` is 0 only in the moment before attaching and while shutting
//!   down). Its expression must be valid, return nothing, and its series must exist.
//!
//! Everything is stopped on the way out, failure or not: Prometheus killed (it also dies
//! with this process), the agents stopped and their namespaces removed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lab::{self, Node, Pod, Proto, exec};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

use crate::{build, demo, manifests, soak, toolchain, util};

mod latency;
mod prometheus;
mod traffic;

use prometheus::Prometheus;

/// What each alert should do while the incidents are fresh.
enum Expect {
    /// It fires for the demo's agent (`node` demo-node), with at least one series
    /// carrying these labels (`*` at the end of a value: a prefix).
    Fires(&'static [(&'static str, &'static str)]),
    /// An incident of the agent itself, played on its own target (this `node` label): the
    /// expression returns series for that node and none for demo-node, where the series
    /// it is built on (the selector) exist; Prometheus has it pending (or firing) there.
    Played {
        node: &'static str,
        selector: &'static str,
    },
    /// Not played: the expression returns nothing, and the series it is built on exists.
    Quiet(&'static str),
}

/// The `node` labels of the targets played sick beside the demo's agent.
const NODE_LOSING: &str = "lossy-node";
const NODE_BARE: &str = "bare-node";
const NODE_DOWN: &str = "down-node";

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
        Expect::Played {
            node: NODE_LOSING,
            selector: "netprobe_events_lost_total",
        },
    ),
    (
        "NetprobeAgentDown",
        Expect::Played {
            node: NODE_DOWN,
            selector: r#"up{job="netprobe"}"#,
        },
    ),
    // No agent can be kept serving and not ready (see the module's documentation).
    ("NetprobeAgentNotReady", Expect::Quiet("netprobe_ready")),
    (
        "NetprobeNoInterfacesAttached",
        Expect::Played {
            node: NODE_BARE,
            selector: "netprobe_attached_interfaces",
        },
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

/// The `node` label the scrape config gives the demo's agent (the ServiceMonitor's
/// relabeling does this in a cluster).
const NODE: &str = "demo-node";
/// The port the SYN flood goes to on the lossy node (its firewall drops it).
const FLOOD_PORT: u16 = 9999;
/// How long the lossy node's agent is stopped while the flood goes on.
const STALL: Duration = Duration::from_secs(3);

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

    let rule_file = manifests::combinations::rule_path();
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

    println!("== The agents played sick (beside the demo's, each with its own node label)");
    let mut sick = SickAgents::start(&dir)?;

    let agent_addr = free_loopback_addr()?;
    let prometheus_addr = free_loopback_addr()?;
    let config = dir.join("prometheus.yml");
    let targets: Vec<(SocketAddr, &str)> = [(agent_addr, NODE)]
        .into_iter()
        .chain(sick.targets())
        .collect();
    let config_text = json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules_path],
        "scrape_configs": [{
            // The job name a ServiceMonitor gives: the Service's name.
            "job_name": "netprobe",
            "static_configs": targets.iter().map(|(addr, node)| json!({
                "targets": [addr.to_string()],
                "labels": {"node": node},
            })).collect::<Vec<_>>(),
        }],
    });
    std::fs::write(&config, serde_json::to_string_pretty(&config_text)?)?;

    println!(
        "\n== Prometheus: scraping {} every second, rules from {}",
        targets
            .iter()
            .map(|(addr, node)| format!("{addr} ({node})"))
            .collect::<Vec<_>>()
            .join(", "),
        rule_file.display()
    );
    let mut prom = Prometheus::start(&prometheus, &dir, &config, prometheus_addr)?;
    prom.wait_ready()?;
    println!(
        "   ready on http://{prometheus_addr} (its log: {})",
        prom.log.display()
    );

    sick.play(&mut prom)?;

    // For the latency panels: handshakes and DNS exchanges the lossy node's agent times
    // while everything is evaluated (dropped before the node).
    let traffic = traffic::SteadyTraffic::start(&sick.flooder, &sick.victim)?;
    println!(
        "   {NODE_LOSING}: steady traffic {} -> {}:{} (TCP) and :53 (DNS), every 200 ms",
        sick.flooder.ipv4,
        sick.victim.ipv4,
        traffic::TCP_PORT
    );
    let agents: Vec<(SocketAddr, &str)> =
        vec![(agent_addr, NODE), (sick.losing.listen, NODE_LOSING)];

    let mut evaluate = |alive: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let mut alive = || -> Result<()> {
            alive()?;
            sick.ensure_alive()
        };
        evaluate(
            &mut prom,
            &Evaluation {
                alerts: &alerts,
                queries: &queries,
                agents: &agents,
                traffic: &traffic,
                dir: &dir,
            },
            &mut alive,
        )
    };
    demo::run_then(demo::DemoArgs::no_wait(agent_addr), Some(&mut evaluate))
}

/// The agents of the agent-health incidents, on a second simulated node: one that loses
/// events, one attached to nothing, and an address where no agent answers.
struct SickAgents {
    // Dropped in this order: the agents, then their node.
    losing: lab::Agent,
    bare: lab::Agent,
    down: SocketAddr,
    flooder: Pod,
    victim: Pod,
    dir: PathBuf,
    _node: Node,
}

impl SickAgents {
    fn start(dir: &Path) -> Result<SickAgents> {
        let bin = build::build_agent()?;
        let mut node = Node::new(&lab::unique_prefix("mon"))?;
        let flooder = node.add_pod("flooder", "load", 2)?;
        let victim = node.add_pod("victim", "load", 3)?;
        // A "NetworkPolicy": every SYN of the flood times out.
        node.drop_traffic(
            Proto::Tcp,
            Some(flooder.ipv4.into()),
            Some(victim.ipv4.into()),
            Some(FLOOD_PORT),
        )?;
        let losing = soak::start_agent(
            &bin,
            &node,
            &dir.join("lossy-agent.log"),
            &["--node-name", NODE_LOSING],
        )?;
        let bare = soak::start_agent(
            &bin,
            &node,
            &dir.join("bare-agent.log"),
            // A CNI whose host-side interfaces the globs do not name.
            &["--node-name", NODE_BARE, "--interfaces", "cni-nothing*"],
        )?;
        let down = free_loopback_addr()?;
        println!(
            "   {NODE_LOSING}: agent on {} (node {}, pods {} and {}), its log {}",
            losing.listen,
            node.netns(),
            flooder.ipv4,
            victim.ipv4,
            dir.join("lossy-agent.log").display()
        );
        println!(
            "   {NODE_BARE}: agent on {} with --interfaces cni-nothing* (same node)",
            bare.listen
        );
        println!("   {NODE_DOWN}: {down}, where nothing listens");
        Ok(SickAgents {
            losing,
            bare,
            down,
            flooder,
            victim,
            dir: dir.to_owned(),
            _node: node,
        })
    }

    fn targets(&self) -> [(SocketAddr, &'static str); 3] {
        [
            (self.losing.listen, NODE_LOSING),
            (self.bare.listen, NODE_BARE),
            (self.down, NODE_DOWN),
        ]
    }

    fn ensure_alive(&mut self) -> Result<()> {
        self.losing
            .ensure_alive()
            .with_context(|| format!("the {NODE_LOSING} agent"))?;
        self.bare
            .ensure_alive()
            .with_context(|| format!("the {NODE_BARE} agent"))
    }

    /// Once Prometheus has scraped the agents healthy: the lossy node's agent loses events,
    /// for real. A SYN flood between two of its pods into the dropped port, and the agent
    /// stopped meanwhile (SIGSTOP: a CPU-starved agent, what the alert tells to look for)
    /// so that nothing reads the ring buffer and the kernel drops what does not fit; then
    /// it runs on, reads the kernel's loss counter and reports it.
    fn play(&mut self, prom: &mut Prometheus) -> Result<()> {
        let lost_in_prometheus =
            format!("sum(netprobe_events_lost_total{{node=\"{NODE_LOSING}\"}})");
        prom.wait_for(
            "the sick targets scraped (lossy and bare up, down not) and no events lost yet",
            Duration::from_secs(30),
            &mut || self.ensure_alive(),
            |prom| {
                let up = prom.query(r#"up{job="netprobe"}"#)?;
                let up_of = |node: &str| {
                    up.iter()
                        .find(|s| s["metric"]["node"] == node)
                        .and_then(|s| s["value"][1].as_str().map(str::to_owned))
                };
                Ok(up_of(NODE_LOSING).as_deref() == Some("1")
                    && up_of(NODE_BARE).as_deref() == Some("1")
                    && up_of(NODE_DOWN).as_deref() == Some("0")
                    && prom.scalar(&lost_in_prometheus)? == Some(0.0))
            },
        )?;

        let flood = soak::SynFlood::start(&self.flooder, self.victim.ipv4, FLOOD_PORT, &self.dir)?;
        std::thread::sleep(Duration::from_millis(500));
        let pid = self.losing.pid();
        kill(pid, Signal::SIGSTOP).context("stopping the lossy agent")?;
        std::thread::sleep(STALL);
        // Nothing between the two signals can fail: the agent is never left stopped.
        let resumed = kill(pid, Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(500));
        let sent = flood.stop()?;
        resumed.context("resuming the lossy agent")?;

        // The agent reads the kernel's counters every second.
        let deadline = Instant::now() + Duration::from_secs(10);
        let samples = loop {
            self.ensure_alive()?;
            let samples = self.losing.samples()?;
            if samples.sum("netprobe_events_lost_total") > 0.0 || Instant::now() > deadline {
                break samples;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let lost = samples.sum("netprobe_events_lost_total");
        let emitted = samples.sum("netprobe_kernel_events_total");
        let lost_to = |source: &str| {
            samples
                .value("netprobe_events_lost_total", &[("source", source)])
                .unwrap_or_default()
        };
        println!(
            "   {NODE_LOSING}: hping3 sent {} SYNs to {}:{FLOOD_PORT} (dropped) while its agent \
             was stopped {} s: the kernel emitted {emitted:.0} events, {lost:.0} lost ({:.0} to \
             the full ring buffer, {:.0} to the agent's full queue)",
            sent.map_or("?".into(), |n| n.to_string()),
            self.victim.ipv4,
            STALL.as_secs(),
            lost_to("kernel"),
            lost_to("agent"),
        );
        ensure!(
            lost > 0.0,
            "the {NODE_LOSING} agent lost no events (the kernel emitted {emitted:.0}): the flood \
             did not fill its ring buffer"
        );
        prom.wait_for(
            "Prometheus to scrape the lost events",
            Duration::from_secs(30),
            &mut || self.ensure_alive(),
            |prom| Ok(prom.scalar(&lost_in_prometheus)?.is_some_and(|v| v > 0.0)),
        )?;
        Ok(())
    }
}

/// What [`evaluate`] checks, and with what.
struct Evaluation<'a> {
    alerts: &'a [manifests::AlertRule],
    queries: &'a [manifests::Query],
    /// The agents whose `/metrics` promtool checks, with their `node` labels.
    agents: &'a [(SocketAddr, &'a str)],
    traffic: &'a traffic::SteadyTraffic,
    dir: &'a Path,
}

fn evaluate(
    prom: &mut Prometheus,
    e: &Evaluation,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let (alerts, queries) = (e.alerts, e.queries);
    println!("\n== Waiting for Prometheus to have every incident's series");
    wait_for_incidents(prom, alive)?;
    latency::wait_for_fresh_timings(prom, NODE_LOSING, e.traffic, alive)?;

    let mut problems = latency::promtool_check_metrics(e.agents, e.dir)?;
    latency::print_demo_timings(prom)?;
    println!("\n== Dashboard queries (variables: All; $__rate_interval 1m, $__range 5m)\n");
    for q in queries {
        match prom.query(&q.expr) {
            Ok(series) => {
                println!("  {:>3} series  {}", series.len(), q.what);
                if series.is_empty() {
                    problems.push(format!("{}: no series: {}", q.what, q.expr));
                } else if latency::is_latency(q) {
                    problems.extend(latency::panel_problems(q, &series));
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
    for node in [NODE, NODE_LOSING, NODE_BARE] {
        if !nodes.iter().any(|n| n == node) {
            problems.push(format!("variable node does not list {node}: {nodes:?}"));
        }
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
        let on = |node: &str| -> Vec<&Value> {
            series
                .iter()
                .filter(|s| s["metric"]["node"] == node)
                .collect()
        };
        match expect {
            Expect::Fires(labels) => {
                println!(
                    "  {:>3} series  alert {} (fires; {} for {NODE})",
                    series.len(),
                    alert.name,
                    on(NODE).len()
                );
                let matching = on(NODE).iter().any(|s| {
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
                        "alert {}: want a series for {NODE} with {labels:?}, got {}",
                        alert.name,
                        Value::Array(series.clone())
                    ));
                }
            }
            Expect::Played { node, selector } => {
                let there = on(node);
                let values: Vec<&str> = there
                    .iter()
                    .filter_map(|s| s["value"][1].as_str())
                    .collect();
                let healthy = on(NODE).len();
                let base = prom.query(&for_node(selector, NODE));
                let base_len = base.as_ref().map_or(0, Vec::len);
                println!(
                    "  {:>3} series  alert {} (played on {node}): {} there, value {values:?}; \
                     {healthy} for {NODE}, which has {base_len} series of {selector}",
                    series.len(),
                    alert.name,
                    there.len()
                );
                if there.is_empty() {
                    problems.push(format!(
                        "alert {}: no series for {node}, where it was played: {}",
                        alert.name,
                        Value::Array(series.clone())
                    ));
                }
                if healthy > 0 {
                    problems.push(format!(
                        "alert {} has a series for the healthy {NODE}: {}",
                        alert.name,
                        Value::Array(series.clone())
                    ));
                }
                match base {
                    Ok(b) if !b.is_empty() => {}
                    Ok(_) => problems.push(format!(
                        "alert {}: no series of {selector} for {NODE}",
                        alert.name
                    )),
                    Err(e) => problems.push(format!("alert {}: {selector}: {e:#}", alert.name)),
                }
            }
            Expect::Quiet(selector) => {
                let base = prom.query(selector);
                let base_len = base.as_ref().map_or(0, Vec::len);
                println!(
                    "  {:>3} series  alert {} (not played: quiet); {base_len} series of {selector}",
                    series.len(),
                    alert.name
                );
                if !series.is_empty() {
                    problems.push(format!(
                        "alert {} fires though nothing played it: {}",
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

    // Prometheus itself evaluated the same rules: all healthy, each alert active where
    // its incident was played and nowhere else it should not be.
    let rules = prom.rule_states()?;
    println!("\n== What Prometheus' own rule evaluation has active (summaries as rendered)\n");
    for r in &rules {
        for a in &r.alerts {
            println!("  {} {}: {}", r.name, a.state, a.summary);
        }
        if r.health != "ok" {
            problems.push(format!(
                "Prometheus evaluates {}: {} {}",
                r.name, r.health, r.error
            ));
        }
    }
    println!();
    for (name, expect) in ALERTS {
        let Some(r) = rules.iter().find(|r| r.name == *name) else {
            problems.push(format!("Prometheus has no rule {name}"));
            continue;
        };
        let states = |node: &str| -> BTreeSet<&str> {
            r.alerts
                .iter()
                .filter(|a| a.node == node)
                .map(|a| a.state.as_str())
                .collect()
        };
        let (ok, want) = match expect {
            Expect::Fires(_) => (
                states(NODE).contains("firing"),
                format!("firing for {NODE}"),
            ),
            Expect::Played { node, .. } => (
                !states(node).is_empty() && states(NODE).is_empty(),
                format!("pending or firing for {node}, nothing for {NODE}"),
            ),
            Expect::Quiet(_) => (r.alerts.is_empty(), "inactive".to_owned()),
        };
        let mut counted: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for a in &r.alerts {
            *counted
                .entry((a.state.as_str(), a.node.as_str()))
                .or_default() += 1;
        }
        let now: Vec<String> = counted
            .iter()
            .map(|((state, node), n)| format!("{n} {state} for {node}"))
            .collect();
        let now = if now.is_empty() {
            "inactive".to_owned()
        } else {
            now.join(", ")
        };
        println!(
            "  {} {name}: {now} (for: {})",
            if ok { "ok  " } else { "FAIL" },
            r.for_
        );
        if !ok {
            problems.push(format!("Prometheus has {name} {now}, want {want}"));
        }
    }
    println!(
        "\n  {} rules evaluated, all healthy: {}",
        rules.len(),
        rules.iter().all(|r| r.health == "ok")
    );
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
        // The demo's: the lossy node has TIMEOUT verdicts of its own (its flood).
        let verdicts = prom.label_set("verdict", &for_node("netprobe_verdicts_total", NODE))?;
        let rcodes = prom.label_set("rcode", &for_node("netprobe_dns_failures_total", NODE))?;
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
    // The incidents of the agents played sick: Prometheus' evaluation has them active.
    prom.wait_for(
        "the played agent-health alerts pending",
        Duration::from_secs(30),
        alive,
        |prom| {
            let rules = prom.rule_states()?;
            Ok(ALERTS.iter().all(|(name, expect)| match expect {
                Expect::Played { node, .. } => rules
                    .iter()
                    .any(|r| r.name == *name && r.alerts.iter().any(|a| a.node == *node)),
                _ => true,
            }))
        },
    )?;
    // Rates need two samples in their window and the rules an evaluation after the data.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        alive()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `selector` restricted to one `node` label: `up{job="netprobe"}` ->
/// `up{job="netprobe",node="demo-node"}`.
fn for_node(selector: &str, node: &str) -> String {
    match selector.strip_suffix('}') {
        Some(open) => format!("{open},node=\"{node}\"}}"),
        None => format!("{selector}{{node=\"{node}\"}}"),
    }
}

/// A loopback address with a free port (free when asked: good enough for a test).
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_restricted_to_a_node() {
        assert_eq!(
            for_node(r#"up{job="netprobe"}"#, NODE),
            r#"up{job="netprobe",node="demo-node"}"#
        );
        assert_eq!(
            for_node("netprobe_ready", NODE_BARE),
            r#"netprobe_ready{node="bare-node"}"#
        );
    }

    #[test]
    fn every_alert_in_the_manifests_has_an_expectation() {
        let text = std::fs::read_to_string(manifests::combinations::rule_path()).unwrap();
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
