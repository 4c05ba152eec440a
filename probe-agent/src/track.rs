//! Per-flow state machine: decoded packets and the passing of time → verdicts.
//!
//! Flows live in a bounded LRU table; recent events in a bounded ring. Timeouts are
//! found by a sweep over a min-heap of deadlines (SYN and DNS timeouts differ, so
//! insertion order is not deadline order). Counts come from the events, and are topped
//! up from the kernel's counter map when events were lost, so lost events never mean
//! wrong counts.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::IpAddr,
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use hickory_proto::op::ResponseCode;
use lru::LruCache;
use probe_ebpf::{Direction, EventKind, FlowCounters, FlowKey};
use tokio::sync::{broadcast, mpsc};

use crate::{
    decode::{DnsPacket, Packet, flow_from_key, rcode_name},
    diagnose::{self, Failure, PathFacts},
    enrich::{ClusterView, Names},
    events::{self, CauseReport},
    metrics::{Metrics, PacketKind},
    model::{
        Cause, Counts, DnsSummary, Flow, FlowEvent, FlowEventKind, NodeVerdict, Protocol, Verdict,
        VerdictKind,
    },
};

mod delivered;
pub use delivered::Delivery;

/// Tracker settings (`probe-agent run` flags).
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    pub syn_timeout: Duration,
    pub dns_timeout: Duration,
    pub flow_capacity: NonZeroUsize,
    pub event_capacity: NonZeroUsize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            syn_timeout: Duration::from_secs(3),
            dns_timeout: Duration::from_secs(5),
            flow_capacity: NonZeroUsize::new(65_536).expect("non-zero"),
            event_capacity: NonZeroUsize::new(4096).expect("non-zero"),
        }
    }
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    epoch: DateTime<Utc>,
}

impl Clock {
    pub fn new() -> Self {
        let now = Utc::now();
        Self {
            epoch: now - monotonic_now(),
        }
    }

    pub fn to_utc(&self, monotonic: Duration) -> DateTime<Utc> {
        self.epoch + monotonic
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// How long a kernel count may run ahead of the events before the agent believes the
/// missing events were lost rather than still on their way.
/// A timeout's Kubernetes Event waits this long: the node watch, evaluated every 100 ms,
/// may find it part of a node-wide failure, and one cause (`node_datapath`) is then
/// written instead of a per-pair one for each of the pods that lost their connections.
const REPORT_HOLD: Duration = Duration::from_millis(500);
/// Held reports, at most; beyond, they go out at once.
const HELD_REPORTS: usize = 1024;
const LOSS_GRACE: Duration = Duration::from_millis(500);
/// Added to `--syn-timeout` before a handshake is TIMEOUT. Linux retransmits a SYN 1, 3
/// and 7 s after the first (the usual timeouts): a retransmission due at the deadline,
/// and the SYN-ACK answering it within a round trip, must be able to arrive first, or a
/// slow handshake would flap to TIMEOUT (counted, paged, written as an Event) and back to
/// OK. Small enough for the verdict to stay visible within 250 ms of the timeout.
const SYN_RETRANSMISSION_SLACK: Duration = Duration::from_millis(100);

/// Kernel flows unknown to the tracker are only recovered if seen this recently.
const RECOVERY_WINDOW: Duration = Duration::from_secs(2);
/// Names of removed interfaces kept for the flows still reported under them (a crashed
/// pod's are the interesting ones); older ones are dropped, so pod churn cannot grow
/// the name table without bound.
const DEPARTED_INTERFACES: usize = 1024;

/// How long an NXDOMAIN for a search-path expansion waits for the lookup to go on
/// (resolvers send the next name at once) before it counts as the lookup's failure.
const SEARCH_WINDOW: Duration = Duration::from_millis(500);
/// Pod addresses of this node remembered (learned from what leaves their veths).
const LOCAL_ADDRESSES: usize = 65_536;

/// When to look at a flow again. Ordered by time, then by flow instance (generations
/// are unique), so the key itself needs no order.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Duration,
    generation: u64,
    key: FlowKey,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.generation) == (other.at, other.generation)
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

/// A DNS query still waiting for its response.
#[derive(Clone, Debug)]
struct PendingQuery {
    id: u16,
    qname: Option<String>,
    qtype: Option<String>,
    sent: Duration,
}

#[derive(Clone, Debug, Default)]
struct DnsState {
    pending: Vec<PendingQuery>,
    /// The most recent failed transaction of this flow, with its verdict.
    failure: Option<(VerdictKind, DnsSummary)>,
    /// The most recent successful one.
    success: Option<DnsSummary>,
    /// An NXDOMAIN for a search-path expansion, held (since when) until the lookup goes
    /// on (then it was no failure) or not (then the lookup failed on it).
    /// (Boxed, like `expansion`: rare, and every flow of the table carries the field.)
    held: Option<Box<(DnsSummary, Duration)>>,
    /// The last NXDOMAIN that proved a search-path expansion, and why in words.
    expansion: Option<Box<(DnsSummary, String)>>,
}

/// Caps the queries remembered per flow: a flood of ids on one tuple stays bounded.
const MAX_PENDING_QUERIES: usize = 16;

#[derive(Clone, Debug)]
struct FlowState {
    flow: Flow,
    generation: u64,
    verdict: VerdictKind,
    /// What was seen ("3 SYNs in 3.0s and no answer").
    reason: Arc<str>,
    /// Why it failed, and the command that confirms it (see [`crate::diagnose`]).
    cause: Option<Cause>,
    /// Shared between flows failing the same way (see [`Interner`]).
    explanation: Option<Arc<str>>,
    next: Option<Arc<str>>,
    counts: Counts,
    first_seen: Duration,
    last_seen: Duration,
    /// First SYN of the current connection attempt, and how many SYNs it has sent.
    attempt_start: Option<Duration>,
    attempt_syns: u64,
    ifindex: u32,
    dns: DnsState,
}

/// A verdict with its place in recency order: (last_seen, first_seen, generation).
struct Ranked((Duration, Duration, u64), Verdict);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Everything the tracker knows. Shared behind a mutex by the event loop and the API.
pub struct Tracker {
    config: TrackerConfig,
    flows: LruCache<FlowKey, FlowState>,
    deadlines: BinaryHeap<Reverse<Deadline>>,
    next_generation: u64,
    journal: Journal,
    context: Context,
}

/// What the tracker knows beyond single flows: lookups in flight, this node's pods, and
/// node-wide failures. Read to explain a failure.
struct Context {
    search: SearchPaths,
    /// Addresses of this node's pods, as seen leaving their veths.
    local: LruCache<IpAddr, ()>,
    /// This node's Kubernetes name: a pod scheduled here is local too.
    node_name: Option<Arc<str>>,
    node: NodeWatch,
    interner: Interner,
    /// SYNs seen reaching the server pod of a same-node flow (see [`delivered`]).
    delivered: delivered::Deliveries,
}

/// Explanations and commands shared between flows: a thousand flows timing out the same
/// way hold one copy of the words.
#[derive(Default)]
struct Interner(std::cell::RefCell<std::collections::HashSet<Arc<str>>>);

/// Distinct texts kept; beyond, the set starts over (flows keep their copies).
const INTERNED: usize = 4096;

impl Interner {
    fn intern(&self, text: &str) -> Arc<str> {
        let mut texts = self.0.borrow_mut();
        if let Some(shared) = texts.get(text) {
            return Arc::clone(shared);
        }
        if texts.len() >= INTERNED {
            texts.clear();
        }
        let shared: Arc<str> = text.into();
        texts.insert(Arc::clone(&shared));
        shared
    }
}

/// The reason as reported: what was seen, then why.
fn shown_reason(state: &FlowState) -> Arc<str> {
    match &state.explanation {
        Some(why) => format!("{}: {why}", state.reason).into(),
        None => Arc::clone(&state.reason),
    }
}

/// Where changes are reported: the recent-event ring, followers, metrics. Kept apart
/// from the flow table so a flow's state can be reported while it is borrowed.
struct Journal {
    clock: Clock,
    events: VecDeque<FlowEvent>,
    capacity: usize,
    events_tx: broadcast::Sender<FlowEvent>,
    interfaces: HashMap<u32, Arc<str>>,
    /// Removed interfaces whose names are still kept, oldest first.
    departed: VecDeque<(u32, Arc<str>)>,
    metrics: Arc<Metrics>,
    /// Kubernetes names of flow ends, read when a verdict or event is reported.
    names: Names,
    /// Where new failing causes of known pods go (`--events`); full means dropped.
    reports: Option<mpsc::Sender<CauseReport>>,
    /// Reports of timeouts, held until it is known whether they are part of a node-wide
    /// failure (see [`REPORT_HOLD`]), with when each is due.
    held_reports: VecDeque<(Duration, CauseReport)>,
}

impl Tracker {
    pub fn new(config: TrackerConfig, clock: Clock, metrics: Arc<Metrics>) -> Self {
        let flow_capacity = config.flow_capacity;
        let (events_tx, _) = broadcast::channel(1024);
        Self {
            flows: LruCache::new(config.flow_capacity),
            journal: Journal {
                clock,
                events: VecDeque::with_capacity(config.event_capacity.get()),
                capacity: config.event_capacity.get(),
                events_tx,
                interfaces: HashMap::new(),
                departed: VecDeque::new(),
                metrics,
                names: Names::none(),
                reports: None,
                held_reports: VecDeque::new(),
            },
            config,
            deadlines: BinaryHeap::new(),
            next_generation: 0,
            context: Context {
                search: SearchPaths::default(),
                local: LruCache::new(NonZeroUsize::new(LOCAL_ADDRESSES).expect("non-zero")),
                node_name: None,
                node: NodeWatch::default(),
                interner: Interner::default(),
                delivered: delivered::Deliveries::new(flow_capacity),
            },
        }
    }

    /// The Kubernetes node this tracker runs on: its pods are local ends of flows.
    pub fn with_node_name(mut self, node: Option<&str>) -> Self {
        self.context.node_name = node.filter(|n| !n.is_empty()).map(Arc::from);
        self
    }

    /// Names flow ends from the Kubernetes API (see [`crate::enrich`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.journal.names = names;
        self
    }

    /// Hands each new failing cause of a flow from a known pod to `reports` (the
    /// Kubernetes Event writer of `--events`). Never waits: a full channel drops it.
    pub fn with_cause_reports(mut self, reports: mpsc::Sender<CauseReport>) -> Self {
        self.journal.reports = Some(reports);
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.journal.events_tx.subscribe()
    }

    /// The sender behind [`Tracker::subscribe`], so followers need not take the lock.
    pub fn events_sender(&self) -> broadcast::Sender<FlowEvent> {
        self.journal.events_tx.clone()
    }

    /// Names the interface behind an ifindex, for the `interface` field.
    pub fn set_interface_name(&mut self, ifindex: u32, name: &str) {
        self.journal.interfaces.insert(ifindex, name.into());
    }

    /// The interface behind `ifindex` went away. Its name is kept until
    /// [`DEPARTED_INTERFACES`] newer ones have gone too.
    pub fn forget_interface_name(&mut self, ifindex: u32) {
        let journal = &mut self.journal;
        let Some(name) = journal.interfaces.get(&ifindex) else {
            return;
        };
        journal.departed.push_back((ifindex, Arc::clone(name)));
        if journal.departed.len() > DEPARTED_INTERFACES
            && let Some((index, name)) = journal.departed.pop_front()
            // Unless the index was named again since (a new interface got it).
            && journal
                .interfaces
                .get(&index)
                .is_some_and(|current| Arc::ptr_eq(current, &name))
        {
            journal.interfaces.remove(&index);
        }
    }

    /// Interfaces with a name, attached or recently departed.
    #[cfg(test)]
    fn interface_names(&self) -> usize {
        self.journal.interfaces.len()
    }

    pub fn flows_tracked(&self) -> usize {
        self.flows.len()
    }

    /// The SYNs of `flow`'s client end that reached a server pod on this node, if any
    /// were seen (flows between two pods of this node only). Found by the client's
    /// ip:port alone, as the server's side sees it after any Service DNAT: compare
    /// [`Delivery::at`] with the flow's times before taking it for this connection's.
    pub fn syn_delivery(&self, flow: &Flow) -> Option<Delivery> {
        self.context
            .delivered
            .lookup(flow.protocol, flow.src_ip, flow.src_port)
            .copied()
    }

    /// Applies one decoded packet.
    pub fn on_packet(&mut self, packet: &Packet) {
        // Not a flow's packet: kept aside, no flow, verdict or event (see `delivered`).
        if packet.kind == EventKind::SynDelivered {
            self.journal.metrics.packets(packet.kind.into(), 1);
            self.context.delivered.record(packet);
            return;
        }
        let now = packet.monotonic;
        self.learn_local(packet);
        // A query may show that NXDOMAINs held for this client were search-path expansions.
        let going_on = match (packet.kind, &packet.dns) {
            (
                EventKind::DnsQuery,
                Some(DnsPacket {
                    qname: Some(qname), ..
                }),
            ) => {
                let released = self.context.search.on_query(packet.flow.src_ip, qname, now);
                (!released.is_empty()).then(|| (released, qname.clone()))
            }
            _ => None,
        };
        let (syn_timeout, dns_timeout) = (self.config.syn_timeout, self.config.dns_timeout);
        let journal = &mut self.journal;
        let metrics = &journal.metrics;
        let state = flow_entry(
            &mut self.flows,
            &mut self.next_generation,
            &packet.key,
            packet.flow,
            now,
            packet.ifindex,
        );
        state.last_seen = state.last_seen.max(now);
        let before = state.verdict;
        metrics.packets(packet.kind.into(), 1);
        let mut deadline = None;
        match packet.kind {
            EventKind::Syn => {
                state.counts.syn += 1;
                deadline = on_syn(state, now, syn_timeout);
            }
            EventKind::SynAck => {
                state.counts.syn_ack += 1;
                on_syn_ack(state, now);
            }
            EventKind::Rst => {
                state.counts.rst += 1;
                on_rst(state, now);
            }
            EventKind::IcmpUnreachable => {
                state.counts.icmp_unreachable += 1;
                on_icmp_unreachable(state);
            }
            EventKind::DnsQuery => {
                state.counts.dns_queries += 1;
                if let Some(dns) = &packet.dns {
                    deadline = on_dns_query(state, dns, now, dns_timeout);
                }
            }
            EventKind::DnsResponse => {
                state.counts.dns_responses += 1;
                if let Some(dns) = &packet.dns {
                    metrics.dns_response(&rcode_name(dns.rcode));
                    let search = &mut self.context.search;
                    let client = packet.flow.src_ip;
                    let (mut expansion, mut answered) = (false, None);
                    match &dns.qname {
                        Some(qname) if dns.rcode == ResponseCode::NXDomain => {
                            answered = search.answered_in_lookup(client, qname);
                            // Held while the lookup may go on: an expansion, or a name
                            // tried as it is before the search list.
                            expansion = answered.is_none()
                                && (!search.expansion_of(qname).is_empty()
                                    || search.opens_lookup(client, qname));
                        }
                        Some(qname) if dns.rcode == ResponseCode::NoError => {
                            search.answered(client, qname);
                        }
                        _ => {}
                    }
                    let nxdomain = match (expansion, answered) {
                        (true, _) => NxdomainIs::Held(now),
                        (false, Some(name)) => NxdomainIs::Expansion(format!(
                            "{name} was answered (NOERROR) in the same lookup"
                        )),
                        (false, None) => NxdomainIs::Failure,
                    };
                    on_dns_response(state, dns, nxdomain);
                    if expansion && let Some(qname) = &dns.qname {
                        self.context.search.hold(
                            packet.flow.src_ip,
                            qname,
                            (packet.key, state.generation),
                            now,
                        );
                        deadline = Some(now + SEARCH_WINDOW);
                    }
                }
            }
            EventKind::SynDelivered => {}
        }
        if let Some(at) = deadline {
            self.deadlines.push(Reverse(Deadline {
                at,
                generation: state.generation,
                key: packet.key,
            }));
        }
        node_outcome(&mut self.context.node, journal, state, before, now);
        Explainer::new(journal, &self.context).refresh(state, before);
        journal.record(state, before, packet.kind.into(), now);
        if let Some((released, next)) = going_on {
            for (key, generation) in released {
                self.release_expansion(key, generation, &next, now);
            }
        }
    }

    /// A node-wide incident started or ended. When it starts, the timeouts it already
    /// caused are its too.
    fn on_node_change(&mut self, change: Change, now: Duration) {
        match change {
            Change::None => {}
            Change::Ended => self.journal.metrics.set_node_datapath_down(false),
            Change::Started => {
                self.journal.metrics.set_node_datapath_down(true);
                let Some(incident) = self.context.node.current() else {
                    return;
                };
                let diagnosis = node_datapath(incident, self.context.node_name.as_ref());
                let (reason, next): (Arc<str>, Option<Arc<str>>) =
                    (diagnosis.reason.into(), diagnosis.next.map(Arc::from));
                for (_, state) in self.flows.iter_mut() {
                    let recent = now.saturating_sub(state.last_seen) < node::WINDOW;
                    // A policy's denial stays the policy's.
                    if recent
                        && matches!(
                            state.verdict,
                            VerdictKind::Timeout | VerdictKind::DnsTimeout
                        )
                        && state.cause != Some(Cause::NetworkPolicy)
                    {
                        state.cause = Some(Cause::NodeDatapath);
                        state.explanation = Some(Arc::clone(&reason));
                        state.next = next.clone();
                    }
                }
            }
        }
    }

    /// Node-level verdicts: the node-wide incident going on, and the last one ended.
    pub fn node_verdicts(&self, now: Duration) -> Vec<NodeVerdict> {
        self.context
            .node
            .incidents(now)
            .into_iter()
            .map(|incident| {
                let diagnosis = node_datapath(&incident, self.context.node_name.as_ref());
                NodeVerdict {
                    verdict: VerdictKind::Timeout,
                    cause: diagnosis.cause,
                    reason: diagnosis.reason,
                    next: diagnosis.next,
                    since: self.journal.clock.to_utc(incident.since),
                    until: incident.until.map(|until| self.journal.clock.to_utc(until)),
                    failing_pairs: incident.failing_pairs,
                    pairs: incident.pairs,
                    sources: incident.sources,
                    flows: incident.flows,
                }
            })
            .collect()
    }

    /// Remembers which addresses are this node's pods: the sender of what leaves a
    /// pod's veth is the pod.
    fn learn_local(&mut self, packet: &Packet) {
        if packet.direction != Direction::FromPod {
            return;
        }
        let sender = match packet.kind {
            EventKind::Syn | EventKind::DnsQuery => packet.flow.src_ip,
            EventKind::SynAck | EventKind::DnsResponse => packet.flow.dst_ip,
            _ => return,
        };
        if !self.context.local.contains(&sender) {
            self.context.local.put(sender, ());
        }
    }

    /// The lookup a held NXDOMAIN belonged to went on to `next`: it was a search-path
    /// expansion, not a failure.
    fn release_expansion(&mut self, key: FlowKey, generation: u64, next: &str, now: Duration) {
        let Some(state) = self.flows.peek_mut(&key) else {
            return;
        };
        if state.generation != generation {
            return;
        }
        let Some((summary, _)) = state.dns.held.take().map(|held| *held) else {
            return;
        };
        self.journal.metrics.dns_search_expansion();
        let before = state.verdict;
        state.dns.expansion = Some(Box::new((summary, format!("the lookup went on to {next}"))));
        settle_dns(state);
        Explainer::new(&self.journal, &self.context).refresh(state, before);
        self.journal
            .record(state, before, FlowEventKind::SearchExpansion, now);
    }

    /// Declares the timeouts that have expired by `now` (monotonic).
    pub fn sweep(&mut self, now: Duration) {
        while let Some(Reverse(Deadline {
            at,
            generation,
            key,
        })) = self.deadlines.peek().copied()
        {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // `peek_mut`: a timeout is not a use, it must not refresh the flow's LRU rank.
            let Some(state) = self.flows.peek_mut(&key) else {
                continue;
            };
            if state.generation != generation {
                continue;
            }
            let before = state.verdict;
            let expired = match state.flow.protocol {
                Protocol::Tcp => expire_syn(state, now, self.config.syn_timeout),
                Protocol::Udp => {
                    // Both run: either may have expired.
                    let held = expire_held(state, &self.context.search, now);
                    expire_dns(state, now, self.config.dns_timeout) | held
                }
            };
            if expired {
                node_outcome(&mut self.context.node, &self.journal, state, before, now);
                Explainer::new(&self.journal, &self.context).refresh(state, before);
                self.journal
                    .record(state, before, FlowEventKind::Timeout, now);
            }
        }
        let change = self.context.node.evaluate(now);
        self.on_node_change(change, now);
        self.journal.release_reports(
            now,
            self.context.node.current(),
            self.context.node_name.as_ref(),
        );
        self.compact_deadlines();
    }

    /// Tops up counts from the kernel's counter map: a count the kernel has and the
    /// events never brought (for longer than [`LOSS_GRACE`]) was lost on the way, and
    /// the transition it would have caused is applied now.
    pub fn reconcile(
        &mut self,
        kernel: impl IntoIterator<Item = (FlowKey, FlowCounters)>,
        now: Duration,
    ) {
        for (key, counters) in kernel {
            if now.saturating_sub(Duration::from_nanos(counters.last_seen_ns)) < LOSS_GRACE {
                continue;
            }
            let last_seen = Duration::from_nanos(counters.last_seen_ns);
            let first_seen = Duration::from_nanos(counters.first_seen_ns);
            if self.flows.peek(&key).is_none() {
                // Created by events that were all lost, or evicted from the table. Only
                // recent activity brings a flow back, so idle evicted flows stay out.
                if now.saturating_sub(last_seen) > RECOVERY_WINDOW {
                    continue;
                }
                let Ok(flow) = flow_from_key(&key) else {
                    continue;
                };
                flow_entry(
                    &mut self.flows,
                    &mut self.next_generation,
                    &key,
                    flow,
                    first_seen,
                    0,
                );
            }
            let state = self.flows.peek_mut(&key).expect("present");
            let before = state.verdict;
            let recovered = recover_lost(state, &counters, last_seen, &self.journal.metrics);
            if recovered {
                state.last_seen = state.last_seen.max(last_seen);
                // A recovered flow still waiting gets its timeout like any other.
                if state.verdict == VerdictKind::Pending {
                    let (start, timeout) = match state.flow.protocol {
                        Protocol::Tcp => (
                            state.attempt_start,
                            self.config.syn_timeout + SYN_RETRANSMISSION_SLACK,
                        ),
                        Protocol::Udp => (
                            state.dns.pending.first().map(|q| q.sent),
                            self.config.dns_timeout,
                        ),
                    };
                    if let Some(start) = start {
                        self.deadlines.push(Reverse(Deadline {
                            at: start + timeout,
                            generation: state.generation,
                            key,
                        }));
                    }
                }
                Explainer::new(&self.journal, &self.context).refresh(state, before);
                self.journal
                    .record(state, before, FlowEventKind::Recovered, now);
            }
        }
    }

    /// Verdicts accepted by `keep`: the `limit` most recently seen, oldest first.
    pub fn verdicts(&self, keep: &dyn Fn(&Verdict) -> bool, limit: usize) -> Vec<Verdict> {
        // The newest `limit` by (last_seen, first_seen), kept in a min-heap: memory stays
        // O(limit) on a full table, and a flow older than the heap's oldest is skipped
        // before its verdict is even built.
        // (Sized by the table too: "all" may be asked as usize::MAX.)
        let mut newest: BinaryHeap<Reverse<Ranked>> =
            BinaryHeap::with_capacity(limit.min(self.flows.len()) + 1);
        if limit == 0 {
            return Vec::new();
        }
        for (_, state) in self.flows.iter() {
            let rank = (state.last_seen, state.first_seen, state.generation);
            if newest.len() == limit && newest.peek().is_some_and(|Reverse(min)| rank <= min.0) {
                continue;
            }
            let verdict = self.journal.verdict_of(state);
            if !keep(&verdict) {
                continue;
            }
            newest.push(Reverse(Ranked(rank, verdict)));
            if newest.len() > limit {
                newest.pop();
            }
        }
        let mut out: Vec<Ranked> = newest.into_iter().map(|Reverse(r)| r).collect();
        out.sort_by_key(|ranked| ranked.0);
        out.into_iter().map(|ranked| ranked.1).collect()
    }

    /// Recent events accepted by `keep`: the newest `limit`, oldest first.
    pub fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
        let mut out: Vec<FlowEvent> = self
            .journal
            .events
            .iter()
            .rev()
            .filter(|event| keep(event))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Drops queue entries of flows that are gone, once the queue outgrows the table:
    /// keeps memory bounded under a flood of short-lived flows.
    fn compact_deadlines(&mut self) {
        let bound = self
            .flows
            .cap()
            .get()
            .saturating_mul(2)
            .saturating_add(1024);
        if self.deadlines.len() > bound {
            let flows = &self.flows;
            self.deadlines.retain(|Reverse(deadline)| {
                flows
                    .peek(&deadline.key)
                    .is_some_and(|s| s.generation == deadline.generation)
            });
        }
    }
}

/// The flow's state, created (evicting the least recently used flow at capacity) if new.
/// One table lookup when the flow is known. (The flows-tracked gauge is refreshed by the
/// reconcile pass, once a second.)
fn flow_entry<'a>(
    flows: &'a mut LruCache<FlowKey, FlowState>,
    next_generation: &mut u64,
    key: &FlowKey,
    flow: Flow,
    now: Duration,
    ifindex: u32,
) -> &'a mut FlowState {
    let state = flows.get_or_insert_mut(*key, || {
        *next_generation += 1;
        FlowState {
            flow,
            generation: *next_generation,
            verdict: VerdictKind::Pending,
            reason: "".into(),
            cause: None,
            explanation: None,
            next: None,
            counts: Counts::default(),
            first_seen: now,
            last_seen: now,
            attempt_start: None,
            attempt_syns: 0,
            ifindex,
            dns: DnsState::default(),
        }
    });
    if state.ifindex == 0 {
        state.ifindex = ifindex;
    }
    state
}

impl Journal {
    /// Records a change of `state`, and counts a verdict when the flow reaches a new
    /// final one.
    fn record(
        &mut self,
        state: &FlowState,
        before: VerdictKind,
        kind: FlowEventKind,
        now: Duration,
    ) {
        let verdict_changed = state.verdict != before;
        if matches!(kind, FlowEventKind::Timeout) && !verdict_changed {
            return;
        }
        let verdict = self.verdict_of(state);
        if verdict_changed && state.verdict.is_final() {
            self.metrics.verdict_reached(&verdict);
            if let Some(cause) = verdict.cause.filter(|c| c.is_failure()) {
                self.metrics.cause_reached(cause);
                self.report(&verdict, cause, now);
            }
        }
        // The event shares the verdict's names, interface and DNS summary: looked up once.
        let event = FlowEvent {
            time: self.clock.to_utc(now),
            flow: verdict.flow,
            event: kind,
            verdict: verdict.verdict,
            reason: verdict.reason,
            cause: verdict.cause,
            next: verdict.next,
            interface: verdict.interface,
            src: verdict.src,
            dst: verdict.dst,
            dns: verdict.dns,
        };
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        if self.events_tx.receiver_count() > 0 {
            // A follower that went away in between is fine.
            let _ = self.events_tx.send(event.clone());
        }
        self.events.push_back(event);
    }

    /// Hands a new failing cause of a flow from a known pod to the Event writer; a
    /// timeout's waits [`REPORT_HOLD`] first.
    fn report(&mut self, verdict: &Verdict, cause: Cause, now: Duration) {
        let Some(reports) = &self.reports else {
            return;
        };
        let Some((namespace, pod)) = verdict
            .src
            .as_ref()
            .and_then(|src| Some((src.namespace.clone()?, src.pod.clone()?)))
        else {
            return;
        };
        // Never waits on the packet path: a full channel loses this report (counted).
        let report = CauseReport {
            namespace,
            pod,
            cause,
            reason: Arc::clone(&verdict.reason),
            next: verdict.next.clone(),
            flow: verdict.flow,
        };
        let timeout = matches!(
            cause,
            Cause::DroppedBetween | Cause::ServerSilent | Cause::NoAnswer | Cause::DnsNoAnswer
        );
        if timeout && self.held_reports.len() < HELD_REPORTS {
            self.held_reports.push_back((now + REPORT_HOLD, report));
        } else {
            events::offer(reports, report, &self.metrics);
        }
    }

    /// Sends the held reports that are due: as they are, or, while a node-wide failure
    /// goes on, as that failure (the timeout was the node's, not its own).
    fn release_reports(
        &mut self,
        now: Duration,
        incident: Option<&Incident>,
        node: Option<&Arc<str>>,
    ) {
        let Some(reports) = &self.reports else {
            return;
        };
        while let Some((due, _)) = self.held_reports.front() {
            if *due > now {
                break;
            }
            let (_, mut report) = self.held_reports.pop_front().expect("checked");
            if let Some(incident) = incident {
                let diagnosis = node_datapath(incident, node);
                report.cause = diagnosis.cause;
                report.reason = diagnosis.reason.into();
                report.next = diagnosis.next.map(Arc::from);
            }
            events::offer(reports, report, &self.metrics);
        }
    }

    fn interface_name(&self, ifindex: u32) -> Arc<str> {
        match self.interfaces.get(&ifindex) {
            Some(name) => Arc::clone(name),
            None if ifindex == 0 => "".into(),
            None => format!("if{ifindex}").into(),
        }
    }

    fn verdict_of(&self, state: &FlowState) -> Verdict {
        Verdict {
            flow: state.flow,
            verdict: state.verdict,
            reason: shown_reason(state),
            cause: state.cause,
            next: state.next.clone(),
            counts: state.counts,
            first_seen: self.clock.to_utc(state.first_seen),
            last_seen: self.clock.to_utc(state.last_seen),
            interface: self.interface_name(state.ifindex),
            src: self.names.source(state.flow.src_ip),
            dst: self
                .names
                .destination(state.flow.dst_ip, state.flow.dst_port),
            dns: dns_summary(state),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Returns the deadline to check when this SYN starts a new connection attempt.
fn on_syn(state: &mut FlowState, now: Duration, syn_timeout: Duration) -> Option<Duration> {
    match state.verdict {
        // A retransmission of the current attempt.
        VerdictKind::Pending if state.attempt_start.is_some() => {
            state.attempt_syns += 1;
            state.reason =
                format!("{} SYNs sent, waiting for an answer", state.attempt_syns).into();
            None
        }
        // Retransmissions after the timeout was declared keep the verdict.
        VerdictKind::Timeout => {
            state.attempt_syns += 1;
            state.reason = timeout_reason(state, now).into();
            None
        }
        // A first SYN, or a new attempt on a reused 5-tuple.
        _ => {
            state.verdict = VerdictKind::Pending;
            state.attempt_start = Some(now);
            state.attempt_syns = 1;
            state.reason = "SYN sent, waiting for an answer".into();
            Some(now + syn_timeout + SYN_RETRANSMISSION_SLACK)
        }
    }
}

fn timeout_reason(state: &FlowState, now: Duration) -> String {
    let elapsed = now.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
    let plural = if state.attempt_syns == 1 { "" } else { "s" };
    format!(
        "{} SYN{plural} in {} and no answer",
        state.attempt_syns,
        secs(elapsed)
    )
}

fn on_syn_ack(state: &mut FlowState, now: Duration) {
    if matches!(state.verdict, VerdictKind::Pending | VerdictKind::Timeout) {
        let took = now.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
        let slow = if state.verdict == VerdictKind::Timeout || state.attempt_syns > 1 {
            format!(" (slow: {} SYNs)", state.attempt_syns)
        } else {
            String::new()
        };
        state.verdict = VerdictKind::Ok;
        state.reason = format!("handshake completed in {}{slow}", millis(took)).into();
    }
}

fn on_rst(state: &mut FlowState, now: Duration) {
    match state.verdict {
        VerdictKind::Pending | VerdictKind::Timeout if state.attempt_start.is_some() => {
            let took = now.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
            state.verdict = VerdictKind::Refused;
            state.reason = format!("SYN answered by RST in {}", millis(took)).into();
        }
        VerdictKind::Refused | VerdictKind::Reset => {}
        _ => {
            state.verdict = VerdictKind::Reset;
            state.reason = "connection reset by RST after the handshake".into();
        }
    }
}

fn on_icmp_unreachable(state: &mut FlowState) {
    if state.verdict == VerdictKind::Ok && state.flow.protocol == Protocol::Tcp {
        // An established connection: ICMP errors there are not a connect failure.
        return;
    }
    state.verdict = VerdictKind::Unreachable;
    state.reason = match state.flow.protocol {
        Protocol::Tcp => "SYN answered by ICMP destination unreachable",
        Protocol::Udp => "DNS query answered by ICMP destination unreachable",
    }
    .into();
    state.dns.pending.clear();
}

fn on_dns_query(
    state: &mut FlowState,
    dns: &DnsPacket,
    now: Duration,
    dns_timeout: Duration,
) -> Option<Duration> {
    if state.dns.pending.iter().any(|q| q.id == dns.id) {
        // A retransmission of a query still waiting.
        return None;
    }
    if state.dns.pending.len() == MAX_PENDING_QUERIES {
        state.dns.pending.remove(0);
    }
    state.dns.pending.push(PendingQuery {
        id: dns.id,
        qname: dns.qname.clone(),
        qtype: dns.qtype.clone(),
        sent: now,
    });
    state.verdict = VerdictKind::Pending;
    state.reason = format!(
        "DNS query for {} sent, waiting for an answer",
        dns.qname.as_deref().unwrap_or("?")
    )
    .into();
    Some(now + dns_timeout)
}

/// What an NXDOMAIN means for its flow, from the lookup it belongs to.
enum NxdomainIs {
    /// A search-path expansion: held until the lookup goes on or not (since when).
    Held(Duration),
    /// No failure: another name of its lookup exists (why, in words).
    Expansion(String),
    /// The lookup's failure.
    Failure,
}

fn on_dns_response(state: &mut FlowState, dns: &DnsPacket, nxdomain: NxdomainIs) {
    let query = state
        .dns
        .pending
        .iter()
        .position(|q| q.id == dns.id)
        .map(|i| state.dns.pending.remove(i));
    let qname = dns
        .qname
        .clone()
        .or_else(|| query.as_ref().and_then(|q| q.qname.clone()))
        .unwrap_or_else(|| "?".into());
    let qtype = dns
        .qtype
        .clone()
        .or_else(|| query.as_ref().and_then(|q| q.qtype.clone()))
        .unwrap_or_else(|| "?".into());
    let summary = DnsSummary {
        id: dns.id,
        qname,
        qtype,
        rcode: Some(rcode_name(dns.rcode)),
    };
    match (rcode_verdict(dns.rcode), nxdomain) {
        (VerdictKind::Ok, _) => state.dns.success = Some(summary),
        (VerdictKind::Nxdomain, NxdomainIs::Held(since)) => {
            state.dns.held = Some(Box::new((summary, since)))
        }
        (VerdictKind::Nxdomain, NxdomainIs::Expansion(why)) => {
            state.dns.expansion = Some(Box::new((summary, why)))
        }
        (failure, _) => state.dns.failure = Some((failure, summary)),
    }
    settle_dns(state);
}

fn rcode_verdict(rcode: ResponseCode) -> VerdictKind {
    match rcode {
        ResponseCode::NoError => VerdictKind::Ok,
        ResponseCode::NXDomain => VerdictKind::Nxdomain,
        ResponseCode::ServFail => VerdictKind::Servfail,
        ResponseCode::Refused => VerdictKind::DnsRefused,
        _ => VerdictKind::DnsError,
    }
}

/// A DNS flow's verdict once no query is waiting: its failure if it had one, else OK.
fn settle_dns(state: &mut FlowState) {
    if !state.dns.pending.is_empty() {
        return;
    }
    if let Some((summary, _)) = state.dns.held.as_deref() {
        state.verdict = VerdictKind::Pending;
        state.reason = format!(
            "NXDOMAIN for {}, a search-path expansion: waiting to see whether the lookup goes on",
            summary.qname
        )
        .into();
        return;
    }
    if let Some((verdict, summary)) = &state.dns.failure {
        state.verdict = *verdict;
        state.reason = Arc::from(match verdict {
            VerdictKind::Nxdomain => format!("{} does not exist (NXDOMAIN)", summary.qname),
            VerdictKind::Servfail => format!("DNS server failed on {} (SERVFAIL)", summary.qname),
            VerdictKind::DnsRefused => {
                format!(
                    "DNS server refused the query for {} (REFUSED)",
                    summary.qname
                )
            }
            VerdictKind::DnsTimeout => format!("no answer to the DNS query for {}", summary.qname),
            _ => format!(
                "DNS server answered {} with {}",
                summary.qname,
                summary.rcode.as_deref().unwrap_or("an error")
            ),
        });
    } else if let Some(summary) = &state.dns.success {
        state.verdict = VerdictKind::Ok;
        state.reason = format!("{} {} answered (NOERROR)", summary.qname, summary.qtype).into();
    } else if let Some((summary, why)) = state.dns.expansion.as_deref() {
        state.verdict = VerdictKind::Ok;
        state.reason = format!(
            "NXDOMAIN for {} was a search-path expansion, not a failure: {why}",
            summary.qname
        )
        .into();
    }
}

/// Tells the node watch about a flow that reached a new final verdict.
fn node_outcome(
    node: &mut NodeWatch,
    journal: &Journal,
    state: &FlowState,
    before: VerdictKind,
    now: Duration,
) {
    if state.verdict == before || !state.verdict.is_final() {
        return;
    }
    let failed = matches!(
        state.verdict,
        VerdictKind::Timeout | VerdictKind::DnsTimeout
    );
    // A timeout a NetworkPolicy explains is the policy's doing: no evidence either way
    // about the node's datapath (two clients denied by policy are no node outage).
    if failed && denied_by_policy(journal, &state.flow) {
        return;
    }
    node.outcome(state.flow.src_ip, state.flow.dst_ip, failed, now);
}

fn denied_by_policy(journal: &Journal, flow: &Flow) -> bool {
    let snapshot = journal.names.snapshot();
    !snapshot.cluster.policies.is_empty()
        && diagnose::path::policy_denial(&snapshot.cluster, flow).is_some()
}

/// The words of a node-wide failure.
fn node_datapath(incident: &Incident, node: Option<&Arc<str>>) -> diagnose::Diagnosis {
    diagnose::Diagnosis {
        cause: Cause::NodeDatapath,
        reason: format!(
            "{} of {} pod pairs of this node time out at once (from {} pods): the node's datapath is down (CNI, bridge, routes or node firewall), not this flow",
            incident.failing_pairs, incident.pairs, incident.sources
        ),
        next: Some(match node {
            Some(node) => {
                format!("kubectl get pods -A -o wide --field-selector spec.nodeName={node}")
            }
            None => "ip route; sudo nft list ruleset".into(),
        }),
    }
}

/// A held NXDOMAIN whose lookup did not go on in time: the lookup failed on it, unless
/// another of its names was answered.
fn expire_held(state: &mut FlowState, search: &SearchPaths, now: Duration) -> bool {
    match state.dns.held.as_deref() {
        Some((_, since)) if now.saturating_sub(*since) >= SEARCH_WINDOW => {}
        _ => return false,
    }
    let (summary, _) = *state.dns.held.take().expect("checked above");
    match search.answered_in_lookup(state.flow.src_ip, &summary.qname) {
        Some(name) => {
            let why = format!("{name} was answered (NOERROR) in the same lookup");
            state.dns.expansion = Some(Box::new((summary, why)));
        }
        None => state.dns.failure = Some((VerdictKind::Nxdomain, summary)),
    }
    settle_dns(state);
    true
}

/// What explaining a failure reads besides the flow itself.
struct Explainer<'a> {
    /// Names and interface names.
    journal: &'a Journal,
    search: &'a SearchPaths,
    delivered: &'a delivered::Deliveries,
    local: &'a LruCache<IpAddr, ()>,
    node: Option<&'a Arc<str>>,
    /// A node-wide failure going on: timeouts are its, not their own.
    incident: Option<&'a Incident>,
    interner: &'a Interner,
}

impl<'a> Explainer<'a> {
    fn new(journal: &'a Journal, context: &'a Context) -> Self {
        Self {
            journal,
            search: &context.search,
            delivered: &context.delivered,
            local: &context.local,
            node: context.node_name.as_ref(),
            incident: context.node.current(),
            interner: &context.interner,
        }
    }

    /// Brings the flow's cause and next command up to date after a change from
    /// `before`. A failure is diagnosed once, when it is reached.
    fn refresh(&self, state: &mut FlowState, before: VerdictKind) {
        if !state.verdict.is_failure() {
            let expansion = state.verdict == VerdictKind::Ok
                && state.dns.success.is_none()
                && state.dns.expansion.is_some();
            state.cause = expansion.then_some(Cause::SearchPathExpansion);
            state.explanation = None;
            state.next = None;
            return;
        }
        if state.verdict != before || state.cause.is_none() {
            self.diagnose(state);
        }
    }

    fn set(&self, state: &mut FlowState, diagnosis: Option<diagnose::Diagnosis>) {
        state.cause = diagnosis.as_ref().map(|d| d.cause);
        state.explanation = diagnosis.as_ref().map(|d| self.interner.intern(&d.reason));
        state.next = diagnosis
            .and_then(|d| d.next)
            .map(|next| self.interner.intern(&next));
    }

    fn diagnose(&self, state: &mut FlowState) {
        if let Some(incident) = self.incident
            && matches!(
                state.verdict,
                VerdictKind::Timeout | VerdictKind::DnsTimeout
            )
            && !denied_by_policy(self.journal, &state.flow)
        {
            self.set(state, Some(node_datapath(incident, self.node)));
            return;
        }
        let snapshot = self.journal.names.snapshot();
        let view = &snapshot.cluster;
        let dns = dns_summary(state);
        let chain = match (&dns, state.verdict) {
            (Some(dns), VerdictKind::Nxdomain) => self.search.chain(state.flow.src_ip, &dns.qname),
            _ => None,
        };
        if let Some(chain) = chain.as_ref().filter(|c| c.tried.len() > 1) {
            state.reason = format!(
                "{}: NXDOMAIN for each of the {} names of its search path ({})",
                chain.asked,
                chain.tried.len(),
                chain.tried.join(", ")
            )
            .into();
        }
        let failure = Failure {
            flow: &state.flow,
            verdict: state.verdict,
            dns: dns.as_ref(),
            lookup: chain
                .as_ref()
                .map(|c| (c.asked.as_str(), c.tried.as_slice())),
            // Only a timeout asks where the packets went.
            path: if state.verdict == VerdictKind::Timeout {
                PathFacts {
                    delivered: self.delivered(state),
                    destination_local: self.destination_local(view, &state.flow),
                    remote_client_via: (!self.is_local(view, &state.flow.src_ip))
                        .then(|| self.journal.interface_name(state.ifindex))
                        .filter(|name| !name.is_empty()),
                    node: self.node.cloned(),
                }
            } else {
                PathFacts::default()
            },
        };
        let diagnosis = diagnose::explain(view, &failure);
        self.set(state, diagnosis);
    }

    /// Where a SYN of this connection attempt entered a pod of this node, and through
    /// which veth. A delivery older than the attempt was another connection's (the
    /// client's port reused).
    fn delivered(&self, state: &FlowState) -> Option<(std::net::SocketAddr, Arc<str>)> {
        let flow = &state.flow;
        let delivery = self
            .delivered
            .lookup(flow.protocol, flow.src_ip, flow.src_port)?;
        let attempt = state.attempt_start.unwrap_or(state.first_seen);
        (delivery.at >= attempt)
            .then(|| (delivery.dst, self.journal.interface_name(delivery.ifindex)))
    }

    /// A pod address of this node: seen leaving a veth here, or of a pod scheduled here.
    fn is_local(&self, view: &ClusterView, ip: &IpAddr) -> bool {
        self.local.contains(ip)
            || view
                .pod_by_ip
                .get(ip)
                .is_some_and(|pod| pod.node.is_some() && pod.node.as_ref() == self.node)
    }

    /// The flow's destination pod (every ready backend, for a Service) is on this node:
    /// seen leaving a veth here, or scheduled on this node.
    fn destination_local(&self, view: &ClusterView, flow: &Flow) -> bool {
        let local = |ip: &IpAddr| self.is_local(view, ip);
        let destinations = diagnose::path::destinations(view, flow);
        if destinations.is_empty() {
            return local(&flow.dst_ip);
        }
        destinations
            .iter()
            .all(|(pod, _)| pod.ips.iter().any(local))
    }
}

fn expire_syn(state: &mut FlowState, now: Duration, syn_timeout: Duration) -> bool {
    let Some(start) = state.attempt_start else {
        return false;
    };
    if state.verdict != VerdictKind::Pending
        || now.saturating_sub(start) < syn_timeout + SYN_RETRANSMISSION_SLACK
    {
        return false;
    }
    state.verdict = VerdictKind::Timeout;
    state.reason = timeout_reason(state, now).into();
    true
}

fn expire_dns(state: &mut FlowState, now: Duration, dns_timeout: Duration) -> bool {
    let (expired, waiting): (Vec<_>, Vec<_>) = state
        .dns
        .pending
        .drain(..)
        .partition(|q| now.saturating_sub(q.sent) >= dns_timeout);
    state.dns.pending = waiting;
    let Some(query) = expired.last() else {
        return false;
    };
    state.dns.failure = Some((
        VerdictKind::DnsTimeout,
        DnsSummary {
            id: query.id,
            qname: query.qname.clone().unwrap_or_else(|| "?".into()),
            qtype: query.qtype.clone().unwrap_or_else(|| "?".into()),
            rcode: None,
        },
    ));
    settle_dns(state);
    true
}

fn dns_summary(state: &FlowState) -> Option<DnsSummary> {
    if state.flow.protocol != Protocol::Udp {
        return None;
    }
    if state.verdict == VerdictKind::Pending
        && let Some(query) = state.dns.pending.last()
    {
        return Some(DnsSummary {
            id: query.id,
            qname: query.qname.clone().unwrap_or_else(|| "?".into()),
            qtype: query.qtype.clone().unwrap_or_else(|| "?".into()),
            rcode: None,
        });
    }
    match (&state.dns.failure, &state.dns.success) {
        (Some((_, summary)), _) if state.verdict.is_failure() => Some(summary.clone()),
        (_, Some(summary)) => Some(summary.clone()),
        (Some((_, summary)), None) => Some(summary.clone()),
        (None, None) => state
            .dns
            .held
            .as_deref()
            .map(|(summary, _)| summary)
            .or(state.dns.expansion.as_deref().map(|(summary, _)| summary))
            .cloned(),
    }
}

/// Applies what the kernel counted and the events never delivered. Returns whether
/// anything was recovered.
fn recover_lost(
    state: &mut FlowState,
    kernel: &FlowCounters,
    at: Duration,
    metrics: &Metrics,
) -> bool {
    let mut recovered = false;
    let mut top_up = |agent: &mut u64, kernel: u64, kind: PacketKind| -> bool {
        if kernel > *agent {
            metrics.packets(kind, kernel - *agent);
            *agent = kernel;
            recovered = true;
            true
        } else {
            false
        }
    };
    let counts = &mut state.counts;
    let syn = top_up(&mut counts.syn, kernel.syn, PacketKind::Syn);
    let syn_ack = top_up(&mut counts.syn_ack, kernel.syn_ack, PacketKind::SynAck);
    let rst = top_up(&mut counts.rst, kernel.rst, PacketKind::Rst);
    let icmp = top_up(
        &mut counts.icmp_unreachable,
        kernel.icmp_unreachable,
        PacketKind::IcmpUnreachable,
    );
    let queries = top_up(
        &mut counts.dns_queries,
        kernel.dns_queries,
        PacketKind::DnsQuery,
    );
    let responses = top_up(
        &mut counts.dns_responses,
        kernel.dns_responses,
        PacketKind::DnsResponse,
    );
    if syn && state.attempt_start.is_none() {
        state.attempt_start = Some(Duration::from_nanos(kernel.first_seen_ns));
        state.attempt_syns = kernel.syn;
        // A SYN whose event was lost, of a connection already answered (its SYN-ACK, RST
        // or ICMP came through): the answer stands, nothing is pending again.
        let answered = counts.syn_ack > 0 || counts.rst > 0 || counts.icmp_unreachable > 0;
        if !answered {
            state.verdict = VerdictKind::Pending;
        } else if state.verdict == VerdictKind::Reset && counts.syn_ack == 0 {
            // The RST answered that SYN: refused, not an established connection reset.
            state.verdict = VerdictKind::Refused;
            state.reason = "SYN answered by RST".into();
        }
    }
    if syn_ack {
        on_syn_ack(state, at);
    } else if rst {
        on_rst(state, at);
    } else if icmp {
        on_icmp_unreachable(state);
    } else if responses || queries {
        if queries && state.dns.pending.is_empty() && kernel.dns_queries > kernel.dns_responses {
            // A query whose event was lost: it waits, unnamed, for its answer or timeout.
            state.dns.pending.push(PendingQuery {
                id: 0,
                qname: None,
                qtype: None,
                sent: Duration::from_nanos(kernel.first_seen_ns),
            });
            state.verdict = VerdictKind::Pending;
        }
        // The rcodes the kernel counted tell the worst outcome even without the names.
        let failure = if kernel.dns_nxdomain > 0 {
            Some(VerdictKind::Nxdomain)
        } else if kernel.dns_servfail > 0 {
            Some(VerdictKind::Servfail)
        } else if kernel.dns_refused > 0 {
            Some(VerdictKind::DnsRefused)
        } else if kernel.dns_other_error > 0 {
            Some(VerdictKind::DnsError)
        } else {
            None
        };
        if responses && counts_settled(&state.counts) {
            state.dns.pending.clear();
            let summary = DnsSummary {
                id: 0,
                qname: "?".into(),
                qtype: "?".into(),
                rcode: Some(failure.map_or("NOERROR", |v| v.as_str()).into()),
            };
            match failure {
                Some(verdict) => state.dns.failure = Some((verdict, summary)),
                None => state.dns.success = Some(summary),
            }
            settle_dns(state);
        }
    }
    if recovered && state.reason.is_empty() {
        state.reason = "recovered from the kernel's counters (events were lost)".into();
    }
    recovered
}

fn counts_settled(counts: &Counts) -> bool {
    counts.dns_responses >= counts.dns_queries
}

mod node;
mod search;

use node::{Change, Incident, NodeWatch};
pub use search::Chain;
use search::SearchPaths;

#[cfg(test)]
mod tests;
