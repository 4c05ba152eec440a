//! Latency histograms: TCP handshakes (the client's first SYN → the SYN-ACK) and DNS
//! exchanges (a query → its response, matched by id), by source and destination.
//!
//! Both are timed with the kernel's timestamps of the packets at the client pod's veth, so
//! they are what the client waited, network included; a flow whose client is not a pod of
//! the node is not timed (its server's veth sees only the server's turnaround).

use std::time::Duration;

use prometheus_client::{metrics::histogram::Histogram, registry::Registry};

use super::{CappedFamily, FlowLabels, PathLabels, handles::Handles};

/// Bucket upper bounds, in seconds: steps of about ×2 (1, 2.5, 5 per decade) from 50 µs,
/// a call to a pod of the same node, to 5 s, a SYN retransmitted twice or a slow upstream
/// resolver. A handshake that took longer counts in `+Inf` only.
pub const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// What was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Latency {
    /// A TCP handshake: from the attempt's first SYN to the SYN-ACK that answered it.
    TcpHandshake,
    /// A DNS exchange: from a query to the response with its id.
    DnsResponse,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type HistogramFamily = CappedFamily<PathLabels, Histogram, fn() -> Histogram>;

/// The two histogram families, each with at most `max` label sets (beyond, one more set
/// with every label `other`).
pub(super) struct Latencies {
    handshakes: HistogramFamily,
    dns: HistogramFamily,
    /// Histograms by what was timed, port and the identity of the two named ends: the hot
    /// path skips building and hashing six label strings.
    cache: Handles<Latency, Histogram>,
}

impl Latencies {
    pub(super) fn new(max: usize) -> Self {
        Self {
            handshakes: CappedFamily::with_constructor(max, histogram),
            dns: CappedFamily::with_constructor(max, histogram),
            cache: Handles::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "tcp_handshake_seconds",
            "TCP handshakes from the client's first SYN to the SYN-ACK, at the client \
             pod's veth",
            self.handshakes.family.clone(),
        );
        registry.register(
            "dns_response_seconds",
            "DNS exchanges from a query to its response, at the client pod's veth",
            self.dns.family.clone(),
        );
    }

    /// Observes `took` for the flow of `v` (its names and destination port).
    pub(super) fn observe(&self, latency: Latency, v: &FlowLabels, took: Duration) {
        let family = match latency {
            Latency::TcpHandshake => &self.handshakes,
            Latency::DnsResponse => &self.dns,
        };
        self.cache
            .get_or_insert(latency, v, || {
                family.metric(PathLabels::of(v), |_| PathLabels::overflow())
            })
            .observe(took.as_secs_f64());
    }
}
