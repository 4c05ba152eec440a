//! How `observe` prints verdicts and events: `table` (fits a terminal, the reason on its
//! own line), `compact` (one short line each), `wide` (every column on one row).

use std::{iter, net::SocketAddr};

use chrono::{DateTime, SecondsFormat, Utc};

use super::Row;
use crate::model::{Cause, DnsSummary, Endpoint, FlowEvent, NodeVerdict, Protocol, Verdict};

/// Terminal width assumed when `COLUMNS` says nothing.
pub const DEFAULT_WIDTH: usize = 100;
/// Narrower than this, columns would be cut too short to read: the table overflows.
const MIN_WIDTH: usize = 80;
/// Source and destination are cut to no shorter than this.
const MIN_NAME: usize = 16;
/// Node names are cut to this (the start tells cloud nodes apart: `ip-10-0-12-34.…`).
const MAX_NODE: usize = 16;

/// The width to fit: `COLUMNS` (set by shells for their children) or [`DEFAULT_WIDTH`].
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|columns| columns.trim().parse().ok())
        .unwrap_or(DEFAULT_WIDTH)
        .max(MIN_WIDTH)
}

/// Rows under `LAST SEEN  [NODE]  VERDICT  SOURCE  DESTINATION`, each followed by an
/// indented line with protocol, cause, reason and the next command, wrapped to `width`.
/// Names too long for their column are cut with `…` (`-o wide` shows them whole).
pub fn format_table(rows: &[Row], width: usize) -> String {
    let width = width.max(MIN_WIDTH);
    let with_node = rows.iter().any(|row| row.node.is_some());
    let mut header = vec!["LAST SEEN", "VERDICT", "SOURCE", "DESTINATION"];
    if with_node {
        header.insert(1, "NODE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let v = &row.verdict;
            let mut cells = vec![
                short_time(v.last_seen),
                v.verdict.to_string(),
                source(
                    v.src.as_deref(),
                    SocketAddr::new(v.flow.src_ip, v.flow.src_port),
                ),
                destination(
                    v.dst.as_deref(),
                    SocketAddr::new(v.flow.dst_ip, v.flow.dst_port),
                ),
            ];
            if with_node {
                cells.insert(1, row.node.clone().unwrap_or_default());
            }
            cells
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    if with_node {
        widths[1] = widths[1].min(MAX_NODE);
    }
    // Source and destination share what the other columns leave; the shorter keeps its
    // width if it fits in half.
    let names = widths.len() - 2;
    let fixed: usize = widths[..names].iter().sum::<usize>() + 2 * (widths.len() - 1);
    let room = width.saturating_sub(fixed);
    let (source, destination) = (widths[names], widths[names + 1]);
    if source + destination > room {
        let half = room / 2;
        let (source, destination) = if source <= half {
            (source, room - source)
        } else if destination <= half {
            (room - destination, destination)
        } else {
            (half, room - half)
        };
        widths[names] = source.max(MIN_NAME);
        widths[names + 1] = destination.max(MIN_NAME);
    }
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{:width$}", cut(cell, width)))
            .collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut table = line(&header.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    for (row, cells) in rows.iter().zip(&cells) {
        table += &line(cells);
        for detail in wrap(&detail(row), width.saturating_sub(4)) {
            table += &format!("    {detail}\n");
        }
    }
    table
}

/// `TCP [cause] reason (after N search-path expansions); next: command`.
fn detail(row: &Row) -> String {
    let v = &row.verdict;
    let mut reason = reason(&v.reason, v.dns.as_ref());
    reason += &folded(row.expansions);
    format!(
        "{} {}",
        v.flow.protocol.as_str(),
        explained(&reason, v.cause, v.next.as_deref())
    )
}

fn folded(expansions: usize) -> String {
    match expansions {
        0 => String::new(),
        1 => " (after 1 search-path expansion)".into(),
        n => format!(" (after {n} search-path expansions)"),
    }
}

/// One line per verdict: time, node, verdict, flow and cause, without the reason.
pub fn format_compact(rows: &[Row]) -> String {
    rows.iter()
        .map(|row| {
            let v = &row.verdict;
            let mut line = short_time(v.last_seen);
            if let Some(node) = &row.node {
                line += &format!(" {node}");
            }
            line += &format!(
                " {} {} -> {} {}",
                v.verdict,
                source(
                    v.src.as_deref(),
                    SocketAddr::new(v.flow.src_ip, v.flow.src_port)
                ),
                destination(
                    v.dst.as_deref(),
                    SocketAddr::new(v.flow.dst_ip, v.flow.dst_port)
                ),
                v.flow.protocol.as_str(),
            );
            if let Some(cause) = v.cause {
                line += &format!(" [{cause}]");
            }
            if let Some(dns) = &v.dns {
                line += &format!(" {} {}", dns.qname, dns.qtype);
            }
            line + &folded(row.expansions) + "\n"
        })
        .collect()
}

const WIDE_HEADER: [&str; 8] = [
    "FIRST SEEN",
    "NODE",
    "VERDICT",
    "PROTO",
    "SOURCE",
    "DESTINATION",
    "COUNTS",
    "REASON",
];

/// Every column on one row, aligned to the content, the last column not padded; NODE
/// only when the rows come from several agents.
pub fn format_wide(rows: &[Row]) -> String {
    let with_node = rows.iter().any(|row| row.node.is_some());
    let keep = |i: usize| with_node || i != 1;
    let header: Vec<String> = WIDE_HEADER
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, title)| title.to_string())
        .collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            wide_row(row)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, cell)| cell)
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}

fn wide_row(row: &Row) -> [String; 8] {
    let v = &row.verdict;
    let flow = &v.flow;
    [
        timestamp(v.first_seen),
        row.node.clone().unwrap_or_default(),
        v.verdict.to_string(),
        flow.protocol.as_str().to_string(),
        source(
            v.src.as_deref(),
            SocketAddr::new(flow.src_ip, flow.src_port),
        ),
        destination(
            v.dst.as_deref(),
            SocketAddr::new(flow.dst_ip, flow.dst_port),
        ),
        counts(v),
        explained(
            &(reason(&v.reason, v.dns.as_ref()) + &folded(row.expansions)),
            v.cause,
            v.next.as_deref(),
        ),
    ]
}

/// A node-level verdict, printed above the verdicts (with the node's name, cluster-wide).
pub fn format_node(node: Option<&str>, n: &NodeVerdict) -> String {
    let period = match n.until {
        Some(until) => format!("{} to {}", timestamp(n.since), timestamp(until)),
        None => format!("since {}", timestamp(n.since)),
    };
    let next = n
        .next
        .as_deref()
        .map(|c| format!("; next: {c}"))
        .unwrap_or_default();
    let name = node.map(|node| format!(" {node}")).unwrap_or_default();
    format!(
        "NODE{name} {} [{}] {period}, {} flows: {}{next}",
        n.verdict, n.cause, n.flows, n.reason
    )
}

/// `[cause] reason; next: command`, where known.
fn explained(reason: &str, cause: Option<Cause>, next: Option<&str>) -> String {
    let mut text = match cause {
        Some(cause) => format!("[{cause}] {reason}"),
        None => reason.to_string(),
    };
    if let Some(next) = next {
        text.push_str(&format!("; next: {next}"));
    }
    text
}

/// One `--follow` line: time, event, verdict, flow and, unless `brief`, the reason.
pub fn format_event(e: &FlowEvent) -> String {
    event_line(e, false)
}

/// [`format_event`] after the node's name (cluster-wide) and with or without the reason.
pub fn event_line(e: &FlowEvent, brief: bool) -> String {
    let flow = &e.flow;
    let mut line = format!(
        "{}  {:<16}  {:<11}  {} -> {} {}",
        timestamp(e.time),
        e.event.as_str(),
        e.verdict.as_str(),
        source(
            e.src.as_deref(),
            SocketAddr::new(flow.src_ip, flow.src_port)
        ),
        destination(
            e.dst.as_deref(),
            SocketAddr::new(flow.dst_ip, flow.dst_port)
        ),
        flow.protocol.as_str(),
    );
    if !brief {
        let reason = reason(&e.reason, e.dns.as_ref());
        line += &format!("  {}", explained(&reason, e.cause, e.next.as_deref()));
    }
    line.trim_end().to_string()
}

/// A `--follow` event as `-o table` prints it: the event line without the reason, then
/// the reason indented and wrapped to `width`.
pub fn event_table(e: &FlowEvent, width: usize) -> String {
    let mut text = event_line(e, true) + "\n";
    let reason = reason(&e.reason, e.dns.as_ref());
    let explained = explained(&reason, e.cause, e.next.as_deref());
    for line in wrap(&explained, width.max(MIN_WIDTH) - 4) {
        text += &format!("    {line}\n");
    }
    text
}

fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `10:00:03` (UTC): a narrow column; `-o wide` has the date and milliseconds.
fn short_time(time: DateTime<Utc>) -> String {
    time.format("%H:%M:%S").to_string()
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    kept + "…"
}

/// `text` in lines of at most `width` characters, broken at spaces where there are any.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|word| !word.is_empty()) {
        let fits = line.chars().count() + 1 + word.chars().count() <= width;
        if !line.is_empty() && !fits {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        // A word longer than a line (a URL, a long name) is split where the line ends.
        while line.chars().count() > width {
            let head: String = line.chars().take(width).collect();
            line = line.chars().skip(width).collect();
            lines.push(head);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `namespace/pod` when known (the client port is ephemeral noise), else `ip:port`.
fn source(end: Option<&Endpoint>, addr: SocketAddr) -> String {
    match end.map(|end| (&end.namespace, &end.pod)) {
        Some((Some(namespace), Some(pod))) => format!("{namespace}/{pod}"),
        _ => addr.to_string(),
    }
}

/// `namespace/pod:port` for a pod address (what was really dialled), else
/// `namespace/service:port` for a ClusterIP, else `ip:port`.
fn destination(end: Option<&Endpoint>, addr: SocketAddr) -> String {
    let port = addr.port();
    match end.map(|end| (&end.namespace, end.pod.as_ref().or(end.service.as_ref()))) {
        Some((Some(namespace), Some(name))) => format!("{namespace}/{name}:{port}"),
        _ => addr.to_string(),
    }
}

fn counts(v: &Verdict) -> String {
    let c = &v.counts;
    let mut counts = match v.flow.protocol {
        Protocol::Tcp => format!("syn={} synack={} rst={}", c.syn, c.syn_ack, c.rst),
        Protocol::Udp => format!("q={} r={}", c.dns_queries, c.dns_responses),
    };
    if c.icmp_unreachable > 0 {
        counts += &format!(" icmp={}", c.icmp_unreachable);
    }
    counts
}

/// The reason, after the DNS question and rcode for DNS flows.
fn reason(reason: &str, dns: Option<&DnsSummary>) -> String {
    match dns {
        Some(dns) => {
            let rcode = dns.rcode.as_deref().map(|rcode| format!(" {rcode}"));
            let rcode = rcode.unwrap_or_default();
            format!("{} {}{rcode}: {reason}", dns.qname, dns.qtype)
        }
        None => reason.to_string(),
    }
}
