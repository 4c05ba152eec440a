//! Agent budgets (DESIGN.md, "Performance budgets"): decoded events per second through
//! decode + track on one core, and resident memory after 1,000,000 distinct 5-tuples.
//! Prints one line per figure with its budget. Run by `cargo xtask bench`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use probe_agent::{
    craft::{self, Frame, TcpFlags},
    decode,
    metrics::Metrics,
    track::{Clock, Tracker, TrackerConfig},
};
use probe_ebpf::{Direction, EventKind, IPPROTO_TCP};

const EVENTS_PER_SECOND_BUDGET: f64 = 1_000_000.0;
const RSS_BUDGET_MIB: f64 = 128.0;
const DISTINCT_TUPLES: u32 = 1_000_000;

/// Wire records for `flows` distinct connections: a SYN each, then a SYN-ACK for half of
/// them, a RST for the other half, as the kernel would hand them over.
fn wire_records(flows: u32) -> Vec<Vec<u8>> {
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)), 80);
    let mut records = Vec::with_capacity(flows as usize * 2);
    for i in 0..flows {
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 244, (i >> 16) as u8, (i >> 8) as u8)),
            1024 + (i & 0xff) as u16 * 200,
        );
        let key = craft::flow_key(IPPROTO_TCP, client, server);
        let t = 1_000_000_000 + u64::from(i) * 1000;
        records.push(craft::wire_event(
            EventKind::Syn,
            key,
            Direction::FromPod,
            t,
            &Frame::plain().tcp(client, server, TcpFlags::SYN),
        ));
        let (kind, flags) = if i % 2 == 0 {
            (EventKind::SynAck, TcpFlags::SYN | TcpFlags::ACK)
        } else {
            (EventKind::Rst, TcpFlags::RST | TcpFlags::ACK)
        };
        records.push(craft::wire_event(
            kind,
            key,
            Direction::ToPod,
            t + 500,
            &Frame::plain().tcp(server, client, flags),
        ));
    }
    records
}

fn tracker(capacity: usize) -> Tracker {
    Tracker::new(
        TrackerConfig {
            flow_capacity: NonZeroUsize::new(capacity).unwrap(),
            ..TrackerConfig::default()
        },
        Clock::new(),
        Arc::new(Metrics::default()),
    )
}

fn events_per_second() {
    let records = wire_records(200_000);
    let mut tracker = tracker(65_536);
    // One warm-up pass, then the measured one over the same records.
    for raw in &records {
        tracker.on_packet(&decode::decode(raw).unwrap());
    }
    let mut tracker = self::tracker(65_536);
    let started = Instant::now();
    for raw in &records {
        let packet = decode::decode(raw).expect("valid record");
        tracker.on_packet(&packet);
    }
    tracker.sweep(Duration::from_secs(10));
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    report(
        "agent decode+track, one core",
        &format!("{:.2} M events/s", rate / 1e6),
        &format!("≥ {:.1} M events/s", EVENTS_PER_SECOND_BUDGET / 1e6),
        rate >= EVENTS_PER_SECOND_BUDGET,
    );
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Runs in a child process so the figure is not inflated by the other measurements.
fn rss_after_distinct_tuples() {
    let mut tracker = tracker(65_536);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)), 80);
    for i in 0..DISTINCT_TUPLES {
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + (i >> 8))),
            1024 + (i & 0xff) as u16,
        );
        let key = craft::flow_key(IPPROTO_TCP, client, server);
        let at = 1_000_000_000 + u64::from(i) * 100;
        let frame = Frame::plain().tcp(client, server, TcpFlags::SYN);
        let packet = decode::decode(&craft::wire_event(
            EventKind::Syn,
            key,
            Direction::FromPod,
            at,
            &frame,
        ))
        .expect("valid record");
        tracker.on_packet(&packet);
        if i % 100_000 == 0 {
            tracker.sweep(packet.monotonic);
        }
    }
    tracker.sweep(Duration::from_secs(100));
    let after = rss_mib();
    println!("rss {after:.1} {}", tracker.flows_tracked());
}

fn report(what: &str, figure: &str, budget: &str, met: bool) {
    let verdict = if met { "met" } else { "MISSED" };
    println!("{what:<44} {figure:>22}   budget {budget:<22} {verdict}");
}

fn main() {
    if std::env::args().any(|a| a == "rss-child") {
        rss_after_distinct_tuples();
        return;
    }
    events_per_second();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("rss-child")
        .output()
        .expect("run the RSS measurement");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [after, flows] = fields[..] else {
        panic!(
            "RSS child failed: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    report(
        "agent RSS after 1,000,000 distinct 5-tuples",
        &format!("{after:.1} MiB ({flows} kept)"),
        &format!("≤ {RSS_BUDGET_MIB} MiB"),
        after <= RSS_BUDGET_MIB,
    );
}
