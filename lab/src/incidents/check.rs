//! The checker: the agent's verdicts (`GET /v1/verdicts`, as JSON) against the catalog's
//! expectations, with a line per expectation for people to read.

use std::net::IpAddr;

use serde_json::Value;

use super::{Cluster, Dest, Expect, Flows, Incident, Next, QName, pod_name};

/// The parts of a verdict (docs/api.md, "JSON shapes") the checker reads.
#[derive(Clone, Debug)]
pub struct Seen {
    pub verdict: String,
    pub cause: Option<String>,
    pub reason: String,
    pub next: Option<String>,
    /// `namespace/pod`, or empty.
    pub src_name: String,
    /// `namespace/pod`, else `namespace/service`, or empty.
    pub dst_name: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub dst_port: Option<u64>,
    pub qname: Option<String>,
}

impl Seen {
    pub fn from_json(v: &Value) -> Seen {
        let ip = |key: &str| v["flow"][key].as_str().and_then(|s| s.parse().ok());
        let name = |end: &Value, keys: &[&str]| {
            let namespace = end["namespace"].as_str().unwrap_or_default();
            keys.iter()
                .find_map(|key| end[key].as_str())
                .map(|name| format!("{namespace}/{name}"))
                .unwrap_or_default()
        };
        let text = |key: &str| v[key].as_str().map(str::to_owned);
        Seen {
            verdict: text("verdict").unwrap_or_default(),
            cause: text("cause"),
            reason: text("reason").unwrap_or_default(),
            next: text("next"),
            src_name: name(&v["src"], &["pod"]),
            dst_name: name(&v["dst"], &["pod", "service"]),
            src: ip("src_ip"),
            dst: ip("dst_ip"),
            dst_port: v["flow"]["dst_port"].as_u64(),
            qname: v["dns"]["qname"].as_str().map(str::to_owned),
        }
    }

    fn shown(&self) -> String {
        match self.cause.as_deref() {
            Some(c) => format!("{} {c}: {}", self.verdict, self.reason),
            None => format!("{} (no cause): {}", self.verdict, self.reason),
        }
    }
}

/// What the check found: a line per expectation, and each problem in a few words.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    fn ok(&mut self, line: String) {
        self.lines.push(format!("  [ok ] {line}"));
    }

    fn bad(&mut self, line: String, problem: String) {
        self.lines.push(format!("  [BAD] {line}"));
        self.problems.push(problem);
    }
}

/// Checks `incidents`' expectations against `expanded` (`/v1/verdicts?expand=true`: every
/// flow, the folded ones too) and `listed` (`/v1/verdicts`: the node-level verdicts, and
/// no folded rows); then that every failure has a cause and nothing that worked has one.
pub fn check(
    cluster: &Cluster,
    incidents: &[&Incident],
    expanded: &Value,
    listed: &Value,
) -> Report {
    let seen_of = |json: &Value| -> Vec<Seen> {
        json["verdicts"]
            .as_array()
            .map(|all| all.iter().map(Seen::from_json).collect())
            .unwrap_or_default()
    };
    let flows = seen_of(expanded);
    let mut report = Report::default();
    for incident in incidents {
        for expect in incident.expect {
            match expect.flows {
                Flows::Node { .. } => check_node(expect, listed, &mut report),
                _ => check_flows(cluster, incident, expect, &flows, &mut report),
            }
        }
    }
    if incidents.iter().any(|i| i.is_node_wide()) {
        let unfolded = seen_of(listed)
            .iter()
            .filter(|f| f.cause.as_deref() == Some("node_datapath"))
            .count();
        if unfolded > 0 {
            report.bad(
                format!("{unfolded} node_datapath rows listed without expand=true"),
                "node_datapath rows not folded".into(),
            );
        }
    }
    // Nothing that worked has a failure cause; every failure has one.
    for f in &flows {
        let problem = match (f.verdict.as_str(), f.cause.as_deref()) {
            ("OK" | "PENDING", None | Some("search_path_expansion")) => None,
            ("OK" | "PENDING", Some(c)) => Some(format!("a healthy flow with cause {c}")),
            (_, Some("search_path_expansion")) => {
                Some("a search-path expansion counted as a failure".to_string())
            }
            (_, None) => Some("a failure without a cause".to_string()),
            _ => None,
        };
        if let Some(problem) = problem {
            report.bad(
                format!(
                    "{problem}: {} {} -> {} {:?}: {}",
                    f.verdict, f.src_name, f.dst_name, f.qname, f.reason
                ),
                problem,
            );
        }
    }
    report
}

/// Whether flow `f` is one of `flows`.
fn belongs(cluster: &Cluster, flows: Flows, f: &Seen) -> bool {
    let ipv4 = |pod: &str| cluster.pod(pod).ok().map(|p| IpAddr::V4(p.ipv4));
    match flows {
        Flows::Tcp { from, to, port } => {
            let (src, dst) = match to {
                Dest::Pod(to) => (ipv4(from), ipv4(to)),
                Dest::PodV6(to) => (
                    cluster.pod(from).ok().map(|p| IpAddr::V6(p.ipv6)),
                    cluster.pod(to).ok().map(|p| IpAddr::V6(p.ipv6)),
                ),
                Dest::Vip(ip) => (ipv4(from), Some(IpAddr::V4(ip))),
            };
            f.src.is_some() && f.src == src && f.dst == dst && f.dst_port == Some(u64::from(port))
        }
        Flows::Dns { from, qname } => {
            let Some(q) = f.qname.as_deref() else {
                return false;
            };
            f.src.is_some()
                && f.src == ipv4(from)
                && match qname {
                    QName::Is(name) => q == name,
                    QName::StartsWith(prefix) => q.starts_with(prefix),
                    QName::Under(name) => {
                        q.len() > name.len() + 1 && q.starts_with(&format!("{name}."))
                    }
                    QName::Any => true,
                }
        }
        Flows::Node { .. } => false,
    }
}

/// What an expectation is about, in a few words: "checkout -> db:5432".
fn what(incident: &Incident, expect: &Expect) -> String {
    match expect.flows {
        Flows::Tcp { from, to, port } => match to {
            Dest::Pod(to) => format!("{from} -> {to}:{port}"),
            Dest::PodV6(to) => format!("{from} -> {to}:{port} over IPv6"),
            Dest::Vip(ip) => format!("{from} -> {ip}:{port}"),
        },
        Flows::Dns { from, qname } => match qname {
            QName::Is(q) | QName::StartsWith(q) => format!("{from} resolves {q}"),
            QName::Under(q) => format!("{from} resolves {q} (search path)"),
            QName::Any => format!("{from}: {}", incident.name),
        },
        Flows::Node { .. } => "the node".into(),
    }
}

/// Every flow of the expectation with its verdict must have its cause, reason and next,
/// as many as it says, and name its client and destination; an expectation of health
/// also wants none of its flows failing.
fn check_flows(
    cluster: &Cluster,
    incident: &Incident,
    expect: &Expect,
    flows: &[Seen],
    report: &mut Report,
) {
    let (verdict, cause) = (expect.verdict, expect.cause.unwrap_or("-"));
    let what = what(incident, expect);
    let mine: Vec<&Seen> = flows
        .iter()
        .filter(|f| belongs(cluster, expect.flows, f))
        .collect();
    let found: Vec<&&Seen> = mine.iter().filter(|f| f.verdict == verdict).collect();
    let Some(first) = found.first() else {
        let seen: Vec<String> = mine
            .iter()
            .map(|f| format!("{} {}", f.verdict, f.cause.as_deref().unwrap_or("-")))
            .collect();
        return report.bad(
            format!("{verdict} {cause}: {what}: not found (verdicts for it: {seen:?})"),
            format!("{verdict} {what}"),
        );
    };
    let names = format!("{} -> {}", first.src_name, first.dst_name);
    let wrong = found.iter().find(|f| {
        f.cause.as_deref() != expect.cause
            || !expect.reason.iter().all(|text| f.reason.contains(text))
            || match expect.next {
                Next::Unchecked => false,
                Next::Nothing => f.next.is_some(),
                Next::Is(next) => f.next.as_deref() != Some(next),
            }
    });
    if let Some(wrong) = wrong {
        return report.bad(
            format!(
                "{}; next: {:?}\n        expected cause {cause} with {:?}, next {:?}\n        {what} ({names})",
                wrong.shown(),
                wrong.next,
                expect.reason,
                expect.next
            ),
            format!("{verdict} {cause} {what}"),
        );
    }
    if let Some(count) = expect.count
        && found.len() != count
    {
        return report.bad(
            format!(
                "{}\n        {what}: {} flows, expected {count}",
                first.shown(),
                found.len()
            ),
            format!("{verdict} {what}: {} flows, not {count}", found.len()),
        );
    }
    if !expect.is_failure() {
        let failing: Vec<&&Seen> = mine
            .iter()
            .filter(|f| !matches!(f.verdict.as_str(), "OK" | "PENDING"))
            .collect();
        if let Some(failed) = failing.first() {
            return report.bad(
                format!(
                    "{}\n        {what}: {} failed",
                    failed.shown(),
                    failing.len()
                ),
                format!("{what} failed"),
            );
        }
    }
    let client = match expect.flows {
        Flows::Tcp { from, .. } | Flows::Dns { from, .. } => pod_name(from),
        Flows::Node { .. } => "",
    };
    if !first.src_name.ends_with(&format!("/{client}")) || first.dst_name.is_empty() {
        return report.bad(
            format!(
                "{}\n        {what}: named {names:?}, expected {client} -> a pod or Service",
                first.shown()
            ),
            format!("{verdict} {what} (names)"),
        );
    }
    let next = first
        .next
        .as_deref()
        .map(|n| format!("; next: {n}"))
        .unwrap_or_default();
    let more = if found.len() > 1 {
        format!(", {} flows", found.len())
    } else {
        String::new()
    };
    report.ok(format!(
        "{}\n        {what} ({names}){more}{next}",
        first.shown()
    ));
}

/// The node-level verdict: its cause, reason, next and breadth.
fn check_node(expect: &Expect, listed: &Value, report: &mut Report) {
    let Flows::Node {
        failing_pairs,
        pairs,
        sources,
    } = expect.flows
    else {
        return;
    };
    let cause = expect.cause.unwrap_or("-");
    let nodes = listed["node"].as_array().cloned().unwrap_or_default();
    let Some(n) = nodes.iter().find(|n| n["cause"] == cause) else {
        return report.bad(
            format!("no node-level verdict {cause}: \"node\" is {nodes:?}"),
            format!("node-level {cause} verdict"),
        );
    };
    let text = |key: &str| n[key].as_str().unwrap_or_default();
    let breadth = (
        n["failing_pairs"].as_u64(),
        n["pairs"].as_u64(),
        n["sources"].as_u64(),
    );
    let line = format!(
        "{} {cause}: {}\n        node {}: {} failing pairs of {}, from {} pods, {} flows; next: {}",
        text("verdict"),
        text("reason"),
        super::NODE,
        n["failing_pairs"],
        n["pairs"],
        n["sources"],
        n["flows"],
        n["next"].as_str().unwrap_or("-"),
    );
    let next_ok = match expect.next {
        Next::Unchecked => true,
        Next::Nothing => n["next"].is_null(),
        Next::Is(next) => n["next"] == next,
    };
    if text("verdict") != expect.verdict
        || !expect.reason.iter().all(|r| text("reason").contains(r))
        || !next_ok
        || breadth != (Some(failing_pairs), Some(pairs), Some(sources))
        || nodes.len() != expect.count.unwrap_or(nodes.len())
    {
        return report.bad(
            format!(
                "{line}\n        expected {} with {:?}, next {:?}, {failing_pairs} failing pairs of {pairs} from {sources} pods",
                expect.verdict, expect.reason, expect.next
            ),
            format!("node-level {cause} verdict"),
        );
    }
    report.ok(line);
}
