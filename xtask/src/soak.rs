//! `cargo xtask soak`: netprobe under the worst a node throws at it, bounded and
//! repeatable, on a simulated node (traffic stays in the namespaces it creates). Prints one
//! line per figure with its budget; fails if one is missed.
//!
//! Load: a SYN flood (hping3, as fast as it goes here) from one pod into a port the node
//! drops, while wrk hammers `/v1/verdicts` and an unrelated pod pair keeps connecting.
//! Before it, a ramp of SYN rates (25 k, 50 k, 100 k/s asked of tcpreplay, then the flood):
//! at each the rate the probe saw beside the rate asked, and the events lost and where (the
//! kernel's ring or the agent's queue).
//! Then hostile API clients, one scenario at a time ([`hostile`]).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use lab::{self, Agent, Node, Pod, Proto, Samples, exec, http_get};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{build, toolchain, util};

mod hostile;
mod paced_syns;

use paced_syns::{PacedSyns, SENDER_MAX_RATE};

/// The agent's memory budget (docs/budgets.md).
const RSS_BUDGET_MIB: f64 = 128.0;
/// Issue 16's memory budget at the flood's worst: printed beside the figure, not
/// enforced (a noisy figure on a shared machine must not fail CI).
const RSS_GOAL_MIB: f64 = 64.0;
/// The agent's flow table (its default): the flood must fill it and evict.
const FLOW_CAPACITY: u64 = 65_536;
const SYN_TIMEOUT: Duration = Duration::from_secs(1);
/// The ramp's stages below the flood: the SYN rate asked of tcpreplay, and the names of the
/// stage's two lines (the rate the probe saw beside it; the events lost and where).
static RAMP: [RampStage; 3] = [
    RampStage {
        asked: 25_000,
        rate_line: "ramp: 25 k SYN/s asked, reached",
        loss_line: "ramp: 25 k SYN/s, events lost and where",
    },
    RampStage {
        asked: 50_000,
        rate_line: "ramp: 50 k SYN/s asked, reached",
        loss_line: "ramp: 50 k SYN/s, events lost and where",
    },
    RampStage {
        asked: 100_000,
        rate_line: "ramp: 100 k SYN/s asked, reached",
        loss_line: "ramp: 100 k SYN/s, events lost and where",
    },
];
const RAMP_STAGE: Duration = Duration::from_secs(5);
/// A stage kept up when the probe saw this share of the SYNs asked (printed, not enforced).
const RAMP_KEPT_UP: f64 = 0.95;

struct RampStage {
    asked: u32,
    rate_line: &'static str,
    loss_line: &'static str,
}

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// The bounded version `cargo xtask test` runs: a 10 s flood instead of 60 s.
    #[arg(long)]
    quick: bool,
    /// Length of the SYN flood, in seconds (default 60; 10 with --quick).
    #[arg(long)]
    flood_seconds: Option<u64>,
}

/// One measured figure against its budget.
struct Figure {
    what: &'static str,
    figure: String,
    budget: String,
    met: bool,
}

impl Figure {
    fn print(&self) {
        let verdict = if self.met { "met" } else { "MISSED" };
        println!(
            "{:<44} {:>34}   budget {:<26} {verdict}",
            self.what, self.figure, self.budget
        );
    }
}

pub fn run(args: SoakArgs) -> Result<()> {
    util::require_root(
        "soak",
        "it creates network namespaces and loads eBPF programs",
    )?;
    toolchain::bootstrap()?;
    toolchain::ensure_task_packages("soak", toolchain::SOAK_PACKAGES)?;
    let seconds = args
        .flood_seconds
        .unwrap_or(if args.quick { 10 } else { 60 });
    let bin = build::build_agent()?;
    let (figures, goals, ramp) = load(&bin, Duration::from_secs(seconds))?;
    let hostile = hostile::run(&bin);
    // The fault scenarios are the agent's resilience tests (they run, with 100 churn
    // cycles, in `cargo xtask test`); here with the full 1,000 cycles.
    let faults = if args.quick { None } else { Some(faults(1000)) };
    println!("\n== Load\n");
    for figure in &figures {
        figure.print();
    }
    // Issue 16's goals, not budgets the soak enforces yet: printed, never failing it.
    for figure in &goals {
        figure.print();
    }
    let mut missed: Vec<&str> = figures.iter().filter(|f| !f.met).map(|f| f.what).collect();
    // Issue 16's goal, not a budget the soak enforces yet: printed, never failing it.
    println!(
        "\n== SYN-rate ramp: rate reached against asked, events lost and where \
         (goal: 0 lost at the flood's rate; not enforced)\n"
    );
    for figure in &ramp {
        figure.print();
    }
    println!("\n== Hostile API clients\n");
    match &hostile {
        Ok(figures) => {
            for figure in figures {
                figure.print();
            }
            missed.extend(figures.iter().filter(|f| !f.met).map(|f| f.what));
        }
        Err(e) => {
            println!("FAILED: {e:#}");
            missed.push("hostile API clients");
        }
    }
    if let Some(faults) = &faults {
        println!("\n== Faults (probe-agent's resilience tests)\n");
        match faults {
            Ok(lines) => lines.iter().for_each(|line| println!("{line}")),
            Err(e) => {
                println!("FAILED: {e:#}");
                missed.push("fault scenarios");
            }
        }
    }
    ensure!(missed.is_empty(), "missed: {}", missed.join("; "));
    Ok(())
}

/// Runs the agent's resilience tests (restart after kill -9, netlink overrun, `churn`
/// pod create/delete cycles, SIGTERM under a flood) and returns the figures they print.
fn faults(churn_cycles: u32) -> Result<Vec<String>> {
    println!("\n== Faults: probe-agent's resilience tests, {churn_cycles} churn cycles\n");
    let output = util::cargo([
        "test",
        "-p",
        "probe-agent",
        "--features",
        "privileged-tests",
        "--test",
        "privileged",
        "resilience::",
        "--",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("NETPROBE_CHURN_CYCLES", churn_cycles.to_string())
    .stdin(Stdio::null())
    .output()
    .context("running the resilience tests")?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    let figures: Vec<String> = text
        .lines()
        .filter(|line| {
            [
                "churn: ",
                "netlink overrun: ",
                "flood",
                "restart",
                "test resilience::",
            ]
            .iter()
            .any(|prefix| line.starts_with(prefix))
        })
        .filter(|line| !line.starts_with("churn: (cycle"))
        .map(str::to_owned)
        .collect();
    ensure!(
        output.status.success(),
        "the resilience tests failed:\n{}",
        text.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(figures)
}

/// The agent on `node` (no Kubernetes, 1 s SYN timeout), with more `probe-agent run`
/// arguments (e.g. `--interfaces`); ready (`/readyz` 200) when this returns.
pub(crate) fn start_agent(bin: &Path, node: &Node, log: &Path, args: &[&str]) -> Result<Agent> {
    let mut agent = lab::AgentCommand::new(bin, node, log)
        // Loopback, no cluster: open, whatever environment the soak runs in.
        .args(["--kube", "off", "--api-auth", "none"])
        .args(["--syn-timeout", &format!("{}s", SYN_TIMEOUT.as_secs())])
        .args(["--flow-capacity", &FLOW_CAPACITY.to_string()])
        .args(args.iter().copied())
        .start()?;
    agent.wait_ready(Duration::from_secs(20))?;
    Ok(agent)
}

/// wrk's figures: requests, p50 and p99 in ms, non-2xx answers, socket errors.
#[derive(Debug, Default, PartialEq)]
struct WrkReport {
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

fn parse_wrk(text: &str) -> Result<WrkReport> {
    let millis = |value: &str| -> Option<f64> {
        let value = value.trim();
        let (number, scale) = if let Some(v) = value.strip_suffix("us") {
            (v, 0.001)
        } else if let Some(v) = value.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = value.strip_suffix('s') {
            (v, 1000.0)
        } else {
            (value, 1.0)
        };
        number.parse::<f64>().ok().map(|n| n * scale)
    };
    let mut report = WrkReport::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("50%") {
            report.p50_ms = millis(rest).context("wrk p50")?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            report.p99_ms = millis(rest).context("wrk p99")?;
        } else if line.contains(" requests in ") {
            report.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .context("wrk request count")?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = rest.trim().parse().context("wrk non-2xx")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            report.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    ensure!(report.requests > 0, "wrk reported no requests:\n{text}");
    Ok(report)
}

/// hping3 sending SYNs as fast as it can from a pod, its output in `dir`.
pub(crate) struct SynFlood {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl SynFlood {
    /// `hping3 --flood -S -p <port> <to>` in `from`'s namespace.
    pub(crate) fn start(from: &Pod, to: Ipv4Addr, port: u16, dir: &Path) -> Result<SynFlood> {
        let (out, err) = (dir.join("hping3.out"), dir.join("hping3.err"));
        let child = from
            .command("hping3")
            .args(["--flood", "-S", "-p", &port.to_string(), &to.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .spawn()
            .context("starting hping3")?;
        Ok(SynFlood { child, out, err })
    }

    /// Stops it; the SYNs it says it sent.
    pub(crate) fn stop(mut self) -> Result<Option<u64>> {
        // SIGINT: hping3 prints its statistics and exits; if it does not, it is ended,
        // uncounted.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                exec::terminate(&mut self.child, Duration::from_secs(2));
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default()
            + &std::fs::read_to_string(&self.err).unwrap_or_default();
        Ok(parse_hping_sent(&text))
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        // Not stopped (an error on the way): it must not outlive the task.
        exec::terminate(&mut self.child, Duration::from_secs(2));
    }
}

/// hping3's "N packets tramitted" (sic) line.
fn parse_hping_sent(text: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.contains("packets tramitted") || line.contains("packets transmitted"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The agent's event accounting, from its metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Events {
    emitted: f64,
    processed: f64,
    lost_kernel: f64,
    lost_agent: f64,
    decode_errors: f64,
    /// SYNs the agent counted (read and recovered).
    syns: f64,
}

impl Events {
    fn of(samples: &Samples) -> Events {
        let lost = |source| {
            samples
                .value("netprobe_events_lost_total", &[("source", source)])
                .unwrap_or_default()
        };
        Events {
            emitted: samples.sum("netprobe_kernel_events_total"),
            processed: samples.sum("netprobe_events_processed_total"),
            lost_kernel: lost("kernel"),
            lost_agent: lost("agent"),
            decode_errors: samples.sum("netprobe_decode_errors_total"),
            syns: samples
                .value("netprobe_packets_total", &[("kind", "syn")])
                .unwrap_or_default(),
        }
    }

    fn since(&self, before: &Events) -> Events {
        Events {
            emitted: self.emitted - before.emitted,
            processed: self.processed - before.processed,
            lost_kernel: self.lost_kernel - before.lost_kernel,
            lost_agent: self.lost_agent - before.lost_agent,
            decode_errors: self.decode_errors - before.decode_errors,
            syns: self.syns - before.syns,
        }
    }

    fn lost(&self) -> f64 {
        self.lost_kernel + self.lost_agent
    }

    /// "N lost (x %): kernel ring K, agent queue A".
    fn losses(&self) -> String {
        format!(
            "{:.0} lost ({:.2} %): ring {:.0}, queue {:.0}",
            self.lost(),
            100.0 * self.lost() / self.emitted.max(1.0),
            self.lost_kernel,
            self.lost_agent
        )
    }
}

/// Waits until the agent has read everything (its processed and the kernel's emitted
/// totals stop moving: the last reconcile is in), at most 20 s; its metrics then.
fn settled(agent: &Agent) -> Result<Samples> {
    let mut samples = agent.samples()?;
    let settle = Instant::now();
    loop {
        thread::sleep(SYN_TIMEOUT + Duration::from_millis(1200));
        let next = agent.samples()?;
        let done = next.sum("netprobe_events_processed_total")
            == samples.sum("netprobe_events_processed_total")
            && next.sum("netprobe_kernel_events_total")
                == samples.sum("netprobe_kernel_events_total");
        samples = next;
        if done || settle.elapsed() > Duration::from_secs(20) {
            return Ok(samples);
        }
    }
}

/// One paced stage of the ramp, as measured.
struct RampResult {
    stage: &'static RampStage,
    /// SYN/s the probe saw: its events over the stage (one per SYN, at the flooder's veth).
    reached: f64,
    /// SYN/s the tcpreplays say they sent, how many there were and the cores they used
    /// (each SYN's way through the veth and the node included).
    sent: f64,
    senders: u32,
    sender_cores: f64,
    events: Events,
}

impl RampResult {
    /// Its two lines: the rate reached beside the rate asked; the events lost and where.
    fn figures(&self) -> [Figure; 2] {
        let asked = f64::from(self.stage.asked);
        [
            Figure {
                what: self.stage.rate_line,
                figure: format!(
                    "{:.1} k of {:.0} k SYN/s (sent {:.1} k/s by {}, {:.2} core)",
                    self.reached / 1e3,
                    asked / 1e3,
                    self.sent / 1e3,
                    self.senders,
                    self.sender_cores
                ),
                budget: format!("≥ {:.0} % of asked", RAMP_KEPT_UP * 100.0),
                met: self.reached >= RAMP_KEPT_UP * asked,
            },
            Figure {
                what: self.stage.loss_line,
                figure: format!(
                    "{:.1} k SYN/s: {}",
                    self.reached / 1e3,
                    self.events.losses()
                ),
                budget: "0 lost".into(),
                met: self.events.lost() == 0.0,
            },
        ]
    }
}

/// The ramp's paced stages: each [`RAMP_STAGE`] long, settled before the next, the same
/// trace of SYNs from `from` to `to`'s dropped port replayed at each stage's rate.
fn ramp(
    agent: &Agent,
    node: &Node,
    from: &Pod,
    to: Ipv4Addr,
    dir: &Path,
) -> Result<Vec<RampResult>> {
    let trace = paced_syns::write_trace(node, from, to, 5432, dir)?;
    let mut results = Vec::new();
    for stage in &RAMP {
        let before = Events::of(&settled(agent)?);
        // The stage's rate split evenly over as many senders as it takes, started together.
        let senders = stage.asked.div_ceil(SENDER_MAX_RATE);
        let cpu_before = paced_syns::children_cpu()?;
        let running = (0..senders)
            .map(|i| {
                let name = format!("{}-{i}", stage.asked);
                let rate = stage.asked / senders;
                PacedSyns::start(from, &trace, rate, RAMP_STAGE, dir, &name)
            })
            .collect::<Result<Vec<_>>>()?;
        let (mut packets, mut seconds) = (0, 0.0_f64);
        for sender in running {
            let sent = sender.wait()?;
            packets += sent.packets;
            seconds = seconds.max(sent.seconds);
        }
        let cpu_seconds = paced_syns::children_cpu()? - cpu_before;
        let events = Events::of(&settled(agent)?).since(&before);
        // Over the time tcpreplay sent (its start-up not counted).
        let seconds = if seconds > 0.0 {
            seconds
        } else {
            RAMP_STAGE.as_secs_f64()
        };
        results.push(RampResult {
            stage,
            reached: events.emitted / seconds,
            sent: packets as f64 / seconds,
            senders,
            sender_cores: cpu_seconds / seconds,
            events,
        });
    }
    Ok(results)
}

/// The load's figures (enforced), issue 16's goals (printed only) and the SYN-rate ramp.
fn load(bin: &Path, flood: Duration) -> Result<(Vec<Figure>, Vec<Figure>, Vec<Figure>)> {
    let mut node = Node::new(&lab::unique_prefix("soak"))?;
    let flooder = node.add_pod("flooder", "load", 2)?;
    let victim = node.add_pod("victim", "load", 3)?;
    let client = node.add_pod("client", "app", 4)?;
    let server = node.add_pod("server", "app", 5)?;
    let _listener = server.listen_tcp(8080)?;
    // The flood goes into a port a "NetworkPolicy" drops: every SYN times out.
    node.drop_traffic(
        Proto::Tcp,
        Some(IpAddr::V4(flooder.ipv4)),
        Some(IpAddr::V4(victim.ipv4)),
        Some(5432),
    )?;
    let dir = util::workspace_root().join("target").join("netprobe-soak");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("agent.log");
    let agent = start_agent(bin, &node, &log, &[])?;
    println!(
        "== Load: {} s SYN flood (hping3) {} -> {}:5432 (dropped), wrk on /v1/verdicts, \
         a healthy client -> server:8080 loop; agent log {}",
        flood.as_secs(),
        flooder.ipv4,
        victim.ipv4,
        log.display()
    );
    let rss_before = agent.rss_mib()?;
    let ramp = ramp(&agent, &node, &flooder, victim.ipv4, &dir)?;
    let before_flood = Events::of(&settled(&agent)?);

    // The unrelated healthy flow: one connection every 100 ms, all must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (healthy_ok, healthy_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let healthy = {
        let (stop, ok, failed) = (stop.clone(), healthy_ok.clone(), healthy_failed.clone());
        let to = SocketAddr::new(IpAddr::V4(server.ipv4), 8080);
        let client = client.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match client.connect_tcp(to, Duration::from_secs(2)) {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
                thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let hping = SynFlood::start(&flooder, victim.ipv4, 5432, &dir)?;
    let wrk = Command::new("wrk")
        .args(["-t2", "-c16", "--latency", "--timeout", "5s"])
        .arg(format!("-d{}s", flood.as_secs()))
        .arg(format!("http://{}/v1/verdicts?limit=100", agent.listen))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")?;

    let started = Instant::now();
    let mut rss_max = rss_before;
    while started.elapsed() < flood {
        thread::sleep(Duration::from_millis(500));
        rss_max = rss_max.max(agent.rss_mib()?);
    }
    let sent = hping.stop()?;
    let wrk = wrk.wait_with_output()?;
    let wrk_text = String::from_utf8_lossy(&wrk.stdout).into_owned();
    let wrk_report = parse_wrk(&wrk_text)?;
    stop.store(true, Ordering::SeqCst);
    healthy.join().ok();

    // Let the agent catch up: the last SYN timeouts, the next reconcile with the kernel.
    let samples = settled(&agent)?;
    rss_max = rss_max.max(agent.rss_mib()?);

    // Since the agent started (the ramp included): every event must be accounted for.
    let Events {
        emitted,
        processed,
        lost_kernel,
        lost_agent,
        decode_errors,
        ..
    } = Events::of(&samples);
    let tracked = samples.sum("netprobe_flows_tracked");

    // The healthy flow's verdicts, as the API gives them.
    let path = format!(
        "/v1/verdicts?src_ip={}&dst_ip={}&limit=10000",
        client.ipv4, server.ipv4
    );
    let (status, body) = http_get(agent.listen, &path)?;
    ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
    let verdicts: Value = serde_json::from_str(&body)?;
    let healthy_verdicts: Vec<&str> = verdicts["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["verdict"].as_str())
        .collect();
    let healthy_wrong = healthy_verdicts.iter().filter(|v| **v != "OK").count();
    // What went wrong, for whoever reads a miss.
    for wrong in verdicts["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["verdict"] != "OK")
        .take(5)
    {
        println!(
            "healthy flow not OK: {} {}:{} {} counts {}",
            wrong["verdict"].as_str().unwrap_or("?"),
            wrong["flow"]["src_ip"].as_str().unwrap_or("?"),
            wrong["flow"]["src_port"],
            wrong["reason"].as_str().unwrap_or("?"),
            wrong["counts"]
        );
    }
    let (ok, failed) = (
        healthy_ok.load(Ordering::SeqCst),
        healthy_failed.load(Ordering::SeqCst),
    );
    let secs = flood.as_secs_f64();

    // The ramp's last stage: the flood, with wrk on the API.
    let flood_events = Events::of(&samples).since(&before_flood);
    let flood_rate = flood_events.emitted / secs;
    // The flood's own SYNs: the ramp's came before it.
    let syns = flood_events.syns;
    let mut ramp_figures: Vec<Figure> = Vec::new();
    // The stages' rates, paced or not, need not rise: the flood's may be the lower.
    let mut loss_free: Option<f64> = None;
    let mut lossless_at = |rate: f64| loss_free = Some(loss_free.map_or(rate, |r| r.max(rate)));
    for stage in &ramp {
        let [rate, losses] = stage.figures();
        if losses.met {
            lossless_at(stage.reached);
        }
        ramp_figures.extend([rate, losses]);
    }
    let flood_met = flood_events.lost() == 0.0;
    if flood_met {
        lossless_at(flood_rate);
    }
    ramp_figures.push(Figure {
        what: "ramp: the flood (hping3 --flood, wrk on)",
        figure: format!("{:.0} k SYN/s: {}", flood_rate / 1e3, flood_events.losses()),
        budget: "0 lost".into(),
        met: flood_met,
    });
    ramp_figures.push(Figure {
        what: "highest loss-free SYN rate of the ramp",
        figure: match loss_free {
            Some(rate) => format!("{:.0} k SYN/s", rate / 1e3),
            None => "none".into(),
        },
        budget: format!("the flood's, {:.0} k/s", flood_rate / 1e3),
        met: flood_met,
    });

    let figures = vec![
        Figure {
            what: "SYN flood sent (hping3 --flood)",
            figure: match sent {
                Some(n) => format!("{n} SYNs, {:.0}/s", n as f64 / secs),
                None => "unknown".into(),
            },
            budget: "as fast as it goes".into(),
            met: true,
        },
        Figure {
            what: "SYNs counted by the probe in the flood",
            figure: format!("{syns:.0}, {:.0}/s", syns / secs),
            budget: "—".into(),
            met: syns > 0.0,
        },
        Figure {
            what: "events: emitted = processed + lost",
            figure: format!(
                "{emitted:.0} = {processed:.0} + {lost_kernel:.0} + {lost_agent:.0} + {decode_errors:.0}"
            ),
            budget: "exact (kernel+agent losses)".into(),
            met: emitted > 0.0
                && (emitted - (processed + lost_kernel + lost_agent + decode_errors)).abs() < 0.5,
        },
        Figure {
            what: "agent RSS: before, worst during the flood",
            figure: format!("{rss_before:.1} → {rss_max:.1} MiB"),
            budget: format!("≤ {RSS_BUDGET_MIB} MiB"),
            met: rss_max <= RSS_BUDGET_MIB,
        },
        Figure {
            what: "flow table at capacity (LRU evicts)",
            figure: format!("{tracked:.0} tracked"),
            budget: format!("≤ {FLOW_CAPACITY}"),
            met: tracked <= FLOW_CAPACITY as f64,
        },
        Figure {
            what: "API under load (wrk /v1/verdicts): p50 / p99",
            figure: format!(
                "{:.1} / {:.1} ms, {} requests",
                wrk_report.p50_ms, wrk_report.p99_ms, wrk_report.requests
            ),
            budget: "answers throughout".into(),
            met: wrk_report.requests > 0,
        },
        Figure {
            what: "API errors under load (non-2xx, socket)",
            figure: format!("{} + {}", wrk_report.non_2xx, wrk_report.socket_errors),
            budget: "0".into(),
            met: wrk_report.non_2xx == 0 && wrk_report.socket_errors == 0,
        },
        Figure {
            what: "healthy flow during the flood",
            figure: format!(
                "{ok} connects, {failed} failed; {} verdicts, {healthy_wrong} not OK",
                healthy_verdicts.len()
            ),
            budget: "all OK".into(),
            met: ok > 0 && failed == 0 && !healthy_verdicts.is_empty() && healthy_wrong == 0,
        },
    ];
    let goals = vec![Figure {
        what: "agent RSS, the flood's worst (issue 16's goal)",
        figure: format!("{rss_max:.1} MiB"),
        budget: format!("≤ {RSS_GOAL_MIB} MiB (not enforced)"),
        met: rss_max <= RSS_GOAL_MIB,
    }];
    Ok((figures, goals, ramp_figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let text = "\
Running 10s test @ http://127.0.0.1:9810/v1/verdicts?limit=100
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.51ms    1.20ms  30.10ms   90.00%
  Latency Distribution
     50%  812.00us
     75%    2.10ms
     90%    3.50ms
     99%    1.20s
  41234 requests in 10.00s, 50.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   4123.40
";
        assert_eq!(
            parse_wrk(text).unwrap(),
            WrkReport {
                requests: 41234,
                p50_ms: 0.812,
                p99_ms: 1200.0,
                non_2xx: 4,
                socket_errors: 3,
            }
        );
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn hping_statistics_are_read() {
        let text = "HPING 10.244.0.3 (eth0 10.244.0.3): S set, 40 headers + 0 data bytes\n\
                    hping in flood mode, no replies will be shown\n\n\
                    --- 10.244.0.3 hping statistic ---\n\
                    1234567 packets tramitted, 0 packets received, 100% packet loss\n";
        assert_eq!(parse_hping_sent(text), Some(1_234_567));
    }
}
