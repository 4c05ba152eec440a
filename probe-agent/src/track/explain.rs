//! Why a flow failed: the node watch told of final verdicts, and the diagnosis of a
//! flow's cause from what the node and the cluster show.

use super::*;
use crate::text::text;

/// Tells the node watch about a flow that reached a new final verdict.
pub(super) fn node_outcome(
    node: &mut NodeWatch,
    journal: &Journal,
    state: &FlowState,
    before: VerdictKind,
    now: Duration,
) {
    // Pod-pair TCP evidence only: pods whose DNS server is down are a DNS failure (their
    // own cause), not a node outage.
    if state.verdict == before
        || !state.verdict.is_final()
        || state.flow.protocol != Protocol::Tcp
        || state.flow.dst_port == dns::DNS_PORT
    {
        return;
    }
    let failed = state.verdict == VerdictKind::Timeout;
    // A timeout a NetworkPolicy explains is the policy's doing: no evidence either way
    // about the node's datapath (two clients denied by policy are no node outage).
    if failed && denied_by_policy(journal, &state.flow) {
        return;
    }
    node.outcome(state.flow.src_ip, state.flow.dst_ip, failed, now);
}

pub(super) fn denied_by_policy(journal: &Journal, flow: &Flow) -> bool {
    let snapshot = journal.names.snapshot();
    !snapshot.cluster.policies.is_empty()
        && diagnose::path::policy_denial(&snapshot.cluster, flow).is_some()
}

/// The words of a node-wide failure.
pub(super) fn node_datapath(incident: &Incident, node: Option<&Arc<str>>) -> diagnose::Diagnosis {
    diagnose::Diagnosis {
        cause: Cause::NodeDatapath,
        reason: text!(
            "{} of {} pod pairs of this node time out at once (from {} pods): the node's datapath is down (CNI, bridge, routes or node firewall), not this flow",
            incident.failing_pairs,
            incident.pairs,
            incident.sources
        ),
        next: Some(match node {
            Some(node) => {
                text!("kubectl get pods -A -o wide --field-selector spec.nodeName={node}")
            }
            None => "ip route; sudo nft list ruleset".into(),
        }),
    }
}

/// What explaining a failure reads besides the flow itself.
pub(super) struct Explainer<'a> {
    /// Names and interface names.
    journal: &'a Journal,
    search: &'a SearchPaths,
    pairing: &'a Pairing,
    node: Option<&'a Arc<str>>,
    /// A node-wide failure going on: timeouts are its, not their own.
    incident: Option<&'a Incident>,
    diagnoses: &'a std::cell::RefCell<Diagnoses>,
}

/// What a refused or unreachable connection's diagnosis depends on besides the cluster:
/// the verdict and the server end ([`diagnose::service::rejected`] reads no more of the
/// flow: a flood from many clients to one server is diagnosed once).
type Server = (VerdictKind, Protocol, IpAddr, u16);

/// A diagnosis as a flow holds it: cause, explanation and next command, shared.
type Diagnosed = Option<(Cause, Arc<str>, Option<Arc<str>>)>;

/// Diagnoses by server end, for the name snapshot they were made with: a flood of
/// refused SYNs diagnoses (and formats the words for) each server once.
pub(super) struct Diagnoses {
    snapshot: Option<Arc<crate::enrich::Snapshot>>,
    by_server: HashMap<Server, Diagnosed, foldhash::fast::RandomState>,
}

/// Servers whose diagnosis is kept; beyond, the cache starts over.
const DIAGNOSED_SERVERS: usize = 4096;

impl Default for Diagnoses {
    fn default() -> Self {
        Self {
            snapshot: None,
            // Reserved whole: the cache never grows on the packet path.
            by_server: HashMap::with_capacity_and_hasher(DIAGNOSED_SERVERS, Default::default()),
        }
    }
}

impl<'a> Explainer<'a> {
    pub(super) fn new(journal: &'a Journal, context: &'a Context, pairing: &'a Pairing) -> Self {
        Self {
            journal,
            search: &context.search,
            pairing,
            node: context.node_name.as_ref(),
            incident: context.node.current(),
            diagnoses: &context.diagnoses,
        }
    }

    /// Brings the flow's cause and next command up to date after a change from
    /// `before`. A failure is diagnosed once, when it is reached.
    pub(super) fn refresh(&self, state: &mut FlowState, before: VerdictKind) {
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
        Self::apply(state, Self::shared(diagnosis));
    }

    /// A diagnosis with its words shared between the flows failing the same way.
    fn shared(diagnosis: Option<diagnose::Diagnosis>) -> Diagnosed {
        diagnosis.map(|d| {
            (
                d.cause,
                text::interned(d.reason),
                d.next.map(text::interned),
            )
        })
    }

    fn apply(state: &mut FlowState, diagnosed: Diagnosed) {
        match diagnosed {
            Some((cause, explanation, next)) => {
                state.cause = Some(cause);
                state.explanation = Some(explanation);
                state.next = next;
            }
            None => {
                state.cause = None;
                state.explanation = None;
                state.next = None;
            }
        }
    }

    /// A refused or unreachable connection, diagnosed once per server and name snapshot.
    fn rejected(&self, state: &mut FlowState, snapshot: &Arc<crate::enrich::Snapshot>) {
        let flow = &state.flow;
        let server = (state.verdict, flow.protocol, flow.dst_ip, flow.dst_port);
        let mut diagnoses = self.diagnoses.borrow_mut();
        let same_snapshot = diagnoses
            .snapshot
            .as_ref()
            .is_some_and(|cached| Arc::ptr_eq(cached, snapshot));
        if !same_snapshot || diagnoses.by_server.len() >= DIAGNOSED_SERVERS {
            diagnoses.by_server.clear();
            diagnoses.snapshot = Some(Arc::clone(snapshot));
        }
        let diagnosed = diagnoses
            .by_server
            .entry(server)
            .or_insert_with(|| {
                let failure = Failure {
                    flow,
                    verdict: state.verdict,
                    dns: None,
                    lookup: None,
                    path: PathFacts::default(),
                };
                Self::shared(diagnose::explain(&snapshot.cluster, &failure))
            })
            .clone();
        Self::apply(state, diagnosed);
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
        if state.dns.tcp_retry_failed {
            let server = state.flow.dst_ip;
            let qname = dns_summary(state).map_or_else(|| "?".to_string(), |d| d.qname);
            self.set(
                state,
                Some(diagnose::Diagnosis {
                    cause: Cause::DnsTcpBlocked,
                    reason: text!(
                        "the answer did not fit in UDP and the client could not retry over TCP to {server}:53: a NetworkPolicy or firewall that allows only UDP 53 is the usual cause"
                    ),
                    next: Some(text!("dig +tcp @{server} {qname}")),
                }),
            );
            return;
        }
        if state.verdict == VerdictKind::Timeout
            && let Some(answered) = state.answered_at
        {
            let took = answered.saturating_sub(state.attempt_start.unwrap_or(state.first_seen));
            self.set(
                state,
                Some(diagnose::Diagnosis {
                    cause: Cause::LateAnswer,
                    reason: text!(
                        "the server answered after {}: slow to accept (accept queue full, CPU-starved or paused), or the client's connect timeout is shorter than the server's answer time",
                        tcp::secs(took)
                    ),
                    next: Some(text!("ss -ltn 'sport = :{}'", state.flow.dst_port)),
                }),
            );
            return;
        }
        let snapshot = self.journal.names.snapshot();
        if matches!(
            state.verdict,
            VerdictKind::Refused | VerdictKind::Unreachable
        ) {
            self.rejected(state, &snapshot);
            return;
        }
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
                    delivered: self.far_side(state, |far| far.syn_at),
                    answer_lost: self.far_side(state, |far| far.syn_ack_at),
                    destination_local: state.far.is_some()
                        || self.destination_local(view, &state.flow),
                    remote_client_via: (state.counted_at == Side::Server
                        || !self.is_local(view, &state.flow.src_ip))
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

    /// Where the server's veth saw this attempt's SYN go in (or its SYN-ACK come out):
    /// the backend and the veth. One older than the attempt was another connection's.
    fn far_side(
        &self,
        state: &FlowState,
        at: impl Fn(&FarSide) -> Option<Duration>,
    ) -> Option<(std::net::SocketAddr, Arc<str>)> {
        let far = state.far.as_deref()?;
        let attempt = state.attempt_start.unwrap_or(state.first_seen);
        at(far)
            .filter(|seen| *seen >= attempt)
            .map(|_| (far.backend, self.journal.interface_name(far.ifindex)))
    }

    /// A pod address of this node: seen leaving a veth here, or of a pod scheduled here.
    fn is_local(&self, view: &ClusterView, ip: &IpAddr) -> bool {
        self.pairing.is_local(ip)
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
