//! Agent budgets (docs/budgets.md, "cargo xtask bench"): decoded events per second through
//! decode + track on one core (and each half alone, so a miss says where the time goes),
//! heap allocations per event, the bytes of a SYN's record, how long the API's usual
//! question holds the tracker, and resident memory after 1,000,000 distinct 5-tuples. Prints one line per figure with its budget and the figure
//! issue 16 measured before, so the next run can be compared. Run by `cargo xtask bench`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lab::craft::{self, Frame, TcpFlags};
use probe_agent::{
    decode,
    enrich::{Directory, Names, PodRecord, PodView, ServiceRecord, object_key},
    metrics::Metrics,
    model::Verdict,
    serve::HeadFilter,
    track::{Clock, Tracker, TrackerConfig},
};
use probe_ebpf::{Direction, EventKind, IPPROTO_TCP, PacketEvent};

/// Issue 16's budgets: without names, and with 10,000 pods named.
const EVENTS_PER_SECOND_BUDGET: f64 = 3_000_000.0;
const NAMED_EVENTS_PER_SECOND_BUDGET: f64 = 2_500_000.0;
/// Issue 16's figures before its work, for comparison.
const EVENTS_PER_SECOND_BEFORE: &str = "1.02 M events/s";
/// Before the tracker's hot path stopped allocating and formatting per event (same
/// machine, quiet): events/s without and with names, allocations per event, track ns/event.
const TRACK_BEFORE: &str =
    "0.87 M events/s (0.82 M named), 5.83 allocations/event, track 1,010 ns/event";
/// Before the flow table moved into a slab reserved up front (same machine, quiet).
const TABLE_BEFORE: &str = "1.64-1.96 M events/s (1.71-1.86 M named), 0.33 allocations/event";
const RSS_BEFORE: &str = "55.9-56.1 MiB (58.9-59.1 MiB named)";
const RECORD_BYTES_BEFORE: usize = size_of::<PacketEvent>();
const RSS_BUDGET_MIB: f64 = 64.0;
/// The API's usual question (`/v1/verdicts?limit=100`, what the soak's wrk asks) holds the
/// tracker's lock while it reads: under a flood the tracker must not wait long for it.
const NEWEST_VERDICTS_BUDGET: Duration = Duration::from_millis(1);
const NEWEST_VERDICTS_BEFORE: &str =
    "967 µs, the whole table walked for every question; 11.1-12.4 ms matching none";
const DISTINCT_TUPLES: u32 = 1_000_000;
/// Rounds of the decode+track rate, each with a fresh tracker.
const ROUNDS: usize = 5;
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

/// Wire records for `flows` distinct connections to port `server_port`: a SYN each, then a SYN-ACK for half of
/// them, a RST for the other half, as the kernel would hand them over.
fn wire_records(flows: u32, server_port: u16) -> Vec<Vec<u8>> {
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)), server_port);
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

/// The system allocator, counting allocations (and reallocations): how many the hot path
/// makes per event; and the bytes held, so what the names cost is seen apart from RSS.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static HELD: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        HELD.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        HELD.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        HELD.fetch_add(new_size as u64, Ordering::Relaxed);
        HELD.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Heap bytes held (as requested: the allocator's rounding and headers are not counted).
fn held_bytes() -> u64 {
    HELD.load(Ordering::Relaxed)
}

fn tracker(capacity: usize) -> Tracker {
    tracker_with(capacity, Arc::new(Metrics::default()))
}

/// A tracker reporting to `metrics`: the agent has one registry for its life, so label
/// sets a warm-up made are not made again by the tracker measured after it.
fn tracker_with(capacity: usize, metrics: Arc<Metrics>) -> Tracker {
    Tracker::new(
        TrackerConfig {
            flow_capacity: NonZeroUsize::new(capacity).unwrap(),
            ..TrackerConfig::default()
        },
        Clock::new(),
        metrics,
    )
}

fn events_per_second(names: Option<Names>) {
    let named = names.is_some();
    let metrics = Arc::new(Metrics::default());
    let tracker = |capacity| {
        let tracker = tracker_with(capacity, Arc::clone(&metrics));
        match &names {
            Some(names) => tracker.with_names(names.clone()),
            None => tracker,
        }
    };
    let records = wire_records(200_000, 80);
    let more = wire_records(100_000, 8080);
    let mut tracker_ = tracker(65_536);
    // One warm-up pass over every record, then the measured ones over the same records.
    for raw in records.iter().chain(&more) {
        tracker_.on_packet(&decode::decode(raw).unwrap());
    }
    drop(tracker_);
    // Rounds of a fresh tracker: its table filled (no eviction), then flooded past
    // capacity (each SYN evicts). A shared 2-core machine is noisy: the median round is
    // the figure, the spread printed beside it.
    let (mut fresh_rates, mut full_rates) = (Vec::new(), Vec::new());
    let (mut fresh_allocations, mut full_allocations) = (0, 0);
    for _ in 0..ROUNDS {
        let mut measured = tracker(65_536);
        let allocated = allocations();
        let started = Instant::now();
        for raw in &records {
            let packet = decode::decode(raw).expect("valid record");
            measured.on_packet(&packet);
        }
        let elapsed = started.elapsed();
        fresh_allocations += allocations() - allocated;
        fresh_rates.push(records.len() as f64 / elapsed.as_secs_f64());
        // The steady state of a full table, under a flood of new flows, measured apart.
        let allocated = allocations();
        let started = Instant::now();
        for raw in &more {
            measured.on_packet(&decode::decode(raw).expect("valid record"));
        }
        let elapsed = started.elapsed();
        full_allocations += allocations() - allocated;
        full_rates.push(more.len() as f64 / elapsed.as_secs_f64());
        measured.sweep(Duration::from_secs(10));
    }
    let per_event = fresh_allocations as f64 / (ROUNDS * records.len()) as f64;
    let (rate, spread) = median_and_spread(&mut fresh_rates);
    let budget = if named {
        NAMED_EVENTS_PER_SECOND_BUDGET
    } else {
        EVENTS_PER_SECOND_BUDGET
    };
    report(
        if named {
            "agent decode+track, one core, 10,000 pods named"
        } else {
            "agent decode+track, one core"
        },
        &format!("{:.2} M events/s", rate / 1e6),
        &format!("≥ {:.1} M events/s", budget / 1e6),
        rate >= budget,
    );
    anchor(&format!(
        "median of {ROUNDS} rounds of {} events; rounds {spread}",
        records.len()
    ));
    anchor(&format!(
        "before issue 16: {EVENTS_PER_SECOND_BEFORE}, without names"
    ));
    anchor(&format!(
        "before the allocation-free tracker: {TRACK_BEFORE}"
    ));
    anchor(&format!("before the slab flow table: {TABLE_BEFORE}"));
    report(
        "  heap allocations per event (decode+track)",
        &format!("{per_event:.2} ({fresh_allocations} in all)"),
        "0",
        per_event == 0.0,
    );
    let full_table = full_allocations as f64 / (ROUNDS * more.len()) as f64;
    report(
        "  the same, the flow table full",
        &format!("{full_table:.3} ({full_allocations} in all)"),
        "0",
        full_table == 0.0,
    );
    // A flood meets a full table: each new flow evicts the oldest (taken out of both
    // indexes and dropped, which a fresh table's first 65,536 flows do not pay).
    let (full_rate, full_spread) = median_and_spread(&mut full_rates);
    report(
        "  events/s, the flow table full (each SYN evicts)",
        &format!("{:.2} M events/s", full_rate / 1e6),
        &format!("≥ {:.1} M events/s", budget / 1e6),
        full_rate >= budget,
    );
    anchor(&format!("rounds {full_spread}"));

    // Where the time goes: each half alone, same records, same run. Decoding is timed
    // without keeping its packets (filling a vector of them would time page faults).
    let allocated = allocations();
    let started = Instant::now();
    for raw in &records {
        std::hint::black_box(decode::decode(raw).expect("valid record"));
    }
    let decode_elapsed = started.elapsed();
    let decode_allocs = (allocations() - allocated) as f64 / records.len() as f64;
    let packets: Vec<_> = records
        .iter()
        .map(|raw| decode::decode(raw).expect("valid record"))
        .collect();
    let mut track_only = tracker(65_536);
    let allocated = allocations();
    let started = Instant::now();
    for packet in &packets {
        track_only.on_packet(packet);
    }
    let track_elapsed = started.elapsed();
    let track_allocs = (allocations() - allocated) as f64 / records.len() as f64;
    let per = |elapsed: Duration| elapsed.as_nanos() as f64 / records.len() as f64;
    println!(
        "  profile: decode {:.0} ns/event ({decode_allocs:.2} allocations), track {:.0} ns/event \
         ({track_allocs:.2} allocations); together {:.0} ns/event (the median round)",
        per(decode_elapsed),
        per(track_elapsed),
        1e9 / rate
    );
}

/// How long the tracker is held by the API's usual question on a full table (the newest
/// 100 verdicts), against a filter that matches nothing, which has to read every flow.
fn newest_verdicts_of_a_full_table() {
    let mut tracker = tracker(65_536);
    for raw in &wire_records(100_000, 80) {
        tracker.on_packet(&decode::decode(raw).expect("valid record"));
    }
    let time = |head: &HeadFilter, keep: &dyn Fn(&Verdict) -> bool, reps: u32| {
        let mut times: Vec<Duration> = (0..reps)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(tracker.verdicts_where(head, keep, 100));
                started.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let newest = time(&|_, _, _| true, &|_| true, 200);
    // Asked of names (or time), every flow's verdict is built; asked of verdict, cause,
    // protocol, address or port, none is.
    let nothing = time(&|_, _, _| true, &|_| false, 5);
    let no_head = time(&|_, _, _| false, &|_| true, 5);
    report(
        "API: newest 100 verdicts, full table, held",
        &format!("{:.1} µs", newest.as_secs_f64() * 1e6),
        &format!("≤ {} ms", NEWEST_VERDICTS_BUDGET.as_millis()),
        newest <= NEWEST_VERDICTS_BUDGET,
    );
    anchor(&format!(
        "a filter matching none of the {} flows: {:.1} ms by names, {:.2} ms by verdict, \
         cause, protocol, address or port; before: {NEWEST_VERDICTS_BEFORE}",
        tracker.flows_tracked(),
        nothing.as_secs_f64() * 1e3,
        no_head.as_secs_f64() * 1e3
    ));
}

/// The median of `rates`, and their range.
fn median_and_spread(rates: &mut [f64]) -> (f64, String) {
    rates.sort_by(f64::total_cmp);
    let spread = format!(
        "{:.2}-{:.2} M events/s",
        rates[0] / 1e6,
        rates[rates.len() - 1] / 1e6
    );
    (rates[rates.len() / 2], spread)
}

fn rss_mib() -> f64 {
    lab::rss_kib(std::process::id()).expect("VmRSS") as f64 / 1024.0
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
    // As the agent does once a second (run/tracking.rs): freed pages go back to the
    // kernel, so what is measured is what is held.
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    let after = rss_mib();
    println!("rss {after:.1} {}", tracker.flows_tracked());
}

/// A figure from before, printed under the one it compares with.
fn anchor(text: &str) {
    println!("{:<44} {text}", "");
}

/// The bytes of the records the kernel hands over for a plain IPv4 SYN (what the flood is
/// made of), against a whole PacketEvent before variable-length records.
fn syn_record_bytes() {
    let (client, server) = (
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5)), 41234),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)), 80),
    );
    let frame = Frame::plain().tcp(client, server, TcpFlags::SYN);
    let record = craft::wire_event(
        EventKind::Syn,
        craft::flow_key(IPPROTO_TCP, client, server),
        Direction::FromPod,
        1,
        &frame,
    );
    report(
        "ring record of a SYN",
        &format!("{} B ({} captured)", record.len(), frame.len()),
        "what a SYN needs",
        record.len() < RECORD_BYTES_BEFORE,
    );
    anchor(&format!(
        "before issue 16: {RECORD_BYTES_BEFORE} B (448 captured); the issue wrote 520"
    ));
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
    syn_record_bytes();
    events_per_second(None);
    let before = held_bytes();
    let names = cluster_names(CLUSTER_PODS);
    let names_heap = (held_bytes() - before) as f64 / (1024.0 * 1024.0);
    events_per_second(Some(names));
    newest_verdicts_of_a_full_table();
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
    anchor(&format!("before the slab flow table: {RSS_BEFORE}"));
    // What the named figure's names are made of, without the allocator's overhead.
    println!(
        "{:<44} {:>22}",
        "  the names' own heap (10,000 pods)",
        format!("{names_heap:.1} MiB")
    );
}
