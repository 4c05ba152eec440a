//! Query parameters of `/v1/verdicts` and `/v1/flows` (docs/api.md, "Query parameters").
//!
//! Parsing is strict: an unknown, repeated or malformed parameter is an error, because a
//! typo that silently widened the filter would answer a different question than asked.

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use globset::{Glob, GlobMatcher};

use crate::model::{Cause, Endpoint, Flow, FlowEvent, Protocol, Verdict, VerdictKind};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

/// Bad query values are echoed back in errors, but only this many characters of them.
const SHOWN_CHARS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown query parameter {0:?} (known: {known})", known = Param::known())]
    UnknownParameter(String),
    #[error("query parameter {0:?} given more than once")]
    Repeated(&'static str),
    #[error("invalid {param} {value:?}: expected {expected}")]
    InvalidValue {
        param: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("query parameter {param:?} is not supported {context}")]
    NotSupported {
        param: &'static str,
        context: &'static str,
    },
}

/// The names of the query parameters the API takes, in the order its errors list them.
pub fn parameter_names() -> impl Iterator<Item = &'static str> {
    Param::ALL.into_iter().map(Param::name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    Verdict,
    Cause,
    Protocol,
    SrcIp,
    DstIp,
    Ip,
    Port,
    Namespace,
    Pod,
    SrcNamespace,
    SrcPod,
    SrcWorkload,
    DstNamespace,
    DstPod,
    DstService,
    Since,
    Limit,
    Follow,
    Expand,
}

impl Param {
    const ALL: [Param; 19] = [
        Self::Verdict,
        Self::Cause,
        Self::Protocol,
        Self::SrcIp,
        Self::DstIp,
        Self::Ip,
        Self::Port,
        Self::Namespace,
        Self::Pod,
        Self::SrcNamespace,
        Self::SrcPod,
        Self::SrcWorkload,
        Self::DstNamespace,
        Self::DstPod,
        Self::DstService,
        Self::Since,
        Self::Limit,
        Self::Follow,
        Self::Expand,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Verdict => "verdict",
            Self::Cause => "cause",
            Self::Protocol => "protocol",
            Self::SrcIp => "src_ip",
            Self::DstIp => "dst_ip",
            Self::Ip => "ip",
            Self::Port => "port",
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::SrcNamespace => "src_namespace",
            Self::SrcPod => "src_pod",
            Self::SrcWorkload => "src_workload",
            Self::DstNamespace => "dst_namespace",
            Self::DstPod => "dst_pod",
            Self::DstService => "dst_service",
            Self::Since => "since",
            Self::Limit => "limit",
            Self::Follow => "follow",
            Self::Expand => "expand",
        }
    }

    fn known() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// What a valid value looks like, for error messages.
    fn expected(self) -> &'static str {
        match self {
            Self::Verdict => {
                "a comma-separated list of OK, PENDING, TIMEOUT, REFUSED, RESET, UNREACHABLE, NXDOMAIN, SERVFAIL, DNS_REFUSED, DNS_ERROR, DNS_TIMEOUT, ABORTED"
            }
            Self::Cause => {
                "a comma-separated list of search_path_expansion, name_not_found, dns_server_error, dns_no_answer, no_ready_endpoints, target_port_mismatch, nothing_listening, connection_reset, destination_unreachable, network_policy, dropped_between, server_silent, no_answer, node_datapath, late_answer, dns_tcp_blocked"
            }
            Self::Protocol => "tcp or udp",
            Self::SrcIp | Self::DstIp | Self::Ip => "an IPv4 or IPv6 address",
            Self::Port => "a port number from 0 to 65535",
            Self::Namespace | Self::SrcNamespace | Self::DstNamespace => "a namespace name",
            Self::Pod | Self::SrcPod | Self::DstPod => "a glob pattern such as checkout-*",
            Self::SrcWorkload => "a workload name",
            Self::DstService => "a Service name",
            Self::Since => "a duration such as 30s or 5m, or an RFC 3339 time",
            Self::Limit => "a number from 1 to 10000",
            Self::Follow | Self::Expand => "true or false",
        }
    }

    fn invalid(self, value: &str) -> QueryError {
        QueryError::InvalidValue {
            param: self.name(),
            value: shown(value),
            expected: self.expected(),
        }
    }
}

/// `value`, cut to [`SHOWN_CHARS`] characters.
fn shown(value: &str) -> String {
    let mut shown: String = value.chars().take(SHOWN_CHARS).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    shown
}

/// A parsed query: filters (all optional, ANDed), `limit` and `follow`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Any of these verdicts.
    pub verdicts: Option<Vec<VerdictKind>>,
    /// Any of these causes.
    pub causes: Option<Vec<Cause>>,
    /// List the flows a node-level verdict stands for (`/v1/verdicts`).
    pub expand: Option<bool>,
    pub protocol: Option<Protocol>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    /// Either side.
    pub ip: Option<IpAddr>,
    /// Destination port.
    pub port: Option<u16>,
    /// Namespace of either side.
    pub namespace: Option<String>,
    /// Matches the pod name of either side.
    pub pod: Option<GlobMatcher>,
    /// The client's (`src`) and the server's (`dst`) names, each matched on its own side.
    pub src: EndFilter,
    pub dst: EndFilter,
    /// Not older than this (Verdict.last_seen, FlowEvent.time).
    pub since: Option<DateTime<Utc>>,
    /// As given; see [`Filter::limit`] for the effective value.
    pub limit: Option<usize>,
    pub follow: Option<bool>,
}

impl Filter {
    /// Parses decoded query pairs; a relative `since` counts back from now.
    pub fn parse<I, K, V>(pairs: I) -> Result<Self, QueryError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::parse_at(pairs, Utc::now())
    }

    /// [`Filter::parse`] with an explicit "now", for a relative `since`.
    pub fn parse_at<I, K, V>(pairs: I, now: DateTime<Utc>) -> Result<Self, QueryError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut filter = Self::default();
        let mut seen = Vec::with_capacity(Param::ALL.len());
        for (key, value) in pairs {
            let (key, value) = (key.as_ref(), value.as_ref());
            let param = Param::ALL
                .into_iter()
                .find(|param| param.name() == key)
                .ok_or_else(|| QueryError::UnknownParameter(shown(key)))?;
            if seen.contains(&param) {
                return Err(QueryError::Repeated(param.name()));
            }
            seen.push(param);
            filter.set(param, value, now)?;
        }
        Ok(filter)
    }

    fn set(&mut self, param: Param, value: &str, now: DateTime<Utc>) -> Result<(), QueryError> {
        let invalid = || param.invalid(value);
        if value.is_empty() {
            return Err(invalid());
        }
        let ip = || value.parse::<IpAddr>().map_err(|_| invalid());
        match param {
            Param::Verdict => {
                let kinds = value
                    .split(',')
                    .map(|name| name.parse().map_err(|_| param.invalid(name)))
                    .collect::<Result<_, _>>()?;
                self.verdicts = Some(kinds);
            }
            Param::Cause => {
                let causes = value
                    .split(',')
                    .map(|name| name.parse().map_err(|_| param.invalid(name)))
                    .collect::<Result<_, _>>()?;
                self.causes = Some(causes);
            }
            Param::Expand => self.expand = Some(parse_bool(value).ok_or_else(invalid)?),
            Param::Protocol => {
                self.protocol = Some(match value.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return Err(invalid()),
                });
            }
            Param::SrcIp => self.src_ip = Some(ip()?),
            Param::DstIp => self.dst_ip = Some(ip()?),
            Param::Ip => self.ip = Some(ip()?),
            Param::Port => self.port = Some(value.parse().map_err(|_| invalid())?),
            Param::Namespace => self.namespace = Some(value.to_string()),
            Param::Pod => self.pod = Some(glob(value).ok_or_else(invalid)?),
            Param::SrcNamespace => self.src.namespace = Some(value.to_string()),
            Param::SrcPod => self.src.pod = Some(glob(value).ok_or_else(invalid)?),
            Param::SrcWorkload => self.src.workload = Some(value.to_string()),
            Param::DstNamespace => self.dst.namespace = Some(value.to_string()),
            Param::DstPod => self.dst.pod = Some(glob(value).ok_or_else(invalid)?),
            Param::DstService => self.dst.service = Some(value.to_string()),
            Param::Since => self.since = Some(parse_since(value, now).ok_or_else(invalid)?),
            Param::Limit => {
                let limit = value.parse().map_err(|_| invalid())?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(invalid());
                }
                self.limit = Some(limit);
            }
            Param::Follow => self.follow = Some(parse_bool(value).ok_or_else(invalid)?),
        }
        Ok(())
    }

    /// How many results to return at most.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// The `cause` filter asks for `cause` by name.
    pub fn names_cause(&self, cause: Cause) -> bool {
        self.causes
            .as_ref()
            .is_some_and(|causes| causes.contains(&cause))
    }

    pub fn matches_verdict(&self, v: &Verdict) -> bool {
        self.matches_head(&v.flow, v.verdict, v.cause) && self.matches_built(v)
    }

    /// What only a built verdict can be asked (names and time): the rest of the filter,
    /// for a verdict whose head [`Self::matches_head`] has passed already.
    pub fn matches_built(&self, v: &Verdict) -> bool {
        self.matches_rest([&v.src, &v.dst], v.last_seen)
    }

    pub fn matches_event(&self, e: &FlowEvent) -> bool {
        self.matches_head(&e.flow, e.verdict, e.cause)
            && self.matches_rest([&e.src, &e.dst], e.time)
    }

    /// What a flow, its verdict and its cause decide: verdict, cause, protocol, addresses
    /// and port (see [`super::HeadFilter`]).
    pub fn matches_head(&self, flow: &Flow, verdict: VerdictKind, cause: Option<Cause>) -> bool {
        self.matches_cause(cause)
            && self
                .verdicts
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&verdict))
            && self.protocol.is_none_or(|p| p == flow.protocol)
            && self.src_ip.is_none_or(|ip| ip == flow.src_ip)
            && self.dst_ip.is_none_or(|ip| ip == flow.dst_ip)
            && self
                .ip
                .is_none_or(|ip| ip == flow.src_ip || ip == flow.dst_ip)
            && self.port.is_none_or(|port| port == flow.dst_port)
    }

    fn matches_cause(&self, cause: Option<Cause>) -> bool {
        self.causes
            .as_ref()
            .is_none_or(|causes| cause.is_some_and(|c| causes.contains(&c)))
    }

    /// The rest: names and time.
    fn matches_rest(&self, ends: [&Option<Arc<Endpoint>>; 2], time: DateTime<Utc>) -> bool {
        let both = || ends.into_iter().flatten();
        self.namespace
            .as_deref()
            .is_none_or(|ns| both().any(|end| end.namespace.as_deref() == Some(ns)))
            && self.pod.as_ref().is_none_or(|glob| {
                both().any(|end| end.pod.as_deref().is_some_and(|pod| glob.is_match(pod)))
            })
            && self.src.matches(ends[0].as_deref())
            && self.dst.matches(ends[1].as_deref())
            && self.since.is_none_or(|since| time >= since)
    }
}

/// Filters on one end of a flow; an unknown end (no Kubernetes names) never matches one.
#[derive(Clone, Debug, Default)]
pub struct EndFilter {
    pub namespace: Option<String>,
    pub pod: Option<GlobMatcher>,
    pub workload: Option<String>,
    pub service: Option<String>,
}

impl EndFilter {
    fn matches(&self, end: Option<&Endpoint>) -> bool {
        let is = |want: &Option<String>, have: fn(&Endpoint) -> Option<&str>| {
            want.as_deref()
                .is_none_or(|want| end.and_then(have) == Some(want))
        };
        is(&self.namespace, |e| e.namespace.as_deref())
            && is(&self.workload, |e| e.workload.as_deref())
            && is(&self.service, |e| e.service.as_deref())
            && self.pod.as_ref().is_none_or(|glob| {
                end.and_then(|e| e.pod.as_deref())
                    .is_some_and(|pod| glob.is_match(pod))
            })
    }
}

fn glob(value: &str) -> Option<GlobMatcher> {
    Some(Glob::new(value).ok()?.compile_matcher())
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `30s`-style durations count back from `now` (saturating far in the past);
/// anything else must be an RFC 3339 time.
fn parse_since(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(back) = humantime::parse_duration(value) {
        let back = TimeDelta::from_std(back).unwrap_or(TimeDelta::MAX);
        return Some(
            now.checked_sub_signed(back)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        );
    }
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Counts, FlowEventKind};

    fn now() -> DateTime<Utc> {
        "2026-11-23T10:01:00Z".parse().unwrap()
    }

    fn parse(query: &[(&str, &str)]) -> Result<Filter, QueryError> {
        Filter::parse_at(query.iter().copied(), now())
    }

    fn error(query: &[(&str, &str)]) -> String {
        parse(query).unwrap_err().to_string()
    }

    #[test]
    fn error_messages_list_every_accepted_verdict_and_cause() {
        let verdicts = Param::Verdict.expected();
        for &kind in VerdictKind::ALL {
            assert!(verdicts.contains(kind.as_str()), "{kind} missing");
            let unknown = "bogus".parse::<VerdictKind>().unwrap_err().to_string();
            assert!(
                unknown.contains(kind.as_str()),
                "{kind} missing from {unknown}"
            );
        }
        let causes = Param::Cause.expected();
        for &cause in Cause::ALL {
            assert!(
                causes.contains(cause.as_str()),
                "{} missing",
                cause.as_str()
            );
        }
    }

    fn pod(namespace: &str, pod: &str) -> Option<Arc<Endpoint>> {
        Some(Arc::new(Endpoint {
            namespace: Some(namespace.into()),
            pod: Some(pod.into()),
            ..Endpoint::default()
        }))
    }

    /// TCP TIMEOUT 10.244.1.5:41234 → 10.96.45.123:8080, production/checkout-api-… →
    /// no known destination, last seen 10:00:30.
    fn verdict() -> Verdict {
        Verdict {
            flow: Flow {
                protocol: Protocol::Tcp,
                src_ip: "10.244.1.5".parse().unwrap(),
                src_port: 41234,
                dst_ip: "10.96.45.123".parse().unwrap(),
                dst_port: 8080,
            },
            verdict: VerdictKind::Timeout,
            reason: "3 SYNs".into(),
            cause: None,
            next: None,
            counts: Counts::default(),
            first_seen: "2026-11-23T10:00:00Z".parse().unwrap(),
            last_seen: "2026-11-23T10:00:30Z".parse().unwrap(),
            interface: "veth3f2a".into(),
            src: pod("production", "checkout-api-5d4e3c2f-abc12"),
            dst: None,
            dns: None,
            backend: None,
        }
    }

    fn matches(query: &[(&str, &str)]) -> bool {
        parse(query).unwrap().matches_verdict(&verdict())
    }

    #[test]
    fn no_parameters_match_everything_with_the_default_limit() {
        let filter = parse(&[]).unwrap();
        assert!(filter.matches_verdict(&verdict()));
        assert_eq!(filter.limit(), DEFAULT_LIMIT);
        assert_eq!(filter.follow, None);
    }

    #[test]
    fn each_filter_matches_and_rejects() {
        let cases: &[(&str, &str, &str)] = &[
            ("verdict", "TIMEOUT", "OK"),
            ("verdict", "refused,timeout", "REFUSED,RESET"),
            ("protocol", "TCP", "udp"),
            ("src_ip", "10.244.1.5", "10.96.45.123"),
            ("dst_ip", "10.96.45.123", "10.244.1.5"),
            ("ip", "10.244.1.5", "10.244.1.6"),
            ("ip", "10.96.45.123", "::1"),
            ("port", "8080", "41234"),
            ("namespace", "production", "prod"),
            ("pod", "checkout-api-*", "checkout-web-*"),
            ("pod", "*-abc12", "checkout-api"),
            ("since", "30s", "29s"),
            ("since", "2026-11-23T10:00:30Z", "2026-11-23T10:00:30.001Z"),
            (
                "since",
                "2026-11-23T11:00:00+01:00",
                "2026-11-23T12:00:00+01:00",
            ),
        ];
        for &(param, yes, no) in cases {
            assert!(matches(&[(param, yes)]), "{param}={yes} should match");
            assert!(!matches(&[(param, no)]), "{param}={no} should not match");
        }
    }

    #[test]
    fn end_filters_match_their_own_side_only() {
        let mut v = verdict();
        v.src = Some(Arc::new(Endpoint {
            namespace: Some("production".into()),
            pod: Some("checkout-api-5d4e3c2f-abc12".into()),
            workload: Some("checkout-api".into()),
            ..Endpoint::default()
        }));
        v.dst = Some(Arc::new(Endpoint {
            namespace: Some("payments".into()),
            pod: Some("payment-0".into()),
            workload: Some("payment".into()),
            service: Some("payment-service".into()),
            node: None,
        }));
        let cases: &[(&str, &str, &str)] = &[
            ("src_namespace", "production", "payments"),
            ("src_pod", "checkout-api-*", "payment-*"),
            ("src_workload", "checkout-api", "payment"),
            ("dst_namespace", "payments", "production"),
            ("dst_pod", "payment-?", "checkout-*"),
            ("dst_service", "payment-service", "payment"),
        ];
        for &(param, yes, no) in cases {
            let filter = |value| parse(&[(param, value)]).unwrap();
            assert!(
                filter(yes).matches_verdict(&v),
                "{param}={yes} should match"
            );
            assert!(
                !filter(no).matches_verdict(&v),
                "{param}={no} should not match"
            );
        }
        // An end without names never matches a filter on it.
        v.dst = None;
        assert!(
            !parse(&[("dst_namespace", "payments")])
                .unwrap()
                .matches_verdict(&v)
        );
        assert!(
            parse(&[("src_namespace", "production"), ("port", "8080")])
                .unwrap()
                .matches_verdict(&v)
        );
    }

    #[test]
    fn filters_are_anded() {
        assert!(matches(&[("verdict", "TIMEOUT"), ("port", "8080")]));
        assert!(!matches(&[("verdict", "TIMEOUT"), ("port", "80")]));
    }

    #[test]
    fn ipv6_addresses_parse_and_match() {
        let mut v = verdict();
        v.flow.dst_ip = "fd00::9".parse().unwrap();
        let filter = parse(&[("dst_ip", "fd00:0:0::9")]).unwrap();
        assert!(filter.matches_verdict(&v));
        assert!(!filter.matches_verdict(&verdict()));
    }

    #[test]
    fn unknown_endpoints_never_match_namespace_or_pod() {
        let mut v = verdict();
        v.src = None;
        assert!(
            !parse(&[("namespace", "production")])
                .unwrap()
                .matches_verdict(&v)
        );
        assert!(!parse(&[("pod", "*")]).unwrap().matches_verdict(&v));
        v.dst = pod("production", "payment-0");
        assert!(
            parse(&[("namespace", "production")])
                .unwrap()
                .matches_verdict(&v)
        );
        assert!(parse(&[("pod", "payment-?")]).unwrap().matches_verdict(&v));
    }

    #[test]
    fn events_match_on_their_time() {
        let v = verdict();
        let event = FlowEvent {
            time: "2026-11-23T10:00:10Z".parse().unwrap(),
            flow: v.flow,
            event: FlowEventKind::Syn,
            verdict: VerdictKind::Pending,
            reason: "".into(),
            cause: None,
            next: None,
            interface: v.interface,
            src: v.src,
            dst: v.dst,
            dns: None,
        };
        assert!(parse(&[("since", "50s")]).unwrap().matches_event(&event));
        assert!(!parse(&[("since", "49s")]).unwrap().matches_event(&event));
        assert!(
            parse(&[("verdict", "PENDING")])
                .unwrap()
                .matches_event(&event)
        );
        assert!(
            !parse(&[("verdict", "TIMEOUT")])
                .unwrap()
                .matches_event(&event)
        );
    }

    #[test]
    fn limit_and_follow_parse_within_bounds() {
        assert_eq!(parse(&[("limit", "1")]).unwrap().limit(), 1);
        assert_eq!(parse(&[("limit", "10000")]).unwrap().limit(), 10000);
        assert_eq!(parse(&[("follow", "true")]).unwrap().follow, Some(true));
        assert_eq!(parse(&[("follow", "FALSE")]).unwrap().follow, Some(false));
    }

    #[test]
    fn huge_durations_saturate_instead_of_failing() {
        let filter = parse(&[("since", "100000000years")]).unwrap();
        assert!(filter.matches_verdict(&verdict()));
    }

    #[test]
    fn errors_name_the_parameter_and_the_bad_value() {
        let verdicts = Param::Verdict.expected();
        let cases: Vec<(&[(&str, &str)], String)> = vec![
            (&[("verdict", "TIMEOUT,bogus")], format!("invalid verdict \"bogus\": expected {verdicts}")),
            (&[("verdict", "TIMEOUT,")], format!("invalid verdict \"\": expected {verdicts}")),
            (&[("protocol", "icmp")], "invalid protocol \"icmp\": expected tcp or udp".into()),
            (&[("src_ip", "10.0.0.256")], "invalid src_ip \"10.0.0.256\": expected an IPv4 or IPv6 address".into()),
            (&[("dst_ip", "example.com")], "invalid dst_ip \"example.com\": expected an IPv4 or IPv6 address".into()),
            (&[("ip", "fd00:::1")], "invalid ip \"fd00:::1\": expected an IPv4 or IPv6 address".into()),
            (&[("port", "65536")], "invalid port \"65536\": expected a port number from 0 to 65535".into()),
            (&[("port", "-1")], "invalid port \"-1\": expected a port number from 0 to 65535".into()),
            (&[("namespace", "")], "invalid namespace \"\": expected a namespace name".into()),
            (&[("pod", "web-[")], "invalid pod \"web-[\": expected a glob pattern such as checkout-*".into()),
            (&[("src_pod", "web-[")], "invalid src_pod \"web-[\": expected a glob pattern such as checkout-*".into()),
            (&[("dst_service", "")], "invalid dst_service \"\": expected a Service name".into()),
            (&[("src_workload", "")], "invalid src_workload \"\": expected a workload name".into()),
            (&[("since", "5 fortnights")], "invalid since \"5 fortnights\": expected a duration such as 30s or 5m, or an RFC 3339 time".into()),
            (&[("since", "2026-11-23 10:00")], "invalid since \"2026-11-23 10:00\": expected a duration such as 30s or 5m, or an RFC 3339 time".into()),
            (&[("limit", "0")], "invalid limit \"0\": expected a number from 1 to 10000".into()),
            (&[("limit", "10001")], "invalid limit \"10001\": expected a number from 1 to 10000".into()),
            (&[("limit", "ten")], "invalid limit \"ten\": expected a number from 1 to 10000".into()),
            (&[("follow", "yes")], "invalid follow \"yes\": expected true or false".into()),
            (&[("verdict", "OK"), ("verdict", "TIMEOUT")], "query parameter \"verdict\" given more than once".into()),
            (&[("vedict", "OK")], "unknown query parameter \"vedict\" (known: verdict, cause, protocol, src_ip, dst_ip, ip, port, namespace, pod, src_namespace, src_pod, src_workload, dst_namespace, dst_pod, dst_service, since, limit, follow, expand)".into()),
        ];
        for (query, message) in cases {
            assert_eq!(error(query), message, "query {query:?}");
        }
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = "x".repeat(1000);
        assert_eq!(
            error(&[("port", &long)]),
            format!(
                "invalid port \"{}…\": expected a port number from 0 to 65535",
                "x".repeat(64)
            )
        );
    }
}
