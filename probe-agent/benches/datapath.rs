//! Datapath budgets (docs/budgets.md, "cargo xtask bench"), measured on a simulated node
//! in one run, each figure beside its budget and its anchors: the classifier's per-packet
//! cost against an empty classifier on the same packets (kernel bpf_stats), iperf3
//! throughput over a veth with and without the probe, and how soon a TIMEOUT is visible
//! on the API after its timeout expires. Needs root.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, TcAttachType, TestRun, TestRunOptions,
        tc::{SchedClassifierLinkId, TcAttachOptions},
    },
    sys::{Stats, enable_stats},
};
use lab::{self, Node, Pod, Proto};
use probe_agent::{
    loader::{self, LoadOptions},
    model::{Verdict, VerdictKind},
};
use probe_ebpf::{EGRESS_PROGRAM, EMPTY_PROGRAM, INGRESS_PROGRAM, TOUCH_PROGRAM};

const COST_RATIO_BUDGET: f64 = 1.15;
const THROUGHPUT_BUDGET: f64 = 0.99;
const LATENCY_BUDGET: Duration = Duration::from_millis(250);
/// The figures the current budgets were set against: classifier 51 vs 39 ns (1.32×)
/// when the budget was 1.3×.
const ANCHOR_COST: &str = "before: 51 vs 39 ns = 1.32x, budget was 1.3x";
/// Rounds of iperf3 traffic the cost is read over, the probe between two empty classifiers.
const COST_ROUNDS: usize = 6;
const COST_ROUND_SECONDS: u32 = 2;
/// Triples of throughput rounds (bare, empty classifier, probe), their order rotating.
const IPERF_TRIPLES: usize = 6;
const IPERF_SECONDS: u32 = 3;
/// BPF_PROG_TEST_RUN repetitions per reading of the plain-data profile, and readings.
const TEST_RUN_REPEAT: u32 = 1_000_000;
const TEST_RUN_READINGS: usize = 5;
const LATENCY_SAMPLES: usize = 5;

fn report(what: &str, figure: &str, budget: &str, met: bool) {
    let verdict = if met { "met" } else { "MISSED" };
    println!("{what:<44} {figure:>22}   budget {budget:<22} {verdict}");
}

/// A line under a figure: what it is compared with and how it spread.
fn anchor(text: &str) {
    println!("  {text}");
}

/// Attaches a loaded `program` at `hook` of `interface` with TCX, at `order` in its chain.
fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
    hook: TcAttachType,
    order: LinkOrder,
) -> SchedClassifierLinkId {
    loader::classifier(ebpf, program)
        .unwrap()
        .attach_with_options(interface, hook, TcAttachOptions::TcxOrder(order))
        .unwrap_or_else(|err| panic!("attach {program} to {interface}: {err}"))
}

/// The probe as the agent attaches it: ingress program at ingress, egress at egress, at
/// the end of each chain. Returns the links, to detach.
fn attach_probe(
    ebpf: &mut Ebpf,
    interfaces: &[&str],
) -> Vec<(&'static str, SchedClassifierLinkId)> {
    let mut links = Vec::new();
    for interface in interfaces {
        for (program, hook) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress),
            (EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            let link = attach(ebpf, program, interface, hook, LinkOrder::default());
            links.push((program, link));
        }
    }
    links
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, SchedClassifierLinkId)>) {
    for (program, link) in links {
        loader::classifier(ebpf, program)
            .unwrap()
            .detach(link)
            .unwrap();
    }
}

/// (run count, run time) of a loaded program so far.
fn stats(ebpf: &mut Ebpf, program: &'static str) -> (u64, Duration) {
    let info = loader::classifier(ebpf, program).unwrap().info().unwrap();
    (info.run_count(), info.run_time())
}

/// iperf3 from `client` to `server` for `seconds`; bits per second received.
fn iperf(client: &Pod, server: &Pod, seconds: u32) -> f64 {
    let output = client
        .command("iperf3")
        .args([
            "-c",
            &server.ipv4.to_string(),
            "-t",
            &seconds.to_string(),
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

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

const BOTH_HOOKS: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];

/// Attaches `program` of `ebpf` at `hooks` of every interface, at `order` in the chains.
fn attach_at(
    ebpf: &mut Ebpf,
    program: &'static str,
    interfaces: &[&str],
    hooks: &[TcAttachType],
    order: fn() -> LinkOrder,
) -> Vec<(&'static str, SchedClassifierLinkId)> {
    let mut links = Vec::new();
    for interface in interfaces {
        for &hook in hooks {
            links.push((program, attach(ebpf, program, interface, hook, order())));
        }
    }
    links
}

/// Runs and run time so far, summed over programs.
fn runs(readings: &[(u64, Duration)]) -> (u64, Duration) {
    readings
        .iter()
        .fold((0, Duration::ZERO), |(runs, time), &(r, t)| {
            (runs + r, time + t)
        })
}

fn ns((runs, time): (u64, Duration)) -> f64 {
    time.as_nanos() as f64 / runs.max(1) as f64
}

/// What runs between the two empty classifiers in a round of [`classifier_cost`].
#[derive(Clone, Copy, PartialEq)]
enum Middle {
    /// The probe as the agent attaches it: its ingress program at ingress, its egress
    /// program at egress.
    Probe,
    /// The probe's ingress program on every hook, one program as each empty is: its code
    /// runs twice per packet here (once per veth) and stays warm between the two.
    ProbeAsOne,
    /// A classifier that reads one packet byte: the floor of any that looks at packets.
    Touch,
    /// Two empty classifiers, one at ingress and one at egress, as the probe's two
    /// programs are: what taking turns costs a program that does nothing.
    EmptyPair,
}

/// Cost per run of the probe and of an empty classifier on the same packets: on every hook
/// of both veths an empty classifier runs just before the probe and another just after
/// (so neither gains from its place in the chain), read over rounds of iperf3. Rounds
/// with the probe rotate with rounds of the other kinds of [`Middle`]: its ingress program
/// alone on every hook, a classifier that reads one packet byte, and an empty pair.
fn classifier_cost(probe: &mut Ebpf, interfaces: &[&str], client: &Pod, server: &Pod) {
    // Kernel run-time statistics, on while this fd lives (not during the throughput
    // rounds: timing every run has a cost of its own).
    let stats_on = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
    let load = |program: &'static str| {
        let mut ebpf = loader::load(LoadOptions::default()).expect("load a baseline");
        loader::load_program(&mut ebpf, program).unwrap();
        ebpf
    };
    let (mut ahead, mut behind, mut touch) = (
        load(EMPTY_PROGRAM),
        load(EMPTY_PROGRAM),
        load(TOUCH_PROGRAM),
    );
    let (mut empty_in, mut empty_out) = (load(EMPTY_PROGRAM), load(EMPTY_PROGRAM));
    let middles = [
        Middle::Probe,
        Middle::ProbeAsOne,
        Middle::Touch,
        Middle::EmptyPair,
    ];
    // Per kind of middle: its runs and time, its empties' runs and time, its rounds' ratios.
    let mut totals = [[(0, Duration::ZERO); 2]; 4];
    let mut rounds: [Vec<f64>; 4] = Default::default();
    for round in 0..middles.len() * COST_ROUNDS {
        let kind = round % middles.len();
        let middle = middles[kind];
        let mut links = match middle {
            Middle::Probe => attach_probe(probe, interfaces),
            Middle::ProbeAsOne => attach_at(
                probe,
                INGRESS_PROGRAM,
                interfaces,
                &BOTH_HOOKS,
                LinkOrder::default,
            ),
            Middle::Touch => attach_at(
                &mut touch,
                TOUCH_PROGRAM,
                interfaces,
                &BOTH_HOOKS,
                LinkOrder::default,
            ),
            Middle::EmptyPair => {
                let (ingress, egress) = ([TcAttachType::Ingress], [TcAttachType::Egress]);
                let mut links = attach_at(
                    &mut empty_in,
                    EMPTY_PROGRAM,
                    interfaces,
                    &ingress,
                    LinkOrder::default,
                );
                links.extend(attach_at(
                    &mut empty_out,
                    EMPTY_PROGRAM,
                    interfaces,
                    &egress,
                    LinkOrder::default,
                ));
                links
            }
        };
        let first = attach_at(
            &mut ahead,
            EMPTY_PROGRAM,
            interfaces,
            &BOTH_HOOKS,
            LinkOrder::first,
        );
        let last = attach_at(
            &mut behind,
            EMPTY_PROGRAM,
            interfaces,
            &BOTH_HOOKS,
            LinkOrder::last,
        );
        let mut read = |probe: &mut Ebpf| {
            let middle = match middle {
                Middle::Probe | Middle::ProbeAsOne => {
                    runs(&[stats(probe, INGRESS_PROGRAM), stats(probe, EGRESS_PROGRAM)])
                }
                Middle::Touch => stats(&mut touch, TOUCH_PROGRAM),
                Middle::EmptyPair => runs(&[
                    stats(&mut empty_in, EMPTY_PROGRAM),
                    stats(&mut empty_out, EMPTY_PROGRAM),
                ]),
            };
            let empties = runs(&[
                stats(&mut ahead, EMPTY_PROGRAM),
                stats(&mut behind, EMPTY_PROGRAM),
            ]);
            (middle, empties)
        };
        let before = read(probe);
        iperf(client, server, COST_ROUND_SECONDS);
        let after = read(probe);
        let delta = |a: (u64, Duration), b: (u64, Duration)| (a.0 - b.0, a.1 - b.1);
        let (middle_round, empty_round) = (delta(after.0, before.0), delta(after.1, before.1));
        totals[kind][0] = runs(&[totals[kind][0], middle_round]);
        totals[kind][1] = runs(&[totals[kind][1], empty_round]);
        rounds[kind].push(ns(middle_round) / ns(empty_round));
        detach(&mut ahead, first);
        detach(&mut behind, last);
        match middle {
            Middle::Probe | Middle::ProbeAsOne => detach(probe, links),
            Middle::Touch => detach(&mut touch, links),
            Middle::EmptyPair => {
                // The ingress links first, then the egress ones.
                let at_egress = links.split_off(interfaces.len());
                detach(&mut empty_in, links);
                detach(&mut empty_out, at_egress);
            }
        }
    }
    drop(stats_on);
    let figure = |kind: usize| {
        let [middle, empties] = totals[kind];
        let (middle_ns, empty_ns) = (ns(middle), ns(empties));
        let (lo, hi) = min_max(&rounds[kind]);
        let ratio = middle_ns / empty_ns;
        let text =
            format!("{ratio:.2}x ({middle_ns:.1} vs {empty_ns:.1} ns; rounds {lo:.2}x-{hi:.2}x)");
        (ratio, text, empty_ns)
    };
    let (ratio, probe_figure, empty_ns) = figure(0);
    report(
        "classifier cost per packet vs empty",
        &probe_figure,
        &format!("≤ {COST_RATIO_BUDGET}x"),
        ratio <= COST_RATIO_BUDGET,
    );
    anchor(&format!(
        "empty classifier {empty_ns:.1} ns/run; {ANCHOR_COST}; {COST_ROUNDS} rounds of each \
         kind below x {COST_ROUND_SECONDS} s of iperf3, {} probe runs, {} empty runs",
        totals[0][0].0, totals[0][1].0
    ));
    anchor(&format!(
        "the probe's ingress program on every hook, one program as each empty is: {}; \
         the rest is from two programs taking turns (each runs once per packet), not from its code",
        figure(1).1
    ));
    anchor(&format!(
        "a classifier that reads one packet byte: {}",
        figure(2).1
    ));
    anchor(&format!(
        "two empty classifiers, one at ingress and one at egress, as the probe's two \
         programs are: {}",
        figure(3).1
    ));
}

/// A TCP segment of an established flow, 100 bytes of data (IPv4, ACK|PSH): the packet
/// the fast path is for. Checksums are not checked by a classifier.
fn plain_data_frame() -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20 + 100];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 20 + 100).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 5]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 9]);
    let tcp = &mut frame[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    frame
}

/// The probe's own cost on a plain data segment, without bpf_stats' timing around each
/// run: BPF_PROG_TEST_RUN of the probe and of the empty classifier, alternated.
fn plain_data_profile(probe: &mut Ebpf) {
    let mut empty = loader::load(LoadOptions::default()).expect("load the baseline");
    loader::load_program(&mut empty, EMPTY_PROGRAM).unwrap();
    let frame = plain_data_frame();
    let run = |ebpf: &mut Ebpf, program: &'static str| {
        let result = loader::classifier(ebpf, program)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: TEST_RUN_REPEAT,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        result.duration.as_nanos() as f64
    };
    let (mut probe_ns, mut empty_ns) = (Vec::new(), Vec::new());
    for _ in 0..TEST_RUN_READINGS {
        empty_ns.push(run(&mut empty, EMPTY_PROGRAM));
        probe_ns.push(run(probe, INGRESS_PROGRAM));
        probe_ns.push(run(probe, EGRESS_PROGRAM));
    }
    let xlated = |ebpf: &mut Ebpf, program: &'static str| {
        let info = loader::classifier(ebpf, program).unwrap().info().unwrap();
        info.size_translated().unwrap_or(0) / 8
    };
    anchor(&format!(
        "profile, plain data segment (BPF_PROG_TEST_RUN, {TEST_RUN_READINGS} x {TEST_RUN_REPEAT}): \
         probe {:.1} ns, empty {:.1} ns per run; programs of {} (probe) and {} (empty) instructions",
        mean(&probe_ns),
        mean(&empty_ns),
        xlated(probe, INGRESS_PROGRAM),
        xlated(&mut empty, EMPTY_PROGRAM),
    ));
}

/// Throughput bare, with the empty classifier and with the probe attached (on both hooks
/// of both veths), in triples whose order rotates so drift hits each alike; means
/// compared, each side's and each triple's spread shown. The empty classifier's figure
/// tells what attaching any classifier costs from what the probe's code does.
fn throughput(probe: &mut Ebpf, interfaces: &[&str], client: &Pod, server: &Pod) {
    let mut empty = loader::load(LoadOptions::default()).expect("load the baseline");
    loader::load_program(&mut empty, EMPTY_PROGRAM).unwrap();
    // Bare, empty classifier, probe.
    let mut rates: [Vec<f64>; 3] = Default::default();
    for triple in 0..IPERF_TRIPLES {
        for arm in (0..3).map(|i| (i + triple) % 3) {
            let rate = match arm {
                0 => iperf(client, server, IPERF_SECONDS),
                1 => {
                    let links = attach_at(
                        &mut empty,
                        EMPTY_PROGRAM,
                        interfaces,
                        &BOTH_HOOKS,
                        LinkOrder::default,
                    );
                    let rate = iperf(client, server, IPERF_SECONDS);
                    detach(&mut empty, links);
                    rate
                }
                _ => {
                    let links = attach_probe(probe, interfaces);
                    let rate = iperf(client, server, IPERF_SECONDS);
                    detach(probe, links);
                    rate
                }
            };
            rates[arm].push(rate);
        }
    }
    let [bare, with_empty, probed] = &rates;
    let ratio = mean(probed) / mean(bare);
    let spread = |values: &[f64]| {
        let (lo, hi) = min_max(values);
        format!(
            "{:.2} ({:.2}-{:.2})",
            mean(values) / 1e9,
            lo / 1e9,
            hi / 1e9
        )
    };
    let ratios = |of: &[f64], to: &[f64]| {
        let each: Vec<f64> = of.iter().zip(to).map(|(a, b)| a / b).collect();
        let (lo, hi) = min_max(&each);
        format!(
            "{:.1}% ({:.1}%-{:.1}%)",
            mean(of) / mean(to) * 100.0,
            lo * 100.0,
            hi * 100.0
        )
    };
    report(
        "iperf3 over veth, probe attached vs bare",
        &format!(
            "{:.1}% ({:.2} vs {:.2} Gbit/s)",
            ratio * 100.0,
            mean(probed) / 1e9,
            mean(bare) / 1e9
        ),
        &format!("≥ {:.0}%", THROUGHPUT_BUDGET * 100.0),
        ratio >= THROUGHPUT_BUDGET,
    );
    anchor(&format!(
        "Gbit/s, mean (min-max): bare veth {}, empty classifier {}, probe {}",
        spread(bare),
        spread(with_empty),
        spread(probed),
    ));
    anchor(&format!(
        "probe vs bare per triple {}; empty classifier vs bare {}; probe vs empty {} \
         ({IPERF_TRIPLES} triples x {IPERF_SECONDS} s, order rotating); budget was 97%",
        ratios(probed, bare),
        ratios(with_empty, bare),
        ratios(probed, with_empty),
    ));
}

/// The classifier's cost and profile, then throughput with and without it.
fn datapath(node: &Node, client: &Pod, server: &Pod) {
    let interfaces = [client.host_if.clone(), server.host_if.clone()];
    let (client, server) = (client.clone(), server.clone());
    node.in_netns(move || {
        let interfaces: Vec<&str> = interfaces.iter().map(String::as_str).collect();
        let mut probe = loader::load(LoadOptions::default()).expect("load the probe");
        let _maps = loader::take_maps(&mut probe).unwrap();
        let _iperf_server = IperfServer::start(&server);
        // A first run to warm up both ends (and settle the veths' queues).
        iperf(&client, &server, 1);
        if wanted("cost") {
            classifier_cost(&mut probe, &interfaces, &client, &server);
        }
        if wanted("profile") {
            plain_data_profile(&mut probe);
        }
        if wanted("throughput") {
            throughput(&mut probe, &interfaces, &client, &server);
        }
    });
}

/// Whether to run `part`: every part, unless parts are named on the command line
/// (`cargo xtask bench --bench datapath -- cost profile`).
fn wanted(part: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|name| name == part)
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
    if wanted("latency") {
        verdict_latency(&node, &client, &server);
    }
}
