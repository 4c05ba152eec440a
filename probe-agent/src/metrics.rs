//! Prometheus metrics (docs/metrics.md).
//!
//! Every label value comes from a bounded set: fixed enums for packet kinds, loss sources
//! and decode errors, the DNS rcode names, and a cap on the number of verdict label sets,
//! so a busy node cannot grow the exposition (and the scraper's memory) without limit.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
    },
    registry::Registry,
};

use crate::model::{Cause, DnsSummary, Endpoint, Verdict, VerdictKind};

mod exposition;
mod handles;
mod kinds;
mod latency;

pub use exposition::{Format, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
pub use kinds::{AuthResult, DecodeErrorKind, EventResult, KubeKind, LossSource, PacketKind};
pub use latency::{BUCKETS, Latency};

/// Distinct `netprobe_verdicts_total` label sets kept before new ones go to `other`.
pub const DEFAULT_MAX_SERIES: usize = 2000;

/// The label value that overflowing, unknown or unbounded values are counted under.
const OTHER: &str = "other";

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
    #[prometheus(flatten)]
    path: PathLabels,
}

/// Who talked to whom: bounded names (namespaces, workloads, Services, the port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    src_namespace: String,
    src_workload: String,
    dst_namespace: String,
    dst_workload: String,
    dst_service: String,
    dst_port: String,
}

/// What a flow's metrics are labelled by, borrowed from a verdict or from a flow's
/// state: the hot path builds no [`Verdict`] to count one.
#[derive(Clone, Copy, Debug)]
pub struct FlowLabels<'a> {
    pub verdict: VerdictKind,
    pub dst_port: u16,
    pub src: Option<&'a Arc<Endpoint>>,
    pub dst: Option<&'a Arc<Endpoint>>,
    pub dns: Option<&'a DnsSummary>,
}

impl<'a> From<&'a Verdict> for FlowLabels<'a> {
    fn from(v: &'a Verdict) -> Self {
        Self {
            verdict: v.verdict,
            dst_port: v.flow.dst_port,
            src: v.src.as_ref(),
            dst: v.dst.as_ref(),
            dns: v.dns.as_ref(),
        }
    }
}

impl VerdictLabels {
    fn of(v: &FlowLabels) -> Self {
        Self {
            verdict: v.verdict.as_str(),
            path: PathLabels::of(v),
        }
    }

    fn overflow(verdict: &'static str) -> Self {
        Self {
            verdict,
            path: PathLabels::overflow(),
        }
    }
}

impl PathLabels {
    fn of(v: &FlowLabels) -> Self {
        Self {
            src_namespace: endpoint_label(v.src, |e| &e.namespace),
            src_workload: endpoint_label(v.src, |e| &e.workload),
            dst_namespace: endpoint_label(v.dst, |e| &e.namespace),
            dst_workload: endpoint_label(v.dst, |e| &e.workload),
            dst_service: endpoint_label(v.dst, |e| &e.service),
            dst_port: v.dst_port.to_string(),
        }
    }

    /// The one label set past the cap.
    fn overflow() -> Self {
        let other = || OTHER.to_string();
        Self {
            src_namespace: other(),
            src_workload: other(),
            dst_namespace: other(),
            dst_workload: other(),
            dst_service: other(),
            dst_port: other(),
        }
    }
}

/// One name of a flow end as a label value: escaped, empty where unknown.
fn endpoint_label(end: Option<&Arc<Endpoint>>, name: fn(&Endpoint) -> &Option<Arc<str>>) -> String {
    end.map(|end| &**end)
        .and_then(|end| name(end).as_deref())
        .map(escape)
        .unwrap_or_default()
}

/// prometheus-client 0.23 writes label values verbatim; names from the Kubernetes API are
/// safe, but escape anyway so one odd value cannot corrupt the whole exposition.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `netprobe_dns_failures_total`: which workload failed to resolve which name, how.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DnsFailureLabels {
    src_namespace: String,
    src_workload: String,
    qname: String,
    rcode: &'static str,
}

impl DnsFailureLabels {
    /// `None` unless `v` is a failed DNS lookup.
    fn of(v: &FlowLabels) -> Option<Self> {
        let dns = v.dns?;
        let rcode = match v.verdict {
            VerdictKind::DnsTimeout => "TIMEOUT",
            kind if kind.is_failure() => dns.rcode.as_deref().map_or(OTHER, rcode_label),
            _ => return None,
        };
        Some(Self {
            src_namespace: endpoint_label(v.src, |e| &e.namespace),
            src_workload: endpoint_label(v.src, |e| &e.workload),
            qname: escape(&dns.qname.to_ascii_lowercase()),
            rcode,
        })
    }

    fn overflow(rcode: &'static str) -> Self {
        Self {
            src_namespace: OTHER.to_string(),
            src_workload: OTHER.to_string(),
            qname: OTHER.to_string(),
            rcode,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KubeLabels {
    kind: KubeKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabels {
    cause: Cause,
}

/// A family with at most `max` label sets; later ones are counted under an overflow set
/// (`other`). The lock makes check-and-create atomic, so the cap is exact.
struct CappedFamily<L, M = Counter, C = fn() -> M> {
    family: Family<L, M, C>,
    series: Mutex<usize>,
    max: usize,
}

impl<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static>
    CappedFamily<L>
{
    fn new(max: usize) -> Self {
        Self::with_constructor(max, Counter::default)
    }

    fn counter(&self, labels: L, overflow: impl FnOnce(&L) -> L) -> Counter {
        self.metric(labels, overflow)
    }
}

impl<L, M, C> CappedFamily<L, M, C>
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    fn with_constructor(max: usize, constructor: C) -> Self {
        Self {
            family: Family::new_with_constructor(constructor),
            series: Mutex::new(0),
            max,
        }
    }

    /// The metric of `labels`, or of `overflow(labels)` once `max` sets exist.
    fn metric(&self, labels: L, overflow: impl FnOnce(&L) -> L) -> M {
        if let Some(metric) = self.family.get(&labels) {
            return metric.clone();
        }
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = if self.family.get(&labels).is_some() {
            labels
        } else if *series < self.max {
            *series += 1;
            labels
        } else {
            overflow(&labels)
        };
        self.family.get_or_create(&labels).clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventResultLabels {
    result: EventResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthResultLabels {
    result: AuthResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PacketLabels {
    kind: PacketKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RcodeLabels {
    rcode: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LossLabels {
    source: LossSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecodeErrorLabels {
    reason: DecodeErrorKind,
}

/// DNS response codes 0–11 by value (IANA "DNS RCODEs"); the 4-bit header field can hold
/// 12–15, which are unassigned, and extended rcodes need EDNS, which we do not parse.
const RCODES: [&str; 12] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "DSOTYPENI",
];

/// The rcode label for a name (any case) or a decimal value; anything else is `other`.
fn rcode_label(rcode: &str) -> &'static str {
    let rcode = rcode.trim();
    let by_value = rcode.parse::<usize>().ok().and_then(|n| RCODES.get(n));
    let by_name = || RCODES.iter().find(|name| name.eq_ignore_ascii_case(rcode));
    by_value.or_else(by_name).copied().unwrap_or(OTHER)
}

/// The agent's metrics, exposed with the `netprobe_` prefix.
pub struct Metrics {
    registry: Registry,
    verdicts: CappedFamily<VerdictLabels>,
    dns_failures: CappedFamily<DnsFailureLabels>,
    /// Counters by verdict, port and the identity of the two named ends: the hot path
    /// skips building and hashing seven label strings for every final verdict.
    verdict_counters: handles::Handles<VerdictKind, Counter>,
    packets: Family<PacketLabels, Counter>,
    /// Handles on `packets`' fixed series: the hot path skips the family's lock and hash.
    packet_counters: Vec<Counter>,
    dns_responses: Family<RcodeLabels, Counter>,
    events_lost: Family<LossLabels, Counter>,
    decode_errors: Family<DecodeErrorLabels, Counter>,
    flows_tracked: Gauge,
    attached_interfaces: Gauge,
    netlink_overruns: Counter,
    reattached: Counter,
    events_emitted: Counter,
    events_processed: Counter,
    ready: Gauge,
    kube_objects: Family<KubeLabels, Gauge>,
    kube_watch_errors: Family<KubeLabels, Counter>,
    causes: Family<CauseLabels, Counter>,
    /// Handles on `causes`' series, by cause: the hot path skips the family's lock.
    cause_counters: HashMap<Cause, Counter, foldhash::fast::RandomState>,
    dns_search_expansions: Counter,
    node_datapath_down: Gauge,
    k8s_events: Family<EventResultLabels, Counter>,
    api_auth: Family<AuthResultLabels, Counter>,
    latencies: latency::Latencies,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERIES)
    }
}

impl Metrics {
    /// `max_series` bounds the distinct `netprobe_verdicts_total` label sets; beyond it each
    /// verdict gets one more series with every other label `other`.
    pub fn new(max_series: usize) -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("netprobe"),
            verdicts: CappedFamily::new(max_series),
            dns_failures: CappedFamily::new(max_series / 4),
            verdict_counters: handles::Handles::default(),
            packets: Family::default(),
            packet_counters: Vec::new(),
            dns_responses: Family::default(),
            events_lost: Family::default(),
            decode_errors: Family::default(),
            flows_tracked: Gauge::default(),
            attached_interfaces: Gauge::default(),
            netlink_overruns: Counter::default(),
            reattached: Counter::default(),
            events_emitted: Counter::default(),
            events_processed: Counter::default(),
            ready: Gauge::default(),
            kube_objects: Family::default(),
            kube_watch_errors: Family::default(),
            causes: Family::default(),
            cause_counters: HashMap::default(),
            dns_search_expansions: Counter::default(),
            node_datapath_down: Gauge::default(),
            k8s_events: Family::default(),
            api_auth: Family::default(),
            latencies: latency::Latencies::new(max_series / 4),
        };
        // Series of fixed label sets exist from the start at 0, so `rate()` and alerts on
        // them work before the first increment.
        metrics.packet_counters = PacketKind::ALL
            .iter()
            .map(|&kind| {
                metrics
                    .packets
                    .get_or_create(&PacketLabels { kind })
                    .clone()
            })
            .collect();
        for source in LossSource::ALL {
            drop(metrics.events_lost.get_or_create(&LossLabels { source }));
        }
        for kind in KubeKind::ALL {
            drop(
                metrics
                    .kube_watch_errors
                    .get_or_create(&KubeLabels { kind }),
            );
        }
        for &cause in Cause::ALL.iter().filter(|c| c.is_failure()) {
            let counter = metrics.causes.get_or_create(&CauseLabels { cause }).clone();
            metrics.cause_counters.insert(cause, counter);
        }
        for result in EventResult::ALL {
            drop(
                metrics
                    .k8s_events
                    .get_or_create(&EventResultLabels { result }),
            );
        }
        for result in AuthResult::ALL {
            drop(metrics.api_auth.get_or_create(&AuthResultLabels { result }));
        }
        for reason in DecodeErrorKind::ALL {
            drop(
                metrics
                    .decode_errors
                    .get_or_create(&DecodeErrorLabels { reason }),
            );
        }
        metrics.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "verdicts",
            "Flows that reached a final verdict",
            self.verdicts.family.clone(),
        );
        r.register(
            "dns_failures",
            "Failed DNS lookups (final verdicts) by client workload, name and rcode (TIMEOUT: no answer)",
            self.dns_failures.family.clone(),
        );
        r.register(
            "packets",
            "Verdict-relevant packets seen by the kernel program",
            self.packets.clone(),
        );
        r.register(
            "dns_responses",
            "DNS responses by response code",
            self.dns_responses.clone(),
        );
        r.register(
            "events_lost",
            "Events lost before tracking (kernel: ring buffer full, agent: queue full)",
            self.events_lost.clone(),
        );
        r.register(
            "decode_errors",
            "Kernel events the agent could not decode",
            self.decode_errors.clone(),
        );
        r.register(
            "flows_tracked",
            "Flows in the tracking table",
            self.flows_tracked.clone(),
        );
        r.register(
            "attached_interfaces",
            "Interfaces the probe is attached to",
            self.attached_interfaces.clone(),
        );
        r.register(
            "netlink_overruns",
            "Overflows of the interface watch (netlink ENOBUFS), each answered by a full relisting",
            self.netlink_overruns.clone(),
        );
        r.register(
            "reattached",
            "Hooks where another program had been put ahead of the probe's, which was put \
             first again (checked every 5 s)",
            self.reattached.clone(),
        );
        r.register(
            "kernel_events",
            "Events the kernel program emitted (handed over or lost to a full ring buffer); \
             equals processed + lost + decode errors once the agent has caught up",
            self.events_emitted.clone(),
        );
        r.register(
            "events_processed",
            "Kernel events decoded and tracked by the agent",
            self.events_processed.clone(),
        );
        r.register(
            "ready",
            "1 once the eBPF programs are loaded and attached",
            self.ready.clone(),
        );
        r.register(
            "kube_objects",
            "Kubernetes objects known for naming flows",
            self.kube_objects.clone(),
        );
        r.register(
            "kube_watch_errors",
            "Failed Kubernetes watches (retried with backoff)",
            self.kube_watch_errors.clone(),
        );
        r.register(
            "causes",
            "Flows that reached a failing verdict, by why (the cause field of the API)",
            self.causes.clone(),
        );
        r.register(
            "dns_search_expansions",
            "NXDOMAIN answers to search-path expansions of a lookup that went on (not failures)",
            self.dns_search_expansions.clone(),
        );
        r.register(
            "node_datapath_down",
            "1 while most pod pairs on this node time out at once (cause node_datapath)",
            self.node_datapath_down.clone(),
        );
        r.register(
            "k8s_events",
            "Kubernetes Events for failing causes (--events): written, deduplicated within \
             the window, failed to write, dropped (the writer's queue was full), rate_limited \
             (the source pod had its 10 Events of the window)",
            self.k8s_events.clone(),
        );
        r.register(
            "api_auth",
            "API requests checked with --api-auth kube: allowed, unauthenticated (401), \
             forbidden (403), unavailable (503: the Kubernetes API could not answer)",
            self.api_auth.clone(),
        );
        self.latencies.register(r);
        self
    }

    /// Counts an overflow of the interface watch.
    pub fn netlink_overrun(&self) {
        self.netlink_overruns.inc();
    }

    /// Counts hooks where the probe's program was put first again.
    pub fn reattached(&self, n: u64) {
        self.reattached.inc_by(n);
    }

    /// Counts a flow reaching a final verdict.
    pub fn verdict_reached<'a>(&self, v: impl Into<FlowLabels<'a>>) {
        let v = v.into();
        if let Some(labels) = DnsFailureLabels::of(&v) {
            self.dns_failures
                .counter(labels, |l| DnsFailureLabels::overflow(l.rcode))
                .inc();
        }
        self.verdict_counters
            .get_or_insert(v.verdict, &v, || {
                self.verdicts.counter(VerdictLabels::of(&v), |l| {
                    VerdictLabels::overflow(l.verdict)
                })
            })
            .inc();
    }

    /// Observes how long a TCP handshake or a DNS exchange of `v`'s flow took (in the
    /// histogram of `v`'s names and destination port).
    pub fn latency<'a>(&self, latency: Latency, v: impl Into<FlowLabels<'a>>, took: Duration) {
        self.latencies.observe(latency, &v.into(), took);
    }

    pub fn packets(&self, kind: PacketKind, n: u64) {
        self.packet_counters[kind as usize].inc_by(n);
    }

    /// Counts one DNS response; `rcode` is a name such as `NXDOMAIN` (any case) or a
    /// decimal value.
    pub fn dns_response(&self, rcode: &str) {
        let rcode = rcode_label(rcode);
        self.dns_responses
            .get_or_create(&RcodeLabels { rcode })
            .inc();
    }

    pub fn events_lost(&self, source: LossSource, n: u64) {
        self.events_lost
            .get_or_create(&LossLabels { source })
            .inc_by(n);
    }

    /// Events lost at `source` so far.
    pub fn events_lost_total(&self, source: LossSource) -> u64 {
        self.events_lost.get_or_create(&LossLabels { source }).get()
    }

    pub fn decode_error(&self, reason: DecodeErrorKind) {
        self.decode_errors
            .get_or_create(&DecodeErrorLabels { reason })
            .inc();
    }

    pub fn set_flows_tracked(&self, n: u64) {
        self.flows_tracked.set(saturating_i64(n));
    }

    pub fn set_attached_interfaces(&self, n: u64) {
        self.attached_interfaces.set(saturating_i64(n));
    }

    pub fn events_emitted(&self, n: u64) {
        self.events_emitted.inc_by(n);
    }

    pub fn events_processed(&self, n: u64) {
        self.events_processed.inc_by(n);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn set_kube_objects(&self, kind: KubeKind, n: usize) {
        self.kube_objects
            .get_or_create(&KubeLabels { kind })
            .set(saturating_i64(n as u64));
    }

    /// A flow reached a failing verdict for `cause`.
    pub fn cause_reached(&self, cause: Cause) {
        if let Some(counter) = self.cause_counters.get(&cause) {
            counter.inc();
        }
    }

    pub fn dns_search_expansion(&self) {
        self.dns_search_expansions.inc();
    }

    pub fn set_node_datapath_down(&self, down: bool) {
        self.node_datapath_down.set(i64::from(down));
    }

    pub fn kube_watch_error(&self, kind: KubeKind) {
        self.kube_watch_errors
            .get_or_create(&KubeLabels { kind })
            .inc();
    }

    /// Counts one decision of `--api-auth kube`.
    pub fn api_auth(&self, result: AuthResult) {
        self.api_auth
            .get_or_create(&AuthResultLabels { result })
            .inc();
    }

    /// Counts what became of one failing cause reported for a Kubernetes Event.
    pub fn k8s_event(&self, result: EventResult) {
        self.k8s_events
            .get_or_create(&EventResultLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition (served as [`OPENMETRICS_CONTENT_TYPE`]). Samples
    /// within a family are sorted by label set, so the output is stable between scrapes
    /// and diffs.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("encoding into a String cannot fail");
        exposition::sort_samples(&out)
    }

    /// The exposition in `format` ([`Format::negotiate`] picks it from `Accept`).
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Text => exposition::to_text(&self.encode()),
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
