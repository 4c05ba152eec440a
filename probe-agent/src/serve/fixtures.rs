//! A tracker stand-in and fixed data, shared by the HTTP tests here and `observe`'s.

use std::{net::SocketAddr, sync::Mutex};

use chrono::{DateTime, Utc};

use super::*;
use crate::model::{
    AttachMode, Counts, DnsSummary, Endpoint, Flow, FlowEventKind, Protocol, VerdictKind,
};

/// A tracker stand-in holding fixed verdicts and events, and a live channel small
/// enough to make a follower lag.
pub(crate) struct TestSource {
    pub(crate) verdicts: Vec<Verdict>,
    pub(crate) events: Vec<FlowEvent>,
    pub(crate) live: broadcast::Sender<FlowEvent>,
    pub(crate) ready: Mutex<Result<(), String>>,
}

/// The newest `limit` of `items` by `time`, oldest first, as the trait asks.
fn newest<T: Clone>(
    items: &[T],
    keep: impl Fn(&T) -> bool,
    limit: usize,
    time: fn(&T) -> DateTime<Utc>,
) -> Vec<T> {
    let mut kept: Vec<T> = items.iter().filter(|item| keep(item)).cloned().collect();
    kept.sort_by_key(time);
    kept.split_off(kept.len().saturating_sub(limit))
}

impl FlowSource for TestSource {
    fn verdicts(
        &self,
        head: &HeadFilter,
        keep: &dyn Fn(&Verdict) -> bool,
        limit: usize,
    ) -> Vec<Verdict> {
        let keep = |v: &Verdict| head(&v.flow, v.verdict, v.cause) && keep(v);
        newest(&self.verdicts, keep, limit, |v| v.last_seen)
    }
    fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
        newest(&self.events, keep, limit, |e| e.time)
    }
    fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.live.subscribe()
    }
    fn interfaces(&self) -> Vec<InterfaceStatus> {
        vec![InterfaceStatus {
            name: "veth3f2a".into(),
            ifindex: 7,
            mode: AttachMode::Tcx,
            attached_at: at("2026-11-23T09:59:00Z"),
            events: 12,
        }]
    }
    fn readiness(&self) -> Result<(), String> {
        self.ready.lock().unwrap().clone()
    }
}

pub(crate) fn at(time: &str) -> DateTime<Utc> {
    time.parse().unwrap()
}

pub(crate) fn flow(protocol: Protocol, src: &str, dst: &str) -> Flow {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    Flow {
        protocol,
        src_ip: src.ip(),
        src_port: src.port(),
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    }
}

pub(crate) fn endpoint(
    namespace: &str,
    pod: Option<&str>,
    workload: Option<&str>,
    service: Option<&str>,
) -> Option<Arc<Endpoint>> {
    Some(Arc::new(Endpoint {
        namespace: Some(namespace.into()),
        pod: pod.map(Into::into),
        workload: workload.map(Into::into),
        service: service.map(Into::into),
        node: None,
    }))
}

pub(crate) fn verdict(flow: Flow, kind: VerdictKind, reason: &str, last_seen: &str) -> Verdict {
    Verdict {
        flow,
        verdict: kind,
        reason: reason.into(),
        cause: None,
        next: None,
        counts: Counts::default(),
        first_seen: at("2026-11-23T10:00:00.123Z"),
        last_seen: at(last_seen),
        interface: "veth3f2a".into(),
        src: None,
        dst: None,
        dns: None,
        backend: None,
    }
}

/// Four verdicts, stored out of order; tests name them by source port:
/// 41234 TIMEOUT (10:00:03), 50000 REFUSED (:05), 53001 NXDOMAIN (:07), 40000 OK (:09).
pub(crate) fn fixture_verdicts() -> Vec<Verdict> {
    let checkout = endpoint(
        "production",
        Some("checkout-api-5d4e3c2f-abc12"),
        Some("checkout-api"),
        None,
    );
    let timeout = Verdict {
        counts: Counts {
            syn: 3,
            ..Counts::default()
        },
        src: checkout.clone(),
        dst: endpoint("production", None, None, Some("payment-service")),
        ..verdict(
            flow(Protocol::Tcp, "10.244.1.5:41234", "10.96.45.123:8080"),
            VerdictKind::Timeout,
            "3 SYNs in 3.0s and no answer",
            "2026-11-23T10:00:03.130Z",
        )
    };
    let refused = Verdict {
        counts: Counts {
            syn: 1,
            rst: 1,
            ..Counts::default()
        },
        src: endpoint("staging", Some("web-0"), Some("web"), None),
        ..verdict(
            flow(Protocol::Tcp, "10.244.1.6:50000", "10.244.2.7:80"),
            VerdictKind::Refused,
            "SYN answered by RST",
            "2026-11-23T10:00:05Z",
        )
    };
    let nxdomain = Verdict {
        counts: Counts {
            dns_queries: 1,
            dns_responses: 1,
            ..Counts::default()
        },
        src: checkout,
        dst: endpoint(
            "kube-system",
            Some("coredns-5d78c9869d-abcde"),
            Some("coredns"),
            Some("kube-dns"),
        ),
        dns: Some(DnsSummary {
            id: 4711,
            qname: "flagsmith-postgresql.flagsmith.svc.cluster.local.".into(),
            qtype: "A".into(),
            rcode: Some("NXDOMAIN".into()),
        }),
        ..verdict(
            flow(Protocol::Udp, "10.244.1.5:53001", "10.96.0.10:53"),
            VerdictKind::Nxdomain,
            "name does not exist",
            "2026-11-23T10:00:07Z",
        )
    };
    let ok = Verdict {
        counts: Counts {
            syn: 1,
            syn_ack: 1,
            ..Counts::default()
        },
        ..verdict(
            flow(Protocol::Tcp, "[fd00::5]:40000", "[fd00::9]:443"),
            VerdictKind::Ok,
            "handshake completed",
            "2026-11-23T10:00:09Z",
        )
    };
    vec![nxdomain, timeout, ok, refused]
}

pub(crate) fn event_of(v: &Verdict, event: FlowEventKind) -> FlowEvent {
    FlowEvent {
        time: v.last_seen,
        flow: v.flow,
        event,
        verdict: v.verdict,
        reason: v.reason.clone(),
        cause: v.cause,
        next: v.next.clone(),
        interface: v.interface.clone(),
        src: v.src.clone(),
        dst: v.dst.clone(),
        dns: v.dns.clone(),
    }
}

pub(crate) fn fixture_events() -> Vec<FlowEvent> {
    let kinds = [
        FlowEventKind::DnsResponse,
        FlowEventKind::Timeout,
        FlowEventKind::SynAck,
        FlowEventKind::Rst,
    ];
    fixture_verdicts()
        .iter()
        .zip(kinds)
        .map(|(v, kind)| event_of(v, kind))
        .collect()
}

pub(crate) fn source() -> Arc<TestSource> {
    Arc::new(TestSource {
        verdicts: fixture_verdicts(),
        events: fixture_events(),
        live: broadcast::channel(2).0,
        ready: Mutex::new(Err("programs not attached yet".into())),
    })
}

pub(crate) fn state(source: &Arc<TestSource>) -> AppState {
    AppState::new(source.clone(), Arc::new(Metrics::default()))
}
