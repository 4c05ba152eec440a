//! Kubernetes Events for failing flows (`--events`): `kubectl describe pod` shows why the
//! pod's connections fail.
//!
//! The tracker hands each new failing cause of a known pod's flow to a bounded queue
//! ([`offer`]: it never waits; a full queue counts the report `dropped`). [`write`]
//! consumes the queue off the packet path and writes one `events.k8s.io/v1` Event per
//! (pod, cause, destination) per window. Every report ends up in
//! `netprobe_k8s_events_total{result}`; a failed write is logged, never fatal.
//!
//! The Events are written here rather than with kube-runtime's `Recorder`: the Recorder
//! treats Events with the same reason and regarding object as one series and PATCHes the
//! first one's count, keeping its note, so a second destination failing the same way
//! would only bump a count on the first destination's Event. Creating each Event keeps
//! one note per destination, the memory bounded by our own table, and RBAC to `create`.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use lru::LruCache;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::{
    enrich::Names,
    metrics::{EventResult, Metrics},
    model::{Cause, Flow},
};

/// A flow from a known pod reached a failing cause: what the tracker hands to the
/// Event writer.
#[derive(Clone, Debug, PartialEq)]
pub struct CauseReport {
    /// The source pod.
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub cause: Cause,
    pub reason: Arc<str>,
    pub next: Option<Arc<str>>,
    pub flow: Flow,
}

/// `reportingController` of every Event the agent writes.
pub const REPORTING_CONTROLLER: &str = "netprobe.io/probe-agent";

/// Reports waiting for the writer. A burst beyond it (a node-wide outage seen by every
/// pod at once) is dropped and counted rather than queued without bound.
pub const QUEUE_CAPACITY: usize = 1024;

/// (pod, cause, destination) keys remembered. Beyond it the one written longest ago is
/// forgotten: it is the closest to leaving its window anyway.
const REMEMBERED: NonZeroUsize = NonZeroUsize::new(4096).expect("non-zero");

/// Events one pod gets per window, whatever their causes and destinations: a pod failing
/// to reach a hundred peers at once gets this many in `kubectl describe pod`, not a
/// hundred (like client-go's recorder, which limits Events per object).
pub const PER_POD: u32 = 10;

/// Pods whose budget is remembered; beyond it the one least recently reported goes.
const BUDGETS: NonZeroUsize = NonZeroUsize::new(4096).expect("non-zero");

/// One write waits this long at most: kube-rs sets no read timeout and retries 429s for
/// minutes, and the queue must keep moving.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API server accepts at most (bytes): an Event's note, and its
/// reportingInstance; object names are DNS subdomains of up to 253 characters.
const NOTE_MAX: usize = 1024;
const INSTANCE_MAX: usize = 128;
const NAME_MAX: usize = 253;

/// How the writer behaves.
#[derive(Clone, Debug)]
pub struct EventOptions {
    /// The same pod, cause and destination get one Event per window.
    pub window: Duration,
    /// `reportingInstance`: the node the agent runs on.
    pub instance: String,
}

/// Hands `report` to the Event writer without waiting: when its queue is full (or the
/// writer has stopped) the report is counted `dropped` and let go.
pub fn offer(reports: &mpsc::Sender<CauseReport>, report: CauseReport, metrics: &Metrics) {
    if reports.try_send(report).is_err() {
        metrics.k8s_event(EventResult::Dropped);
    }
}

/// Writes Events for the reports until the queue closes or `shutdown`. The source pod's
/// uid comes from `names` (without it `kubectl describe pod` would not list the Event).
pub async fn write(
    client: Client,
    names: Names,
    options: EventOptions,
    metrics: Arc<Metrics>,
    mut reports: mpsc::Receiver<CauseReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut writer = Writer {
        client,
        names,
        metrics,
        instance: instance(&options.instance),
        dedup: Dedup::new(options.window, REMEMBERED),
        budgets: PodBudgets::new(options.window, PER_POD, BUDGETS),
        last_nanos: 0,
    };
    loop {
        let report = tokio::select! {
            _ = shutdown.changed() => return,
            report = reports.recv() => match report {
                Some(report) => report,
                None => return,
            },
        };
        writer.report(report).await;
    }
}

struct Writer {
    client: Client,
    names: Names,
    metrics: Arc<Metrics>,
    instance: String,
    dedup: Dedup,
    budgets: PodBudgets,
    /// The time in the name of the last Event: names stay unique even when the clock
    /// does not move between two writes.
    last_nanos: i128,
}

impl Writer {
    async fn report(&mut self, report: CauseReport) {
        // A search-path expansion is not a failure: the lookup went on.
        if !report.cause.is_failure() {
            return;
        }
        let key = Key::of(&report);
        let now = Instant::now();
        if !self.dedup.admit(&key, now) {
            self.metrics.k8s_event(EventResult::Deduplicated);
            return;
        }
        let pod = (Arc::clone(&report.namespace), Arc::clone(&report.pod));
        if !self.budgets.spend(&pod, now) {
            // Not written: once the pod's budget is back, the next report of it may be.
            self.dedup.forget(&key);
            self.metrics.k8s_event(EventResult::RateLimited);
            return;
        }
        let event = self.event(&report);
        match self.create(&report.namespace, &event).await {
            Ok(()) => self.metrics.k8s_event(EventResult::Written),
            Err(error) => {
                warn!(
                    namespace = &*report.namespace,
                    pod = &*report.pod,
                    cause = report.cause.as_str(),
                    "writing a Kubernetes Event: {error:#}"
                );
                // Not written: the next report of it may try again.
                self.dedup.forget(&key);
                self.metrics.k8s_event(EventResult::Failed);
            }
        }
    }

    fn event(&mut self, report: &CauseReport) -> Event {
        let now = Timestamp::now();
        let nanos = now.as_nanosecond().max(self.last_nanos + 1);
        self.last_nanos = nanos;
        let uid = self.pod_uid(&report.namespace, &report.pod);
        build_event(
            report,
            uid,
            &self.instance,
            event_name(&report.pod, nanos),
            now,
        )
    }

    fn pod_uid(&self, namespace: &str, pod: &str) -> Option<String> {
        let snapshot = self.names.snapshot();
        let record = snapshot.cluster.pod(namespace, pod)?;
        record.uid.as_ref().map(ToString::to_string)
    }

    async fn create(&self, namespace: &str, event: &Event) -> anyhow::Result<()> {
        let api = Api::<Event>::namespaced(self.client.clone(), namespace);
        tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), event))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {WRITE_TIMEOUT:?}"))??;
        Ok(())
    }
}

/// What makes two reports the same Event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: Arc<str>,
    pod: Arc<str>,
    cause: Cause,
    destination: SocketAddr,
}

impl Key {
    fn of(report: &CauseReport) -> Self {
        Self {
            namespace: Arc::clone(&report.namespace),
            pod: Arc::clone(&report.pod),
            cause: report.cause,
            destination: SocketAddr::new(report.flow.dst_ip, report.flow.dst_port),
        }
    }
}

/// When each key last had an Event written, for at most `capacity` keys.
struct Dedup {
    window: Duration,
    written: LruCache<Key, Instant>,
}

impl Dedup {
    fn new(window: Duration, capacity: NonZeroUsize) -> Self {
        Self {
            window,
            written: LruCache::new(capacity),
        }
    }

    /// Whether `key` is due an Event at `now`; if so, it is not again for a window.
    fn admit(&mut self, key: &Key, now: Instant) -> bool {
        // `peek`, not `get`: the order stays that of the writes, so a full table forgets
        // the key written longest ago.
        let recent = self
            .written
            .peek(key)
            .is_some_and(|&at| now.saturating_duration_since(at) < self.window);
        if !recent {
            self.written.put(key.clone(), now);
        }
        !recent
    }

    fn forget(&mut self, key: &Key) {
        self.written.pop(key);
    }
}

/// How many Events each pod has had in its current window, for at most `capacity` pods.
struct PodBudgets {
    window: Duration,
    per_pod: u32,
    /// (namespace, pod) → when its window started, Events written in it.
    spent: LruCache<(Arc<str>, Arc<str>), (Instant, u32)>,
}

impl PodBudgets {
    fn new(window: Duration, per_pod: u32, capacity: NonZeroUsize) -> Self {
        Self {
            window,
            per_pod,
            spent: LruCache::new(capacity),
        }
    }

    /// Whether `pod` may have one more Event at `now`; if so, it is counted.
    fn spend(&mut self, pod: &(Arc<str>, Arc<str>), now: Instant) -> bool {
        let (started, count) = self.spent.get_or_insert_mut(pod.clone(), || (now, 0));
        if now.saturating_duration_since(*started) >= self.window {
            (*started, *count) = (now, 0);
        }
        if *count >= self.per_pod {
            return false;
        }
        *count += 1;
        true
    }
}

/// The Event for `report` (all but the names chosen by the caller).
fn build_event(
    report: &CauseReport,
    uid: Option<String>,
    instance: &str,
    name: String,
    time: Timestamp,
) -> Event {
    let namespace = report.namespace.to_string();
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(time)),
        type_: Some("Warning".into()),
        reason: Some(camel_case(report.cause)),
        action: Some(action(report.cause).into()),
        note: Some(note(&report.reason, report.next.as_deref())),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace),
            name: Some(report.pod.to_string()),
            uid,
            ..ObjectReference::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

/// The Event's reason: the cause id in the CamelCase Kubernetes reasons use
/// (`no_ready_endpoints` → `NoReadyEndpoints`).
fn camel_case(cause: Cause) -> String {
    cause
        .as_str()
        .split('_')
        .flat_map(|word| {
            let mut chars = word.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars)
        })
        .collect()
}

/// What the pod was doing when it failed.
fn action(cause: Cause) -> &'static str {
    match cause {
        Cause::SearchPathExpansion
        | Cause::NameNotFound
        | Cause::DnsServerError
        | Cause::DnsNoAnswer => "Resolve",
        _ => "Connect",
    }
}

/// The reason and the command that confirms it, within the API server's 1 KiB.
fn note(reason: &str, next: Option<&str>) -> String {
    let note = match next {
        // A sentence of its own, whether the reason ends in a full stop or not.
        Some(next) if reason.ends_with(['.', '?', '!']) => format!("{reason} Next: {next}"),
        Some(next) => format!("{reason}. Next: {next}"),
        None => reason.to_string(),
    };
    if note.len() <= NOTE_MAX {
        return note;
    }
    let ellipsis = '…';
    let cut = note.floor_char_boundary(NOTE_MAX - ellipsis.len_utf8());
    format!("{}{ellipsis}", &note[..cut])
}

/// The reportingInstance: the node name within the API server's limit, never empty
/// (the API server requires one).
fn instance(node: &str) -> String {
    match node.floor_char_boundary(INSTANCE_MAX) {
        0 => "probe-agent".into(),
        cut => node[..cut].into(),
    }
}

/// `<pod>.<time in hex>`, as the kubelet names its Events, cut to a valid object name.
fn event_name(pod: &str, nanos: i128) -> String {
    let suffix = format!(".{nanos:x}");
    let base = &pod[..pod.floor_char_boundary(NAME_MAX.saturating_sub(suffix.len()))];
    // A cut name may end in '-' or '.', which may not come before the suffix's '.'.
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn report(cause: Cause, dst: &str) -> CauseReport {
        let dst: SocketAddr = dst.parse().unwrap();
        CauseReport {
            namespace: "production".into(),
            pod: "checkout-api-5d4e3c2f9b-abc12".into(),
            cause,
            reason: "Service production/payment has no ready endpoints.".into(),
            next: Some(
                "kubectl -n production get endpointslices -l kubernetes.io/service-name=payment"
                    .into(),
            ),
            flow: Flow {
                protocol: Protocol::Tcp,
                src_ip: "10.244.1.5".parse().unwrap(),
                src_port: 41234,
                dst_ip: dst.ip(),
                dst_port: dst.port(),
            },
        }
    }

    #[test]
    fn every_cause_has_a_camel_case_reason() {
        assert_eq!(camel_case(Cause::NoReadyEndpoints), "NoReadyEndpoints");
        assert_eq!(camel_case(Cause::NetworkPolicy), "NetworkPolicy");
        assert_eq!(camel_case(Cause::DnsNoAnswer), "DnsNoAnswer");
        for &cause in Cause::ALL {
            let reason = camel_case(cause);
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
            assert!(
                reason.starts_with(|c: char| c.is_ascii_uppercase()),
                "{reason}"
            );
        }
    }

    #[test]
    fn dns_causes_are_resolve_and_the_others_connect() {
        assert_eq!(action(Cause::NameNotFound), "Resolve");
        assert_eq!(action(Cause::DnsServerError), "Resolve");
        assert_eq!(action(Cause::NothingListening), "Connect");
        assert_eq!(action(Cause::NodeDatapath), "Connect");
    }

    #[test]
    fn a_long_note_is_cut_on_a_char_boundary_within_1_kib() {
        assert_eq!(note("Refused.", None), "Refused.");
        assert_eq!(note("Refused.", Some("curl x")), "Refused. Next: curl x");
        assert_eq!(note("Refused", Some("curl x")), "Refused. Next: curl x");
        // 'é' is two bytes: 1,023 bytes of them cannot be cut evenly.
        let long = "é".repeat(600);
        let cut = note(&long, Some("kubectl get pods"));
        assert!(cut.len() <= NOTE_MAX, "{}", cut.len());
        assert!(cut.len() > NOTE_MAX - 4, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn names_are_unique_per_time_and_valid_for_any_pod_name() {
        assert_eq!(event_name("web-0", 0x187a), "web-0.187a");
        let long = format!("{}-{}", "a".repeat(240), "b".repeat(12));
        let name = event_name(&long, 0x1879_6f2a_0000_0000);
        assert_eq!(name.len(), NAME_MAX);
        assert!(name.ends_with(".18796f2a00000000"));
        let dash = format!("{}-b", "a".repeat(236));
        assert_eq!(
            event_name(&dash, 0x1879_6f2a_0000_0000),
            format!("{}.18796f2a00000000", "a".repeat(236))
        );
    }

    #[test]
    fn the_instance_is_bounded_and_never_empty() {
        assert_eq!(instance("kind-worker"), "kind-worker");
        assert_eq!(instance(""), "probe-agent");
        assert_eq!(instance(&"n".repeat(300)).len(), INSTANCE_MAX);
    }

    #[test]
    fn the_event_regards_the_source_pod_as_a_warning() {
        let time = Timestamp::from_second(1_795_000_000).unwrap();
        let event = build_event(
            &report(Cause::NoReadyEndpoints, "10.96.45.123:80"),
            Some("uid-1".into()),
            "kind-worker",
            "checkout.1".into(),
            time,
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["apiVersion"], "events.k8s.io/v1");
        assert_eq!(json["kind"], "Event");
        assert_eq!(json["metadata"]["namespace"], "production");
        assert_eq!(json["type"], "Warning");
        assert_eq!(json["reason"], "NoReadyEndpoints");
        assert_eq!(json["action"], "Connect");
        assert_eq!(json["reportingController"], REPORTING_CONTROLLER);
        assert_eq!(json["reportingInstance"], "kind-worker");
        assert_eq!(
            json["regarding"],
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "namespace": "production",
                "name": "checkout-api-5d4e3c2f9b-abc12", "uid": "uid-1"})
        );
        assert_eq!(
            json["note"],
            "Service production/payment has no ready endpoints. Next: kubectl -n production get endpointslices -l kubernetes.io/service-name=payment"
        );
        // The events.k8s.io/v1 API rejects the core/v1-only fields on create.
        for unset in [
            "deprecatedCount",
            "deprecatedFirstTimestamp",
            "deprecatedSource",
            "series",
        ] {
            assert!(json.get(unset).is_none(), "{unset}");
        }
    }

    #[test]
    fn dedup_admits_a_key_once_per_window() {
        let mut dedup = Dedup::new(Duration::from_secs(600), REMEMBERED);
        let t0 = Instant::now();
        let key = Key::of(&report(Cause::NoReadyEndpoints, "10.96.45.123:80"));
        let other_port = Key::of(&report(Cause::NoReadyEndpoints, "10.96.45.123:8080"));
        let other_cause = Key::of(&report(Cause::NothingListening, "10.96.45.123:80"));
        assert!(dedup.admit(&key, t0));
        assert!(!dedup.admit(&key, t0 + Duration::from_secs(599)));
        assert!(dedup.admit(&other_port, t0));
        assert!(dedup.admit(&other_cause, t0));
        assert!(dedup.admit(&key, t0 + Duration::from_secs(600)));
        assert!(!dedup.admit(&key, t0 + Duration::from_secs(601)));
        dedup.forget(&key);
        assert!(dedup.admit(&key, t0 + Duration::from_secs(602)));
    }

    #[test]
    fn a_full_dedup_table_forgets_the_oldest_write() {
        let mut dedup = Dedup::new(Duration::from_secs(600), NonZeroUsize::new(2).unwrap());
        let t0 = Instant::now();
        let keys: Vec<Key> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .into_iter()
            .map(|dst| Key::of(&report(Cause::NothingListening, dst)))
            .collect();
        assert!(dedup.admit(&keys[0], t0));
        assert!(dedup.admit(&keys[1], t0));
        // A deduplicated report does not make its key younger.
        assert!(!dedup.admit(&keys[0], t0));
        assert!(dedup.admit(&keys[2], t0));
        assert_eq!(dedup.written.len(), 2);
        assert!(dedup.admit(&keys[0], t0), "the oldest was forgotten");
        assert!(!dedup.admit(&keys[2], t0));
    }

    #[test]
    fn a_pod_gets_at_most_its_budget_per_window() {
        let window = Duration::from_secs(600);
        let mut budgets = PodBudgets::new(window, 3, NonZeroUsize::new(2).unwrap());
        let pod = |name: &str| (Arc::from("production"), Arc::from(name));
        let t0 = Instant::now();
        let spent: Vec<bool> = (0..5).map(|_| budgets.spend(&pod("a"), t0)).collect();
        assert_eq!(spent, [true, true, true, false, false]);
        // Another pod has a budget of its own.
        assert!(budgets.spend(&pod("b"), t0));
        // A new window, a new budget.
        assert!(!budgets.spend(&pod("a"), t0 + window - Duration::from_secs(1)));
        assert!(budgets.spend(&pod("a"), t0 + window));
    }
}
