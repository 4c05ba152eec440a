//! The latency panels (p50 and p99 of handshakes and DNS exchanges per destination) and the
//! agents' `/metrics` as any client gets it, checked against the real Prometheus and the
//! real agents of `cargo xtask check-monitoring`.

use std::{
    fs::File,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use lab::exec;
use serde_json::Value;

use super::{NODE, Prometheus, traffic::SteadyTraffic};
use crate::{demo, manifests};

/// The histograms behind the latency panels.
const HISTOGRAMS: &[&str] = &[
    "netprobe_tcp_handshake_seconds",
    "netprobe_dns_response_seconds",
];

/// Whether a dashboard query is a latency panel's.
pub fn is_latency(q: &manifests::Query) -> bool {
    q.expr.contains("histogram_quantile(")
}

fn finite(v: &Value) -> Option<f64> {
    v.as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// The destination a series of a latency panel is about.
fn destination(s: &Value) -> String {
    let m = &s["metric"];
    let label = |k: &str| m[k].as_str().unwrap_or("").to_owned();
    // As the panels' legend says it.
    format!(
        "{}/{} → {}:{}",
        label("dst_namespace"),
        label("dst_service"),
        label("dst_workload"),
        label("dst_port")
    )
}

/// Waits until the latency panels have something to show on `node` (the steady traffic's):
/// a quantile of each histogram's rate over the last minute that is a number.
pub fn wait_for_fresh_timings(
    prom: &mut Prometheus,
    node: &str,
    traffic: &SteadyTraffic,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    prom.wait_for(
        &format!("fresh handshake and DNS timings from {node}"),
        Duration::from_secs(60),
        alive,
        |prom| {
            for h in HISTOGRAMS {
                let q = format!(
                    "histogram_quantile(0.5, sum by (le) (rate({h}_bucket{{node=\"{node}\"}}[1m])))"
                );
                let series = prom.query(&q)?;
                if !series.iter().any(|s| finite(&s["value"][1]).is_some()) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let (connections, answers) = traffic.done();
    println!("   the steady traffic so far: {connections} connections, {answers} DNS answers");
    Ok(())
}

/// A latency panel's query, evaluated now: at least one series must be a number (a
/// quantile of no observations is NaN, which Grafana shows as nothing). Prints each.
pub fn panel_problems(q: &manifests::Query, series: &[Value]) -> Vec<String> {
    let mut values: Vec<(String, f64)> = series
        .iter()
        .filter_map(|s| Some((destination(s), finite(&s["value"][1])?)))
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    for (dst, v) in &values {
        println!("               {dst}: {:.3} ms", v * 1000.0);
    }
    if values.is_empty() {
        vec![format!(
            "{}: no series with a value (all NaN: no timing in the last minute): {}",
            q.what, q.expr
        )]
    } else {
        vec![]
    }
}

/// What the demo's agent timed since it started, per destination: printed, not required
/// (its incidents are over by now, and a destination it connected to once has a series
/// born with its count, whose rate stays 0: no quantile of a rate).
pub fn print_demo_timings(prom: &Prometheus) -> Result<()> {
    println!("\n== What the demo's agent timed since it started (p50, p99 of the whole counts)\n");
    for h in HISTOGRAMS {
        let by = "le, dst_namespace, dst_service, dst_workload, dst_port";
        let selector = format!("{h}_bucket{{node=\"{NODE}\"}}");
        let count = prom.query(&format!(
            "sum by (dst_namespace, dst_service, dst_workload, dst_port) ({h}_count{{node=\"{NODE}\"}})"
        ))?;
        let p50 = prom.query(&format!(
            "histogram_quantile(0.5, sum by ({by}) ({selector}))"
        ))?;
        let p99 = prom.query(&format!(
            "histogram_quantile(0.99, sum by ({by}) ({selector}))"
        ))?;
        let value_of = |series: &[Value], dst: &str| {
            series
                .iter()
                .find(|s| destination(s) == dst)
                .and_then(|s| finite(&s["value"][1]))
        };
        for s in &count {
            let dst = destination(s);
            let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.3} ms", v * 1000.0));
            println!(
                "  {h}: {dst}: {} timed, p50 {}, p99 {}",
                s["value"][1].as_str().unwrap_or("?"),
                ms(value_of(&p50, &dst)),
                ms(value_of(&p99, &dst))
            );
        }
    }
    Ok(())
}

/// `promtool check metrics` on each agent's `/metrics` as curl gets it (no `Accept`:
/// Prometheus's text format): the problems it reports.
pub fn promtool_check_metrics(agents: &[(SocketAddr, &str)], dir: &Path) -> Result<Vec<String>> {
    let promtool = exec::find_tool("promtool").context(
        "promtool not found: install Debian's `prometheus` package (`cargo xtask bootstrap` \
         as root does)",
    )?;
    println!("\n== promtool check metrics on each agent's /metrics\n");
    let mut problems = Vec::new();
    for (addr, node) in agents {
        let (status, body) = demo::http_get(*addr, "/metrics")?;
        ensure!(status == 200, "GET http://{addr}/metrics: HTTP {status}");
        let path = dir.join(format!("metrics-{node}.txt"));
        std::fs::write(&path, &body)?;
        let out = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(File::open(&path)?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {}", promtool.display()))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let families = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let samples = body.lines().filter(|l| !l.starts_with('#')).count();
        let clean = out.status.success() && said.trim().is_empty();
        println!(
            "  {} {node}: {families} families, {samples} samples ({}){}",
            if clean { "ok  " } else { "FAIL" },
            path.display(),
            if clean {
                String::new()
            } else {
                format!(": {}", said.trim())
            }
        );
        if !clean {
            problems.push(format!(
                "promtool check metrics on {node}'s /metrics ({}): {} {}",
                path.display(),
                out.status,
                said.trim()
            ));
        }
        for h in HISTOGRAMS {
            if !body.contains(&format!("\n# TYPE {h} histogram\n")) {
                problems.push(format!("{node}'s /metrics has no histogram {h}"));
            }
        }
    }
    Ok(problems)
}
