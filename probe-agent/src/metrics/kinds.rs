//! The fixed label values: packet kinds, loss sources, decode errors, Kubernetes kinds,
//! Event results, API auth decisions.

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::model::Cause;

/// A packet the kernel program reports because it can change a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Syn,
    SynAck,
    Rst,
    IcmpUnreachable,
    DnsQuery,
    DnsResponse,
    /// A SYN that reached the server pod's veth of a same-node flow: not a flow's SYN
    /// (that one is `Syn`, counted at the client's veth), so counted apart.
    SynDelivered,
    /// A DNS-over-TCP segment (its messages count as `dns_query` / `dns_response`).
    DnsTcpSegment,
}

impl From<probe_ebpf::EventKind> for PacketKind {
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

impl PacketKind {
    /// In declaration order: `Metrics::packets` indexes its counters by `kind as usize`.
    pub const ALL: [PacketKind; 8] = [
        Self::Syn,
        Self::SynAck,
        Self::Rst,
        Self::IcmpUnreachable,
        Self::DnsQuery,
        Self::DnsResponse,
        Self::SynDelivered,
        Self::DnsTcpSegment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::SynAck => "syn_ack",
            Self::Rst => "rst",
            Self::IcmpUnreachable => "icmp_unreachable",
            Self::DnsQuery => "dns_query",
            Self::DnsResponse => "dns_response",
            Self::SynDelivered => "syn_delivered",
            Self::DnsTcpSegment => "dns_tcp_segment",
        }
    }
}

/// Where events were lost before the tracker saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossSource {
    /// The kernel found the ring buffer full.
    Kernel,
    /// The agent's queue between ring-buffer reader and tracker was full.
    Agent,
}

impl LossSource {
    pub const ALL: [LossSource; 2] = [Self::Kernel, Self::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Agent => "agent",
        }
    }
}

/// Why a kernel event could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The header carries a wire-format version this agent does not know.
    Version,
    /// Unknown event kind tag.
    Kind,
    /// Shorter than its header or kind says.
    Truncated,
    /// Well framed but the contents do not parse (packet headers, DNS message).
    Malformed,
}

impl DecodeErrorKind {
    pub const ALL: [DecodeErrorKind; 4] =
        [Self::Version, Self::Kind, Self::Truncated, Self::Malformed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Kind => "kind",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
        }
    }
}

/// The Kubernetes objects the agent watches for names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KubeKind {
    Pods,
    Services,
    EndpointSlices,
    Namespaces,
    NetworkPolicies,
}

impl KubeKind {
    pub const ALL: [KubeKind; 5] = [
        Self::Pods,
        Self::Services,
        Self::EndpointSlices,
        Self::Namespaces,
        Self::NetworkPolicies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pods => "pods",
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Namespaces => "namespaces",
            Self::NetworkPolicies => "networkpolicies",
        }
    }
}

/// What became of a failing cause reported for a Kubernetes Event (`--events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventResult {
    /// The API server accepted the Event.
    Written,
    /// The same pod, cause and destination already had an Event within the window.
    Deduplicated,
    /// The API server refused the Event or could not be reached in time.
    Failed,
    /// The writer's queue was full: the tracker does not wait for it.
    Dropped,
    /// The source pod had its share of Events in the window (`kube_events::PER_POD`).
    RateLimited,
}

impl EventResult {
    pub const ALL: [EventResult; 5] = [
        Self::Written,
        Self::Deduplicated,
        Self::Failed,
        Self::Dropped,
        Self::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Deduplicated => "deduplicated",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// What `--api-auth kube` decided for an API request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthResult {
    Allowed,
    /// 401: no token, or one the API server refused.
    Unauthenticated,
    /// 403: the token's user may not read the path.
    Forbidden,
    /// 503: the Kubernetes API could not answer (the request was refused).
    Unavailable,
}

impl AuthResult {
    pub const ALL: [AuthResult; 4] = [
        Self::Allowed,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
        }
    }
}

macro_rules! label_value {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}
label_value!(
    PacketKind,
    LossSource,
    DecodeErrorKind,
    KubeKind,
    Cause,
    EventResult,
    AuthResult
);
