//! The values netprobe reports: verdicts, flow events, interfaces. These are the JSON
//! shapes of the HTTP API (docs/api.md, "JSON shapes") and what `observe` reads back.

use std::{fmt, net::IpAddr, str::FromStr, sync::Arc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};

/// Transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "UPPERCASE")]
#[strum(serialize_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A 5-tuple oriented client → server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    pub protocol: Protocol,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

impl Flow {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Self {
        Self {
            protocol: self.protocol,
            src_ip: self.dst_ip,
            src_port: self.dst_port,
            dst_ip: self.src_ip,
            dst_port: self.src_port,
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |ip: &IpAddr, port: u16| match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        write!(
            f,
            "{} -> {} {}",
            side(&self.src_ip, self.src_port),
            side(&self.dst_ip, self.dst_port),
            self.protocol.as_str()
        )
    }
}

/// What happened to a flow (docs/verdicts.md, "Verdicts").
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictKind {
    Ok,
    Pending,
    Timeout,
    Refused,
    Reset,
    Unreachable,
    Nxdomain,
    Servfail,
    DnsRefused,
    /// A DNS error rcode other than NXDOMAIN, SERVFAIL or REFUSED (FORMERR, NOTIMP, ...).
    DnsError,
    DnsTimeout,
    /// The client reset its own connection attempt before any answer: not the server's
    /// failure (REFUSED is the server answering the SYN with RST).
    Aborted,
}

impl VerdictKind {
    pub const ALL: &[VerdictKind] = Self::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A verdict that is not expected to change without new packets.
    pub fn is_final(self) -> bool {
        self != Self::Pending
    }

    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Ok | Self::Pending | Self::Aborted)
    }
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown verdict {0:?} (expected one of {known})", known = VerdictKind::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownVerdict(pub String);

impl FromStr for VerdictKind {
    type Err = UnknownVerdict;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_uppercase();
        Self::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == wanted)
            .ok_or_else(|| UnknownVerdict(s.to_string()))
    }
}

/// Why a flow failed: a stable, machine-readable id (`cause` in the API). The `reason`
/// beside it says the same in words, naming the objects involved.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Cause {
    /// Not a failure: an NXDOMAIN for one search-path expansion of a name whose lookup
    /// went on (`<name>.<ns>.svc.cluster.local` before `<name>.`).
    SearchPathExpansion,
    /// The whole search path answered NXDOMAIN: the name does not exist.
    NameNotFound,
    /// The DNS server answered SERVFAIL, REFUSED or another error.
    DnsServerError,
    /// DNS queries got no answer.
    DnsNoAnswer,
    /// A SYN to a Service whose endpoints are all missing or not ready.
    NoReadyEndpoints,
    /// A RST from a pod on a port its containers do not declare, which a Service's
    /// targetPort sends to.
    TargetPortMismatch,
    /// A SYN answered by RST: nothing listens there.
    NothingListening,
    /// An established connection reset.
    ConnectionReset,
    /// A SYN answered by ICMP destination unreachable, no Service involved.
    DestinationUnreachable,
    /// A NetworkPolicy isolates the destination (or the source's egress) and no rule
    /// admits the traffic.
    NetworkPolicy,
    /// Both ends on this node: the SYN left the client's veth and never reached the
    /// server's (node firewall, policy, bridge).
    DroppedBetween,
    /// The SYN reached the server pod's veth and the server never answered.
    ServerSilent,
    /// No answer, and only the client's side is on this node.
    NoAnswer,
    /// Most pod pairs on the node time out at once: the node's datapath is down.
    NodeDatapath,
    /// The server answered the SYN after the client had given up (its RST answered the
    /// late SYN-ACK): a slow server or accept queue, not a drop.
    LateAnswer,
    /// A DNS lookup over TCP (the retry of a truncated UDP answer, or `use-vc`) could
    /// not connect to the server's port 53.
    DnsTcpBlocked,
}

impl Cause {
    pub const ALL: &[Cause] = Self::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every cause but [`Cause::SearchPathExpansion`] explains a failure.
    pub fn is_failure(self) -> bool {
        self != Self::SearchPathExpansion
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown cause {0:?} (expected one of {known})", known = Cause::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownCause(pub String);

impl FromStr for Cause {
    type Err = UnknownCause;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .iter()
            .copied()
            .find(|cause| cause.as_str() == wanted)
            .ok_or_else(|| UnknownCause(s.to_string()))
    }
}

/// Packet counts of one flow, as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub syn: u64,
    pub syn_ack: u64,
    pub rst: u64,
    pub icmp_unreachable: u64,
    pub dns_queries: u64,
    pub dns_responses: u64,
}

/// Kubernetes identity of one end of a flow; `null` in JSON where nothing is known.
/// Shared (`Arc`) between the name directory, verdicts and events: naming a flow costs
/// a reference count, not a copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<Arc<str>>,
    /// The owning Deployment, StatefulSet, DaemonSet or Job (the pod's own name if none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub workload: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<Arc<str>>,
    /// The node, for a node address or a host-network pod.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<Arc<str>>,
}

/// The DNS transaction that decided a DNS flow's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSummary {
    pub id: u16,
    /// Fully qualified, with the trailing dot.
    pub qname: String,
    pub qtype: String,
    /// `null` while no response has been seen.
    pub rcode: Option<String>,
}

/// The current verdict of one tracked 5-tuple (`GET /v1/verdicts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub flow: Flow,
    pub verdict: VerdictKind,
    /// Shared with the tracker's state and events: cloning is a reference count.
    pub reason: Arc<str>,
    /// Why it failed (`null` while OK or pending).
    #[serde(default)]
    pub cause: Option<Cause>,
    /// The one command that confirms the cause.
    #[serde(default)]
    pub next: Option<Arc<str>>,
    pub counts: Counts,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Host-side interface the flow was counted on.
    pub interface: Arc<str>,
    pub src: Option<Arc<Endpoint>>,
    pub dst: Option<Arc<Endpoint>>,
    pub dns: Option<DnsSummary>,
    /// The server end the connection reached, as the server's veth saw it (a Service's
    /// backend pod and targetPort), when that veth is on this node.
    #[serde(default)]
    pub backend: Option<std::net::SocketAddr>,
}

/// A node-level verdict: many flows failing for one reason that is the node's, not
/// theirs (`node` in `GET /v1/verdicts`). The flows it stands for carry its cause and
/// are listed with `?expand=true` or `?cause=node_datapath`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeVerdict {
    pub verdict: VerdictKind,
    pub cause: Cause,
    pub reason: String,
    pub next: Option<String>,
    pub since: DateTime<Utc>,
    /// `null` while it goes on.
    pub until: Option<DateTime<Utc>>,
    /// At its widest: the pod pairs timing out, of the pairs seen, from how many pods.
    pub failing_pairs: usize,
    pub pairs: usize,
    pub sources: usize,
    /// Flows that timed out while it lasted.
    pub flows: u64,
}

/// What a flow event records.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowEventKind {
    Syn,
    SynAck,
    Rst,
    IcmpUnreachable,
    DnsQuery,
    DnsResponse,
    /// A SYN reached the server pod's veth (a flow between two pods of this node). Not
    /// a flow event today: the tracker keeps it with the flow's far side.
    SynDelivered,
    /// A DNS-over-TCP segment.
    DnsTcpSegment,
    /// No packet: a timeout expired and changed the verdict.
    Timeout,
    /// No packet: counts the kernel made and whose events were lost were recovered.
    Recovered,
    /// No packet: the client asked the next name of its search path, so this flow's
    /// NXDOMAIN was an expansion, not a failure.
    SearchExpansion,
}

impl From<probe_ebpf::EventKind> for FlowEventKind {
    fn from(kind: probe_ebpf::EventKind) -> Self {
        use probe_ebpf::EventKind;
        match kind {
            EventKind::Syn => Self::Syn,
            EventKind::SynAck => Self::SynAck,
            EventKind::Rst => Self::Rst,
            EventKind::IcmpUnreachable => Self::IcmpUnreachable,
            EventKind::DnsQuery => Self::DnsQuery,
            EventKind::DnsResponse => Self::DnsResponse,
            EventKind::DnsTcpSegment => Self::DnsTcpSegment,
        }
    }
}

impl FlowEventKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One entry of the recent-event ring (`GET /v1/flows`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowEvent {
    pub time: DateTime<Utc>,
    pub flow: Flow,
    pub event: FlowEventKind,
    /// The flow's verdict after this event.
    pub verdict: VerdictKind,
    pub reason: Arc<str>,
    #[serde(default)]
    pub cause: Option<Cause>,
    #[serde(default)]
    pub next: Option<Arc<str>>,
    pub interface: Arc<str>,
    pub src: Option<Arc<Endpoint>>,
    pub dst: Option<Arc<Endpoint>>,
    pub dns: Option<DnsSummary>,
}

/// How an interface's programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// BPF links on the TCX hooks (kernel ≥ 6.6); they die with the agent.
    Tcx,
    /// Filters on a clsact qdisc, through netlink.
    Clsact,
}

/// One attached interface (`GET /v1/interfaces`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    pub attached_at: DateTime<Utc>,
    /// Events received from this interface since it was attached.
    pub events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_names_parse_case_insensitively_and_reject_unknown() {
        assert_eq!("timeout".parse::<VerdictKind>(), Ok(VerdictKind::Timeout));
        assert_eq!(
            "DNS_REFUSED".parse::<VerdictKind>(),
            Ok(VerdictKind::DnsRefused)
        );
        assert!("TIMEOUTS".parse::<VerdictKind>().is_err());
        for &kind in VerdictKind::ALL {
            assert_eq!(kind.as_str().parse::<VerdictKind>(), Ok(kind));
        }
    }

    /// The API's JSON and the names in filters, metrics and messages are one table.
    #[test]
    fn names_are_the_json_names() {
        fn json(value: impl Serialize) -> String {
            serde_json::to_value(value)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        for &kind in VerdictKind::ALL {
            assert_eq!(json(kind), kind.as_str());
        }
        for &cause in Cause::ALL {
            assert_eq!(json(cause), cause.as_str());
            assert_eq!(cause.as_str().parse::<Cause>(), Ok(cause));
        }
        for &event in FlowEventKind::VARIANTS {
            assert_eq!(json(event), event.as_str());
        }
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(json(protocol), protocol.as_str());
        }
        assert_eq!(VerdictKind::DnsRefused.as_str(), "DNS_REFUSED");
        assert_eq!(Cause::DnsTcpBlocked.as_str(), "dns_tcp_blocked");
        assert_eq!(FlowEventKind::SynAck.as_str(), "SYN_ACK");
    }
}
