//! Agent budgets (docs/budgets.md, "cargo xtask bench"): decoded events per second through
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
    enrich::{Directory, Names, PodRecord, PodView, ServiceRecord, object_key},
    metrics::Metrics,
    track::{Clock, Tracker, TrackerConfig},
};
use probe_ebpf::{Direction, EventKind, IPPROTO_TCP};

const EVENTS_PER_SECOND_BUDGET: f64 = 1_000_000.0;
const RSS_BUDGET_MIB: f64 = 128.0;
const DISTINCT_TUPLES: u32 = 1_000_000;
/// A large cluster, as the Kubernetes issue sizes it.
const CLUSTER_PODS: u32 = 10_000;

/// Names for a cluster of `pods` pods (IPs 10.244.x.y, 100 Deployments in 10 namespaces,
/// the clients of [`wire_records`] among them) and the Service its flows go to.
fn cluster_names(pods: u32) -> Names {
    let mut directory = Directory::default();
    for i in 0..pods {
        let view: PodView = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("app-{}-7c9f8b6d4-{i:05}", i % 100),
                "namespace": format!("team-{}", i % 10),
                "creationTimestamp": "2026-11-23T09:00:00Z",
                "labels": {"pod-template-hash": "7c9f8b6d4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("app-{}-7c9f8b6d4", i % 100), "uid": "u", "controller": true}],
            },
            "spec": {"nodeName": format!("node-{}", i % 50)},
            "status": {"phase": "Running", "hostIP": format!("172.18.0.{}", i % 50),
                       "podIP": Ipv4Addr::new(10, 244, (i >> 16) as u8, (i >> 8) as u8).to_string()},
        }))
        .expect("a pod");
        directory
            .pods
            .apply(object_key(&view.metadata), PodRecord::from(&view));
    }
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "payment-service", "namespace": "team-0"},
        "spec": {"clusterIP": "10.96.0.20"},
    }))
    .expect("a Service");
    directory
        .services
        .apply(object_key(&service.metadata), ServiceRecord::from(&service));
    let names = Names::none();
    names.publish(directory.snapshot());
    names
}

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
        // Wire format 2: the tuple as on the wire, server → client for the answer.
        records.push(craft::wire_event(
            kind,
            craft::flow_key(IPPROTO_TCP, server, client),
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

fn events_per_second(names: Option<Names>) {
    let named = names.is_some();
    let tracker = |capacity| match &names {
        Some(names) => tracker(capacity).with_names(names.clone()),
        None => tracker(capacity),
    };
    let records = wire_records(200_000);
    let mut tracker_ = tracker(65_536);
    // One warm-up pass, then the measured one over the same records.
    for raw in &records {
        tracker_.on_packet(&decode::decode(raw).unwrap());
    }
    let mut tracker = tracker(65_536);
    let started = Instant::now();
    for raw in &records {
        let packet = decode::decode(raw).expect("valid record");
        tracker.on_packet(&packet);
    }
    tracker.sweep(Duration::from_secs(10));
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    report(
        if named {
            "agent decode+track, one core, 10,000 pods named"
        } else {
            "agent decode+track, one core"
        },
        &format!("{:.2} M events/s", rate / 1e6),
        &format!("≥ {:.1} M events/s", EVENTS_PER_SECOND_BUDGET / 1e6),
        rate >= EVENTS_PER_SECOND_BUDGET,
    );
}

fn rss_mib() -> f64 {
    xtask::lab::rss_kib(std::process::id()).expect("VmRSS") as f64 / 1024.0
}

/// Runs in a child process so the figure is not inflated by the other measurements.
fn rss_after_distinct_tuples(names: Option<Names>) {
    let mut tracker = tracker(65_536);
    if let Some(names) = names {
        tracker = tracker.with_names(names);
    }
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
        rss_after_distinct_tuples(None);
        return;
    }
    if std::env::args().any(|a| a == "rss-named-child") {
        rss_after_distinct_tuples(Some(cluster_names(CLUSTER_PODS)));
        return;
    }
    events_per_second(None);
    events_per_second(Some(cluster_names(CLUSTER_PODS)));
    for (child, what) in [
        ("rss-child", "agent RSS after 1,000,000 distinct 5-tuples"),
        ("rss-named-child", "same, with 10,000 pods named"),
    ] {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(child)
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
            what,
            &format!("{after:.1} MiB ({flows} kept)"),
            &format!("≤ {RSS_BUDGET_MIB} MiB"),
            after <= RSS_BUDGET_MIB,
        );
    }
}
