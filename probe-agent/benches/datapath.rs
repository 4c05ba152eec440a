//! Datapath budgets (docs/budgets.md, "cargo xtask bench"), measured on a simulated node
//! in one run: the classifier's per-packet cost against an empty classifier on the same
//! packets (kernel bpf_stats), iperf3 throughput over a veth with and without the probe,
//! and how soon a TIMEOUT is visible on the API after its timeout expires. Needs root.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
    sys::{Stats, enable_stats},
};
use lab::{self, Node, Pod, Proto};
use probe_agent::{
    loader::{self, LoadOptions},
    model::{Verdict, VerdictKind},
};
use probe_ebpf::{EGRESS_PROGRAM, EMPTY_PROGRAM, INGRESS_PROGRAM};

const COST_RATIO_BUDGET: f64 = 1.3;
const THROUGHPUT_BUDGET: f64 = 0.97;
const LATENCY_BUDGET: Duration = Duration::from_millis(250);
const IPERF_SECONDS: u32 = 4;
const IPERF_ROUNDS: usize = 3;
const LATENCY_SAMPLES: usize = 5;

fn report(what: &str, figure: &str, budget: &str, met: bool) {
    let verdict = if met { "met" } else { "MISSED" };
    println!("{what:<44} {figure:>22}   budget {budget:<22} {verdict}");
}

/// Attaches a loaded `program` at `hooks` of `interface` with TCX.
fn attach(ebpf: &mut Ebpf, program: &'static str, interface: &str, hooks: &[TcAttachType]) {
    let classifier: &mut SchedClassifier = loader::classifier(ebpf, program).unwrap();
    for &hook in hooks {
        classifier
            .attach_with_options(
                interface,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap_or_else(|err| panic!("attach {program} to {interface}: {err}"));
    }
}

/// The probe as the agent attaches it: ingress program at ingress, egress at egress.
fn attach_probe(ebpf: &mut Ebpf, interface: &str) {
    attach(ebpf, INGRESS_PROGRAM, interface, &[TcAttachType::Ingress]);
    attach(ebpf, EGRESS_PROGRAM, interface, &[TcAttachType::Egress]);
}

/// (run count, run time) of a loaded program so far.
fn stats(ebpf: &mut Ebpf, program: &'static str) -> (u64, Duration) {
    let info = loader::classifier(ebpf, program).unwrap().info().unwrap();
    (info.run_count(), info.run_time())
}

/// iperf3 from `client` to `server` for a few seconds; bits per second received.
fn iperf(client: &Pod, server: &Pod) -> f64 {
    let output = client
        .command("iperf3")
        .args([
            "-c",
            &server.ipv4.to_string(),
            "-t",
            &IPERF_SECONDS.to_string(),
            "-J",
        ])
        .output()
        .expect("run iperf3");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "iperf3 output: {err}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput in {json}"))
}

/// Cost per run of the probe and of an empty classifier, both attached to the same veths
/// and so run on the same packets; then throughput with and without the probe.
fn datapath(node: &Node, client: &Pod, server: &Pod) {
    let (client_if, server_if) = (client.host_if.clone(), server.host_if.clone());
    let (client, server) = (client.clone(), server.clone());
    node.in_netns(move || {
        // Kernel run-time statistics, on while this fd lives (not during the throughput
        // rounds: timing every run has a cost of its own).
        let stats_on = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
        let mut probe = loader::load(LoadOptions::default()).expect("load the probe");
        let _maps = loader::take_maps(&mut probe).unwrap();
        let mut baseline = loader::load(LoadOptions::default()).expect("load the baseline");
        loader::load_program(&mut baseline, EMPTY_PROGRAM).unwrap();
        for interface in [&client_if, &server_if] {
            attach(
                &mut baseline,
                EMPTY_PROGRAM,
                interface,
                &[TcAttachType::Ingress, TcAttachType::Egress],
            );
            attach_probe(&mut probe, interface);
        }
        let _iperf_server = IperfServer::start(&server);
        iperf(&client, &server);
        let (empty_runs, empty_time) = stats(&mut baseline, EMPTY_PROGRAM);
        let (in_runs, in_time) = stats(&mut probe, INGRESS_PROGRAM);
        let (out_runs, out_time) = stats(&mut probe, EGRESS_PROGRAM);
        let empty_ns = empty_time.as_nanos() as f64 / empty_runs as f64;
        let probe_ns = (in_time + out_time).as_nanos() as f64 / (in_runs + out_runs) as f64;
        let ratio = probe_ns / empty_ns;
        report(
            "classifier cost per packet vs empty",
            &format!("{ratio:.2}x ({probe_ns:.0} vs {empty_ns:.0} ns)"),
            &format!("≤ {COST_RATIO_BUDGET}x"),
            ratio <= COST_RATIO_BUDGET,
        );
        println!(
            "  ({} probe runs, {} empty runs over iperf3 traffic)",
            in_runs + out_runs,
            empty_runs
        );
        drop(baseline);
        drop(stats_on);

        // Throughput, alternating bare and probed rounds so drift hits both alike.
        let mut bare = Vec::new();
        let mut probed = Vec::new();
        let mut probe = Some(probe);
        for _ in 0..IPERF_ROUNDS {
            drop(probe.take());
            bare.push(iperf(&client, &server));
            let mut attached = loader::load(LoadOptions::default()).unwrap();
            let _maps = loader::take_maps(&mut attached).unwrap();
            for interface in [&client_if, &server_if] {
                attach_probe(&mut attached, interface);
            }
            probed.push(iperf(&client, &server));
            probe = Some(attached);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (bare, probed) = (mean(&bare), mean(&probed));
        let ratio = probed / bare;
        report(
            "iperf3 over veth, probe attached vs bare",
            &format!(
                "{:.1}% ({:.2} vs {:.2} Gbit/s)",
                ratio * 100.0,
                probed / 1e9,
                bare / 1e9
            ),
            &format!("≥ {:.0}%", THROUGHPUT_BUDGET * 100.0),
            ratio >= THROUGHPUT_BUDGET,
        );
    });
}

struct IperfServer(Child);

impl IperfServer {
    /// `iperf3 -s` in `pod`, serving one client after another.
    fn start(pod: &Pod) -> Self {
        let child = pod
            .command("iperf3")
            .arg("-s")
            .stdout(Stdio::null())
            .spawn()
            .expect("start iperf3 -s");
        std::thread::sleep(Duration::from_millis(300));
        Self(child)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Time from a SYN timeout expiring to the TIMEOUT verdict on the API, over real traffic.
fn verdict_latency(node: &Node, client: &Pod, server: &Pod) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let syn_timeout = Duration::from_secs(1);
    let mut agent = Command::new(env!("CARGO_BIN_EXE_probe-agent"))
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--syn-timeout",
            "1s",
        ])
        .arg("--netns")
        .arg(node.netns_path())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start probe-agent");
    let started = Instant::now();
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "agent not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut latencies = Vec::new();
    for sample in 0..LATENCY_SAMPLES {
        let dport = 7000 + sample as u16;
        node.drop_traffic(
            Proto::Tcp,
            Some(client.ipv4.into()),
            Some(server.ipv4.into()),
            Some(dport),
        )
        .unwrap();
        let to = SocketAddr::new(IpAddr::V4(server.ipv4), dport);
        let connecting = {
            let client = client.clone();
            std::thread::spawn(move || client.connect_tcp(to, Duration::from_millis(1500)))
        };
        let visible = loop {
            let mut response =
                ureq::get(&format!("{base}/v1/verdicts?port={dport}&verdict=TIMEOUT"))
                    .call()
                    .unwrap();
            let body: serde_json::Value =
                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
            let verdicts: Vec<Verdict> = serde_json::from_value(body["verdicts"].clone()).unwrap();
            if let Some(verdict) = verdicts.first() {
                assert_eq!(verdict.verdict, VerdictKind::Timeout);
                break (chrono::Utc::now(), verdict.first_seen);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let (seen_at, first_syn) = visible;
        let expiry = first_syn + chrono::Duration::from_std(syn_timeout).unwrap();
        latencies.push((seen_at - expiry).to_std().unwrap_or_default());
        let _ = connecting.join();
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
    latencies.sort();
    let worst = *latencies.last().unwrap();
    report(
        "TIMEOUT visible after its timeout expires",
        &format!(
            "{} ms worst, {} ms median",
            worst.as_millis(),
            latencies[latencies.len() / 2].as_millis()
        ),
        &format!("≤ {} ms", LATENCY_BUDGET.as_millis()),
        worst <= LATENCY_BUDGET,
    );
}

fn main() {
    if !lab::is_root() {
        eprintln!(
            "the datapath bench needs root (eBPF, network namespaces): run `cargo xtask bench` as root"
        );
        std::process::exit(1);
    }
    let mut node = Node::new(&lab::unique_prefix("bench")).expect("simulated node");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    datapath(&node, &client, &server);
    verdict_latency(&node, &client, &server);
}
