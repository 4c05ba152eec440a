//! Per-connection state machine: decoded packets and the passing of time → verdicts.
//!
//! Packets come as each hook saw them; [`orient`] finds their connection (one for the
//! client's and the server's veth, across NAT). Connections live in a bounded LRU table;
//! recent events in a bounded ring. Timeouts are found by a sweep over a min-heap of
//! deadlines. Counts come from the events; each event carries its hook's kernel counters,
//! so a gap is exactly what was lost (see [`recover`]).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::IpAddr,
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use lru::LruCache;
use probe_ebpf::{EventKind, FlowCounters, FlowKey, HookKey};
use tokio::sync::{broadcast, mpsc};

pub use clock::{Clock, UnixNanos, monotonic_now};
use explain::{Explainer, node_datapath, node_outcome};
use far_side::dns_answers_past_the_veth;

use crate::{
    decode::{DnsPacket, Packet, decode_dns, flow_from_key},
    diagnose::{self, Failure, PathFacts},
    enrich::{ClusterView, Names},
    kube_events::CauseReport,
    metrics::{Metrics, PacketKind},
    model::{
        Cause, Counts, DnsSummary, Flow, FlowEvent, FlowEventKind, NodeVerdict, Protocol, Verdict,
        VerdictKind,
    },
    text,
};

mod clock;
mod connection;
mod dns;
mod dns_stream;
mod explain;
mod far_side;
mod journal;
mod lru_slab;
mod node;
mod order;
mod orient;
mod read;
mod reconcile;
mod recover;
mod search;
mod sweep;
mod table;
mod tcp;

use dns::{dns_message, dns_summary, expire_dns, expire_held, settle_dns};
use journal::Journal;
use node::{Change, Incident, NodeWatch};
use order::{Deadline, Ranked};
use orient::{Pairing, Sender, Side, View};
pub use search::Chain;
use search::SearchPaths;
use table::{FlowTable, Slot};
use tcp::{SynIs, expire_syn, on_icmp_unreachable, on_rst, on_syn, on_syn_ack, timeout_reason};

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

/// A timeout's Kubernetes Event waits this long: the node watch, evaluated every 100 ms,
/// may find it part of a node-wide failure, and one cause (`node_datapath`) is then
/// written instead of a per-pair one for each of the pods that lost their connections.
const REPORT_HOLD: Duration = Duration::from_millis(500);
/// Held reports, at most; beyond, they go out at once.
const HELD_REPORTS: usize = 1024;
/// Added to `--syn-timeout` before a handshake is TIMEOUT. Linux retransmits a SYN 1, 3
/// and 7 s after the first, or every second with `tcp_syn_linear_timeouts`: a
/// retransmission due at the deadline, and the SYN-ACK answering it within a round trip,
/// must be able to arrive first, or a slow handshake would flap to TIMEOUT and back to
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
    /// DNS over TCP: the client's and the server's byte streams, framed into messages.
    streams: Option<Box<[Option<dns_stream::DnsStream>; 2]>>,
    /// A truncated UDP answer (TC) waiting for the client's retry over TCP, since when,
    /// with its rcode.
    truncated: Option<Box<(DnsSummary, Duration, hickory_proto::op::ResponseCode)>>,
    /// That retry failed: the lookup's failure is DNS over TCP's.
    tcp_retry_failed: bool,
    /// How long the last response took after its query, until the journal observes it
    /// (`netprobe_dns_response_seconds`).
    answered_in: Option<Duration>,
}

impl DnsState {
    const NONE: Self = Self {
        pending: Vec::new(),
        failure: None,
        success: None,
        held: None,
        expansion: None,
        streams: None,
        truncated: None,
        tcp_retry_failed: false,
        answered_in: None,
    };
}

/// What a flow that never carried DNS reads as its DNS state.
static NO_DNS: DnsState = DnsState::NONE;

/// A flow's DNS state, allocated on its first write: a full table under a SYN flood is
/// all TCP, and every flow would otherwise carry the state's 232 bytes.
#[derive(Clone, Debug, Default)]
struct LazyDns(Option<Box<DnsState>>);

impl std::ops::Deref for LazyDns {
    type Target = DnsState;

    fn deref(&self) -> &DnsState {
        self.0.as_deref().unwrap_or(&NO_DNS)
    }
}

impl std::ops::DerefMut for LazyDns {
    fn deref_mut(&mut self) -> &mut DnsState {
        self.0.get_or_insert_with(Default::default)
    }
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
    /// The activity clock ([`TableMarks::activity`]) when the flow was last made the
    /// most recent.
    active_at: Duration,
    /// First SYN of the current connection attempt, and how many SYNs it has sent.
    attempt_start: Option<Duration>,
    attempt_syns: u64,
    /// The attempt's initial sequence number: a SYN with another one is a new connection
    /// on the same 5-tuple, a SYN-ACK acknowledging another one answers another attempt.
    isn: Option<u32>,
    /// An answer (SYN-ACK or RST) read before the SYN it answers, with the number it
    /// acknowledges: events of two hooks can come out of order.
    /// (Boxed: rare, and every flow of the table carries the field.)
    early_answer: Option<Box<(EventKind, u32, Duration)>>,
    /// When the current attempt's SYN-ACK came, for telling a late one.
    answered_at: Option<Duration>,
    ifindex: u32,
    dns: LazyDns,
    /// The server's veth, when it is on this node and the flow is counted at the
    /// client's: what went in and out there.
    far: Option<Box<FarSide>>,
    /// The last kernel counters seen at the hooks this flow is counted at, per kind.
    kernel_seen: recover::Seen,
    /// The veth the flow is counted at: the client's, or the server's when the client
    /// is not on this node.
    counted_at: Side,
}

impl FlowState {
    fn new(flow: Flow, generation: u64, now: Duration, ifindex: u32) -> Self {
        Self {
            flow,
            generation,
            verdict: VerdictKind::Pending,
            // Until its first packet says one: shared by every new flow.
            reason: text::fixed_text!(""),
            cause: None,
            explanation: None,
            next: None,
            counts: Counts::default(),
            first_seen: now,
            last_seen: now,
            active_at: now,
            attempt_start: None,
            attempt_syns: 0,
            isn: None,
            early_answer: None,
            answered_at: None,
            ifindex,
            dns: LazyDns::default(),
            far: None,
            kernel_seen: recover::Seen::default(),
            counted_at: Side::Client,
        }
    }
}

/// What the server's veth saw of a connection counted at the client's.
#[derive(Clone, Debug)]
struct FarSide {
    ifindex: u32,
    /// The server end as it saw itself (a Service's backend pod and targetPort).
    backend: std::net::SocketAddr,
    /// The latest SYN that entered the server pod, and SYN-ACK that left it.
    syn_at: Option<Duration>,
    syn_ack_at: Option<Duration>,
    /// SYN-ACKs that left the server pod: a second one is the server sending it again.
    syn_acks: u32,
    /// The latest RST the server sent, and how many: a second answers a SYN sent again.
    rst_at: Option<Duration>,
    rsts: u32,
    /// DNS answers that left the server pod to queries the client's veth saw, until its
    /// veth sees them too or [`tcp::EARLY_ANSWER_WAIT`] passes (see [`Tracker::sweep`]).
    dns_answers: Vec<(Duration, DnsPacket)>,
}

/// DNS answers kept per flow while they wait for the client's veth.
const FAR_DNS_ANSWERS: usize = 8;

impl FarSide {
    /// The server's veth `ifindex`, as its view of the connection shows the server.
    fn seen_at(ifindex: u32, view: &View) -> Box<Self> {
        Box::new(Self {
            ifindex,
            backend: std::net::SocketAddr::new(view.flow.dst_ip, view.flow.dst_port),
            syn_at: None,
            syn_ack_at: None,
            syn_acks: 0,
            rst_at: None,
            rsts: 0,
            dns_answers: Vec::new(),
        })
    }
}

/// Everything the tracker knows. Shared behind a mutex by the event loop and the API.
pub struct Tracker {
    config: TrackerConfig,
    flows: FlowTable<FlowState>,
    deadlines: BinaryHeap<Reverse<Deadline>>,
    marks: TableMarks,
    journal: Journal,
    context: Context,
    pairing: Pairing,
    /// Newest kernel timestamp of an event processed: the kernel's counts of a hook last
    /// seen before it were all read or lost (the ring keeps order).
    newest_event: Duration,
    /// The node's connection tracking: pairs a server-side view with its client's
    /// across an SNAT (hairpin, NodePort), where the client's address was rewritten.
    conntrack: Option<crate::nat::Conntrack>,
    /// UDP lookups whose answer was truncated, by (client, server, name): their retry
    /// over TCP settles them.
    retries: LruCache<(IpAddr, IpAddr, String), (FlowKey, u64)>,
    /// When each client last sent a SYN to a DNS server's TCP port, by (client, server):
    /// a truncated answer with no retry since was kept by its client, not failed.
    dns_tcp_attempts: lru_slab::LruSlab<(IpAddr, IpAddr), Duration>,
}

/// Truncated lookups waiting for their TCP retry, at most.
const TRUNCATED_LOOKUPS: usize = 4096;

/// What the tracker knows beyond single flows: lookups in flight, this node's pods, and
/// node-wide failures. Read to explain a failure.
struct Context {
    search: SearchPaths,
    /// This node's Kubernetes name: a pod scheduled here is local too.
    node_name: Option<Arc<str>>,
    node: NodeWatch,
    /// Diagnoses of refused and unreachable connections, made once per server end.
    diagnoses: std::cell::RefCell<explain::Diagnoses>,
}

/// The reason as reported: what was seen, then why.
fn shown_reason(state: &FlowState) -> Arc<str> {
    joined_reason(&state.reason, state.explanation.as_ref())
}

fn joined_reason(seen: &Arc<str>, why: Option<&Arc<str>>) -> Arc<str> {
    match why {
        Some(why) => format!("{seen}: {why}").into(),
        None => Arc::clone(seen),
    }
}

impl Tracker {
    pub fn new(config: TrackerConfig, clock: Clock, metrics: Arc<Metrics>) -> Self {
        let (events_tx, _) = broadcast::channel(1024);
        Self {
            flows: FlowTable::new(config.flow_capacity),
            journal: Journal {
                clock,
                events: VecDeque::with_capacity(config.event_capacity.get()),
                capacity: config.event_capacity.get(),
                events_tx,
                interfaces: HashMap::new(),
                departed: VecDeque::new(),
                metrics,
                names: Names::none(),
                named: Names::none().cached(),
                reports: None,
                held_reports: VecDeque::new(),
            },
            pairing: Pairing::new(config.flow_capacity),
            // Reserved to the bound compaction keeps it under: no growth on the packet path.
            deadlines: BinaryHeap::with_capacity(deadline_bound(config.flow_capacity)),
            marks: TableMarks::default(),
            context: Context {
                search: SearchPaths::default(),
                node_name: None,
                node: NodeWatch::default(),
                diagnoses: Default::default(),
            },
            newest_event: Duration::ZERO,
            conntrack: None,
            retries: LruCache::new(NonZeroUsize::new(TRUNCATED_LOOKUPS).expect("non-zero")),
            dns_tcp_attempts: lru_slab::LruSlab::new(
                NonZeroUsize::new(TRUNCATED_LOOKUPS).expect("non-zero"),
            ),
            config,
        }
    }

    /// The Kubernetes node this tracker runs on: its pods are local ends of flows.
    pub fn with_node_name(mut self, node: Option<&str>) -> Self {
        self.context.node_name = node.filter(|n| !n.is_empty()).map(Arc::from);
        self
    }

    /// Pairs the two views of a NATed connection through conntrack (see [`crate::nat`]).
    pub fn with_conntrack(mut self, conntrack: Option<crate::nat::Conntrack>) -> Self {
        self.conntrack = conntrack;
        self
    }

    /// Names flow ends from the Kubernetes API (see [`crate::enrich`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.journal.named = names.cached();
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
    /// Pod addresses behind the attached veths, from the node's routes and neighbours
    /// (see [`crate::local_addresses`]): they replace the last listing.
    pub fn set_routed_addresses(&mut self, routed: HashMap<IpAddr, u32>) {
        self.pairing.set_routed(routed);
    }

    pub fn forget_interface_name(&mut self, ifindex: u32) {
        self.pairing.forget_interface(ifindex);
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

    /// The kernel timestamp of the newest event processed.
    pub fn newest_event(&self) -> Duration {
        self.newest_event
    }

    pub fn flows_tracked(&self) -> usize {
        self.flows.len()
    }

    /// Applies one decoded packet, as one hook saw it.
    pub fn on_packet(&mut self, packet: &Packet) {
        let now = packet.monotonic;
        self.make_deadline_room();
        self.newest_event = self.newest_event.max(now);
        self.pairing.learn_local(packet);
        let flows = &self.flows;
        let view = self.pairing.orient(packet, |key| flows.contains(key));
        let (key, counted_here) = self.connection(&view, packet);
        if !counted_here {
            self.on_far_side(key, &view, packet, now);
            return;
        }
        let flow = self.flow_of_connection(&key, &view);
        let (slot, created) = flow_entry(
            &mut self.flows,
            &mut self.marks,
            &key,
            flow,
            now,
            packet.ifindex,
        );
        if view.side == Side::Client {
            self.flows.index_client(slot);
        }
        let horizon = self.marks.eviction_horizon;
        let state = self.flows.at_mut(slot);
        if created {
            state.counted_at = view.side;
        }
        // Losses before this packet, from its hook's counters.
        let lost = state.kernel_seen.take(packet, view.sender, horizon);
        if lost > 0 {
            self.journal.metrics.packets(packet.kind.into(), lost);
            recover::add_lost(&mut state.counts, packet.kind, lost);
            if packet.kind == EventKind::Syn {
                state.attempt_syns += lost;
            }
        }
        if packet.kind == EventKind::Syn && flow.dst_port == dns::DNS_PORT {
            self.dns_tcp_attempts.put((flow.src_ip, flow.dst_ip), now);
        }
        if packet.kind == EventKind::Syn {
            let seq = packet.tcp.as_ref().map(|tcp| tcp.seq);
            if tcp::syn_is(state, seq) == SynIs::NewConnection {
                self.new_connection_on(key, now);
            }
        }
        self.apply(slot, key, &view, packet, now);
    }

    /// Applies a packet counted at this hook to its connection.
    fn apply(&mut self, slot: Slot, key: FlowKey, view: &View, packet: &Packet, now: Duration) {
        // A query may show that NXDOMAINs held for this client were search-path expansions.
        let going_on = match (packet.kind, &packet.dns) {
            (
                EventKind::DnsQuery,
                Some(DnsPacket {
                    qname: Some(qname), ..
                }),
            ) => {
                let released = self.context.search.on_query(view.flow.src_ip, qname, now);
                (!released.is_empty()).then(|| (released, qname.clone()))
            }
            _ => None,
        };
        let (syn_timeout, dns_timeout) = (self.config.syn_timeout, self.config.dns_timeout);
        let journal = &mut self.journal;
        let metrics = &journal.metrics;
        // (Made the most recent, its activity marked, by `flow_entry` already: `now` is
        // not past the activity clock.)
        let state = self.flows.at_mut(slot);
        state.last_seen = state.last_seen.max(now);
        let before = state.verdict;
        let was_truncated = state.dns.truncated.is_some();
        metrics.packets(packet.kind.into(), 1);
        let mut deadlines = smallvec::SmallVec::<[Duration; 4]>::new();
        // Answers over TCP, for the truncated UDP lookups they retry.
        let mut tcp_answers = Vec::new();
        let tcp = packet.tcp.as_ref();
        match packet.kind {
            EventKind::Syn => {
                state.counts.syn += 1;
                deadlines.extend(on_syn(state, tcp.map(|t| t.seq), now, syn_timeout));
            }
            EventKind::SynAck => {
                state.counts.syn_ack += 1;
                on_syn_ack(state, tcp.map(|t| t.ack), now);
                if let Some(tcp) = tcp {
                    dns::open_stream(state, Sender::Server, tcp.seq.wrapping_add(1));
                }
            }
            EventKind::Rst => {
                state.counts.rst += 1;
                on_rst(state, view.sender, tcp, now);
            }
            EventKind::IcmpUnreachable => {
                state.counts.icmp_unreachable += 1;
                on_icmp_unreachable(state);
            }
            EventKind::DnsQuery | EventKind::DnsResponse => {
                if let Some(dns) = &packet.dns {
                    deadlines.extend(dns_message(
                        state,
                        &mut self.context.search,
                        metrics,
                        key,
                        dns,
                        now,
                        dns_timeout,
                    ));
                } else if packet.kind == EventKind::DnsQuery {
                    state.counts.dns_queries += 1;
                } else {
                    state.counts.dns_responses += 1;
                }
            }
            EventKind::DnsTcpSegment => {
                if let Some(tcp) = tcp {
                    for message in dns::stream_messages(state, view.sender, tcp) {
                        let Some(dns) = decode_dns(&message) else {
                            continue;
                        };
                        metrics.packets(
                            if dns.is_response {
                                PacketKind::DnsResponse
                            } else {
                                PacketKind::DnsQuery
                            },
                            1,
                        );
                        deadlines.extend(dns_message(
                            state,
                            &mut self.context.search,
                            metrics,
                            key,
                            &dns,
                            now,
                            dns_timeout,
                        ));
                        if dns.is_response {
                            tcp_answers.push(dns);
                        }
                    }
                }
            }
        }
        if !was_truncated && let Some((summary, _, _)) = state.dns.truncated.as_deref() {
            self.retries.put(
                (
                    state.flow.src_ip,
                    state.flow.dst_ip,
                    summary.qname.to_ascii_lowercase(),
                ),
                (key, state.generation),
            );
            deadlines.push(now + dns_timeout);
        }
        let (client, server) = (state.flow.src_ip, state.flow.dst_ip);
        if state.early_answer.is_some() && state.attempt_start.is_none() {
            deadlines.push(now + tcp::EARLY_ANSWER_WAIT);
        }
        for at in deadlines {
            self.deadlines.push(Reverse(Deadline {
                at: at.into(),
                generation: state.generation,
                slot,
            }));
        }
        node_outcome(&mut self.context.node, journal, state, before, now);
        Explainer::new(journal, &self.context, &self.pairing).refresh(state, before);
        journal.record(state, before, packet.kind.into(), now);
        if let Some((released, next)) = going_on {
            for (key, generation) in released {
                self.release_expansion(key, generation, &next, now);
            }
        }
        for dns in tcp_answers {
            let Some(qname) = dns.qname.as_deref() else {
                continue;
            };
            if let Some(lookup) = self
                .retries
                .pop(&(client, server, qname.to_ascii_lowercase()))
            {
                self.settle_retry(lookup, dns::Retry::Answered(dns.clone()), now);
            }
        }
        self.tcp_retry_failed(key, before, now);
    }

    /// A DNS-over-TCP connection that could not be made fails the truncated lookups of
    /// its client to that server.
    fn tcp_retry_failed(&mut self, key: FlowKey, before: VerdictKind, now: Duration) {
        if self.retries.is_empty() {
            return;
        }
        let Some(state) = self.flows.peek(&key) else {
            return;
        };
        let how = match state.verdict {
            VerdictKind::Timeout => "got no answer to its SYN",
            VerdictKind::Refused => "was refused (RST)",
            VerdictKind::Unreachable => "was answered by ICMP unreachable",
            _ => return,
        };
        if state.verdict == before
            || state.flow.protocol != Protocol::Tcp
            || state.flow.dst_port != dns::DNS_PORT
        {
            return;
        }
        let (client, server) = (state.flow.src_ip, state.flow.dst_ip);
        let failed: Vec<_> = self
            .retries
            .iter()
            .filter(|((c, s, _), _)| *c == client && *s == server)
            .map(|(name, lookup)| (name.clone(), *lookup))
            .collect();
        for (name, lookup) in failed {
            self.retries.pop(&name);
            self.settle_retry(lookup, dns::Retry::Failed(how), now);
        }
    }

    /// Settles a truncated UDP lookup from its TCP retry.
    fn settle_retry(
        &mut self,
        (key, generation): (FlowKey, u64),
        retry: dns::Retry,
        now: Duration,
    ) {
        let Some(state) = self.flows.peek_mut(&key) else {
            return;
        };
        if state.generation != generation {
            return;
        }
        let before = state.verdict;
        if dns::retried_over_tcp(state, retry, now) {
            Explainer::new(&self.journal, &self.context, &self.pairing).refresh(state, before);
            self.journal
                .record(state, before, FlowEventKind::DnsResponse, now);
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
                let (reason, next) = (diagnosis.reason, diagnosis.next);
                for (_, state) in self.flows.iter_mut() {
                    let recent = now.saturating_sub(state.last_seen) < node::WINDOW;
                    // A policy's denial stays the policy's.
                    if recent
                        && matches!(
                            state.verdict,
                            VerdictKind::Timeout | VerdictKind::DnsTimeout
                        )
                        && !matches!(
                            state.cause,
                            Some(Cause::NetworkPolicy | Cause::NodeDatapath)
                        )
                    {
                        // Counted under its new cause too: the counter says what failed
                        // because of the outage, not only what failed after it was seen.
                        self.journal.metrics.cause_reached(Cause::NodeDatapath);
                        state.cause = Some(Cause::NodeDatapath);
                        state.explanation = Some(Arc::clone(&reason));
                        state.next = next.clone();
                    }
                }
            }
        }
    }

    /// Drops queue entries of flows that are gone, once the queue outgrows the table:
    /// keeps memory bounded under a flood of short-lived flows.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > deadline_bound(self.flows.cap()) {
            self.drop_dead_deadlines();
        }
    }

    /// Before a packet, when the queue is near its reserved size, drops the deadlines of
    /// flows that are gone, so the packet path does not grow it. A queue still over half
    /// full after that holds that many live deadlines: it is given room to double, so
    /// this pass runs at most once per half a queue of packets.
    fn make_deadline_room(&mut self) {
        if self.deadlines.len() + DEADLINES_PER_PACKET <= self.deadlines.capacity() {
            return;
        }
        self.drop_dead_deadlines();
        if self.deadlines.len() * 2 > self.deadlines.capacity() {
            self.deadlines.reserve(self.deadlines.capacity());
        }
    }

    fn drop_dead_deadlines(&mut self) {
        let flows = &self.flows;
        self.deadlines.retain(|Reverse(deadline)| {
            flows
                .at_slot(deadline.slot)
                .is_some_and(|(_, s)| s.generation == deadline.generation)
        });
    }
}

/// Deadlines one packet queues, at most, but for a DNS-over-TCP segment of many messages.
const DEADLINES_PER_PACKET: usize = 64;

/// Deadlines queued before those of flows that are gone are dropped: two per flow.
fn deadline_bound(flow_capacity: NonZeroUsize) -> usize {
    flow_capacity.get().saturating_mul(2).saturating_add(1024)
}

/// What the flow table's entries are marked with as they come, go and move up.
#[derive(Default)]
struct TableMarks {
    /// The last flow's generation: a slot taken over holds a new one.
    next_generation: u64,
    /// Last-seen time of the most recent flow evicted from the table: a kernel hook
    /// counting since before it may hold counts of an evicted flow.
    eviction_horizon: Duration,
    /// The newest last-seen time of any flow made the most recent so far. Each flow keeps
    /// it as `active_at`, which never rises from the most recent flow to the least and is
    /// never below the flow's own last-seen time: a reader after the `limit` newest stops
    /// at the first flow whose `active_at` is older than all it keeps.
    activity: Duration,
}

impl TableMarks {
    /// Marks a flow made the most recent (or about to be) with the activity clock, moved
    /// up to its last-seen time or `seen`, whichever is newer.
    fn mark_active(&mut self, state: &mut FlowState, seen: Duration) {
        self.activity = self.activity.max(seen).max(state.last_seen);
        state.active_at = self.activity;
    }
}

/// The flow's slot, its state created if new (evicting the least recently used flow at
/// capacity, whose last activity moves the eviction horizon). Made the most recent, and
/// marked active as of `now`. (The flows-tracked gauge is refreshed by the reconcile
/// pass, once a second.)
fn flow_entry(
    flows: &mut FlowTable<FlowState>,
    marks: &mut TableMarks,
    key: &FlowKey,
    flow: Flow,
    now: Duration,
    ifindex: u32,
) -> (Slot, bool) {
    let (slot, created) = flows.entry(
        key,
        || {
            marks.next_generation += 1;
            FlowState::new(flow, marks.next_generation, now, ifindex)
        },
        |evicted| marks.eviction_horizon = marks.eviction_horizon.max(evicted.last_seen),
    );
    let state = flows.at_mut(slot);
    if state.ifindex == 0 {
        state.ifindex = ifindex;
    }
    marks.mark_active(state, now);
    (slot, created)
}

#[cfg(test)]
mod tests;
