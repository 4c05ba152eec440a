//! What the fuzz targets share: flow keys as the kernel writes them, and the checks on a
//! parsed API query.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use lab::craft;
use probe_agent::{
    model::{Flow, FlowEvent, FlowEventKind, Protocol, Verdict, VerdictKind},
    serve::{Filter, MAX_LIMIT, parameter_names},
};
use probe_ebpf::{Direction, FlowKey, HookKey, IPPROTO_TCP, IPPROTO_UDP};

/// The ifindex `craft::wire_event` puts in its records.
pub const CRAFT_IFINDEX: u32 = 7;

/// The flow key the kernel writes for a packet with 5-tuple `tuple` (wire format 2): the
/// tuple as on the wire, `src` the sender (for an ICMP error, the quoted packet's).
pub fn wire_key(tuple: &Flow) -> FlowKey {
    let protocol = match tuple.protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    };
    let src = SocketAddr::new(tuple.src_ip, tuple.src_port);
    let dst = SocketAddr::new(tuple.dst_ip, tuple.dst_port);
    craft::flow_key(protocol, src, dst)
}

/// Where the kernel counts such a packet seen at `direction` of a `craft::wire_event`
/// interface.
pub fn wire_hook(tuple: &Flow, direction: Direction) -> HookKey {
    HookKey {
        tuple: wire_key(tuple),
        ifindex: CRAFT_IFINDEX,
        direction: direction as u32,
    }
}

/// "Now" for relative `since` values, fixed so that runs reproduce.
pub fn query_now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).expect("a valid time")
}

/// Errors echo the bad value cut to 64 characters: an answer stays small whatever the
/// query (64 four-byte characters, the parameter name and the longest expectation).
const MAX_ERROR_BYTES: usize = 1024;

/// Parses decoded query pairs as the API does and checks the outcome: a filter only from
/// known, distinct parameters, with its limit in bounds, that can be applied to a verdict
/// and an event; or an error of bounded size.
pub fn check_query(pairs: &[(String, String)]) {
    match Filter::parse_at(pairs.iter().map(|(k, v)| (k, v)), query_now()) {
        Ok(filter) => {
            for (i, (key, _)) in pairs.iter().enumerate() {
                assert!(
                    parameter_names().any(|name| name == key),
                    "accepted unknown {key:?}"
                );
                assert!(
                    pairs[..i].iter().all(|(k, _)| k != key),
                    "accepted repeated {key:?}"
                );
            }
            assert!((1..=MAX_LIMIT).contains(&filter.limit()));
            let verdict = sample_verdict();
            let _ = filter.matches_verdict(&verdict);
            let _ = filter.matches_event(&FlowEvent {
                time: verdict.last_seen,
                flow: verdict.flow,
                event: FlowEventKind::Syn,
                verdict: verdict.verdict,
                reason: verdict.reason.clone(),
                cause: verdict.cause,
                next: verdict.next.clone(),
                interface: verdict.interface.clone(),
                src: verdict.src.clone(),
                dst: verdict.dst.clone(),
                dns: None,
            });
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.len() <= MAX_ERROR_BYTES,
                "{} bytes of error: {message}",
                message.len()
            );
        }
    }
}

fn sample_verdict() -> Verdict {
    let endpoint = |namespace: &str, pod: &str| {
        Some(std::sync::Arc::new(probe_agent::model::Endpoint {
            namespace: Some(namespace.into()),
            pod: Some(pod.into()),
            ..Default::default()
        }))
    };
    Verdict {
        flow: Flow {
            protocol: Protocol::Tcp,
            src_ip: "10.244.1.5".parse().expect("an address"),
            src_port: 41234,
            dst_ip: "fd00::9".parse().expect("an address"),
            dst_port: 8080,
        },
        verdict: VerdictKind::Timeout,
        reason: "3 SYNs".into(),
        cause: Some(probe_agent::model::Cause::NoAnswer),
        next: None,
        counts: Default::default(),
        first_seen: query_now(),
        last_seen: query_now(),
        interface: "veth3f2a".into(),
        src: endpoint("production", "checkout-api-5d4e3c2f-abc12"),
        dst: endpoint("kube-system", "coredns-0"),
        dns: None,
        backend: Some("10.244.2.9:8443".parse().expect("an address")),
    }
}
