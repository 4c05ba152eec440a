//! `observe` against fixture agents: formats, folding, arguments, one agent; the
//! cluster-wide tests (the API stand-in before the agents) are in tests/cluster.rs.

mod cluster;

use std::{
    io::{self, Write},
    iter,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use clap::Parser;

use super::*;
use crate::{
    model::{Counts, DnsSummary, FlowEventKind},
    serve::{self, fixtures},
};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    observe: ObserveArgs,
}

fn parse_args(argv: &[&str]) -> ObserveArgs {
    Cli::try_parse_from(iter::once("observe").chain(argv.iter().copied()))
        .unwrap()
        .observe
}

/// The fixture verdicts sorted as the server returns them, plus one with an ICMP
/// count and a DNS query without answer.
fn verdicts() -> Vec<Verdict> {
    let mut verdicts = fixtures::fixture_verdicts();
    verdicts.sort_by_key(|v| v.last_seen);
    let mut unreachable = verdicts[1].clone();
    unreachable.verdict = VerdictKind::Unreachable;
    unreachable.counts = Counts {
        syn: 1,
        icmp_unreachable: 1,
        ..Counts::default()
    };
    unreachable.reason = "ICMP port unreachable".into();
    let mut lost = verdicts[2].clone();
    lost.verdict = VerdictKind::DnsTimeout;
    lost.counts.dns_responses = 0;
    lost.dst = None;
    lost.reason = "no answer".into();
    if let Some(dns) = &mut lost.dns {
        dns.rcode = None;
    }
    verdicts.extend([unreachable, lost]);
    verdicts
}

fn rows(verdicts: &[Verdict], node: Option<&str>) -> Vec<Row> {
    verdicts
        .iter()
        .map(|v| Row::new(node.map(Into::into), serde_json::to_value(v).unwrap()).unwrap())
        .collect()
}

#[test]
fn wide_aligns_every_column_to_its_content() {
    assert_eq!(
        format_wide(&rows(&verdicts(), None)),
        "\
FIRST SEEN                VERDICT      PROTO  SOURCE                                  DESTINATION                              COUNTS                       REASON
2026-11-23T10:00:00.123Z  TIMEOUT      TCP    production/checkout-api-5d4e3c2f-abc12  production/payment-service:8080          syn=3 synack=0 rst=0         3 SYNs in 3.0s and no answer
2026-11-23T10:00:00.123Z  REFUSED      TCP    staging/web-0                           10.244.2.7:80                            syn=1 synack=0 rst=1         SYN answered by RST
2026-11-23T10:00:00.123Z  NXDOMAIN     UDP    production/checkout-api-5d4e3c2f-abc12  kube-system/coredns-5d78c9869d-abcde:53  q=1 r=1                      flagsmith-postgresql.flagsmith.svc.cluster.local. A NXDOMAIN: name does not exist
2026-11-23T10:00:00.123Z  OK           TCP    [fd00::5]:40000                         [fd00::9]:443                            syn=1 synack=1 rst=0         handshake completed
2026-11-23T10:00:00.123Z  UNREACHABLE  TCP    staging/web-0                           10.244.2.7:80                            syn=1 synack=0 rst=0 icmp=1  ICMP port unreachable
2026-11-23T10:00:00.123Z  DNS_TIMEOUT  UDP    production/checkout-api-5d4e3c2f-abc12  10.96.0.10:53                            q=1 r=0                      flagsmith-postgresql.flagsmith.svc.cluster.local. A: no answer
"
    );
}

#[test]
fn empty_listings_are_just_the_header() {
    assert_eq!(
        format_wide(&[]),
        "FIRST SEEN  VERDICT  PROTO  SOURCE  DESTINATION  COUNTS  REASON\n"
    );
    assert_eq!(
        format_table(&[], 100),
        "LAST SEEN  VERDICT  SOURCE  DESTINATION\n"
    );
    assert_eq!(format_compact(&[]), "");
}

#[test]
fn the_table_puts_the_reason_on_its_own_line() {
    let mut timeout = verdicts()[0].clone();
    timeout.cause = Some(Cause::NetworkPolicy);
    timeout.next = Some("kubectl describe networkpolicy db-allow-api -n production".into());
    assert_eq!(
        format_table(&rows(&[timeout, verdicts()[3].clone()], Some("kind-worker")), 120),
        "\
LAST SEEN  NODE         VERDICT  SOURCE                                  DESTINATION
10:00:03   kind-worker  TIMEOUT  production/checkout-api-5d4e3c2f-abc12  production/payment-service:8080
    TCP [network_policy] 3 SYNs in 3.0s and no answer; next: kubectl describe networkpolicy db-allow-api -n production
10:00:09   kind-worker  OK       [fd00::5]:40000                         [fd00::9]:443
    TCP handshake completed
"
    );
}

#[test]
fn the_table_fits_the_terminal_at_80_and_120_columns() {
    let mut long = verdicts();
    for v in &mut long {
        v.reason = format!("{} {}", v.reason, "and a long explanation ".repeat(8)).into();
    }
    let rows = rows(&long, Some("ip-10-0-12-34.eu-west-1.compute.internal"));
    for width in [80, 120] {
        let table = format_table(&rows, width);
        for line in table.lines() {
            assert!(line.chars().count() <= width, "{width}: {line:?}");
        }
        // Each verdict is a row and indented reason lines.
        assert_eq!(
            table.lines().filter(|l| !l.starts_with(' ')).count(),
            rows.len() + 1
        );
    }
    let narrow = format_table(&rows, 80);
    assert!(narrow.contains(" ip-10-0-12-34.e…  TIMEOUT "), "{narrow}");
    assert!(
        narrow.contains(" production/checko…  production/paymen…\n"),
        "{narrow}"
    );
}

#[test]
fn compact_is_one_short_line_per_verdict() {
    assert_eq!(
        format_compact(&rows(&verdicts()[..3], Some("node-a"))),
        "\
10:00:03 node-a TIMEOUT production/checkout-api-5d4e3c2f-abc12 -> production/payment-service:8080 TCP
10:00:05 node-a REFUSED staging/web-0 -> 10.244.2.7:80 TCP
10:00:07 node-a NXDOMAIN production/checkout-api-5d4e3c2f-abc12 -> kube-system/coredns-5d78c9869d-abcde:53 UDP flagsmith-postgresql.flagsmith.svc.cluster.local. A
"
    );
}

/// A pod's lookup of `api.example.com` as its resolver sends it with `ndots:5`: three
/// expansions answered NXDOMAIN, then the name itself; and another pod's lookup.
fn lookup() -> Vec<Verdict> {
    let nxdomain = verdicts()[2].clone();
    let at = |second: u32| fixtures::at(&format!("2026-11-23T10:00:{second:02}Z"));
    let query = |name: &str, second: u32, port: u16, cause: Option<Cause>| Verdict {
        dns: Some(DnsSummary {
            id: port,
            qname: name.into(),
            qtype: "A".into(),
            rcode: Some(
                if cause.is_some() {
                    "NXDOMAIN"
                } else {
                    "NOERROR"
                }
                .into(),
            ),
        }),
        verdict: VerdictKind::Ok,
        cause,
        first_seen: at(second),
        last_seen: at(second),
        flow: crate::model::Flow {
            src_port: port,
            ..nxdomain.flow
        },
        ..nxdomain.clone()
    };
    let expansion = Some(Cause::SearchPathExpansion);
    let mut other = query("api.example.com.svc.cluster.local.", 21, 40004, expansion);
    other.flow.src_ip = "10.244.1.99".parse().unwrap();
    vec![
        query(
            "api.example.com.production.svc.cluster.local.",
            20,
            40001,
            expansion,
        ),
        query("api.example.com.svc.cluster.local.", 20, 40002, expansion),
        query("api.example.com.cluster.local.", 20, 40003, expansion),
        other,
        query("api.example.com.", 21, 40005, None),
    ]
}

#[test]
fn search_path_expansions_are_folded_into_their_lookup() {
    let folded = fold_expansions(rows(&lookup(), Some("node-a")));
    let names: Vec<(&str, usize)> = folded
        .iter()
        .map(|row| {
            (
                row.verdict.dns.as_ref().unwrap().qname.as_str(),
                row.expansions,
            )
        })
        .collect();
    // The other pod's expansion has no lookup listed: it stays.
    assert_eq!(
        names,
        [
            ("api.example.com.svc.cluster.local.", 0),
            ("api.example.com.", 3)
        ]
    );
    assert!(
        format_compact(&folded).ends_with("api.example.com. A (after 3 search-path expansions)\n")
    );
    // Another node's rows are another agent's: never folded together.
    let mut apart = rows(&lookup()[..3], Some("node-a"));
    apart.extend(rows(&lookup()[4..], Some("node-b")));
    assert_eq!(fold_expansions(apart).len(), 4);
}

#[test]
fn listings_fold_expansions_unless_asked_and_json_never() {
    let print = |argv: &[&str]| {
        let mut out = Vec::new();
        parse_args(argv)
            .print_listing(&mut out, rows(&lookup(), None), &[])
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(print(&["-o", "compact"]).lines().count(), 2);
    assert_eq!(print(&["-o", "compact", "--expansions"]).lines().count(), 5);
    assert_eq!(print(&["-o", "json"]).lines().count(), 5);
    assert_eq!(print(&["-o", "wide"]).lines().count(), 3);
}

#[test]
fn follow_lines_show_time_event_verdict_flow_and_reason() {
    let events = fixtures::fixture_events();
    let lines: Vec<String> = events.iter().map(format_event).collect();
    assert_eq!(
        lines,
        [
            "2026-11-23T10:00:07.000Z  DNS_RESPONSE      NXDOMAIN     production/checkout-api-5d4e3c2f-abc12 -> kube-system/coredns-5d78c9869d-abcde:53 UDP  flagsmith-postgresql.flagsmith.svc.cluster.local. A NXDOMAIN: name does not exist",
            "2026-11-23T10:00:03.130Z  TIMEOUT           TIMEOUT      production/checkout-api-5d4e3c2f-abc12 -> production/payment-service:8080 TCP  3 SYNs in 3.0s and no answer",
            "2026-11-23T10:00:09.000Z  SYN_ACK           OK           [fd00::5]:40000 -> [fd00::9]:443 TCP  handshake completed",
            "2026-11-23T10:00:05.000Z  RST               REFUSED      staging/web-0 -> 10.244.2.7:80 TCP  SYN answered by RST",
        ]
    );
}

#[test]
fn follow_output_names_the_node_and_hides_expansions() {
    let event = &fixtures::fixture_events()[3];
    let line = serde_json::to_string(event).unwrap();
    let print = |argv: &[&str], event: &str| {
        let mut out = Vec::new();
        parse_args(argv)
            .print_event(&mut out, Some("node-b"), event)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        print(&["-f", "-o", "compact"], &line),
        "node-b  2026-11-23T10:00:05.000Z  RST               REFUSED      staging/web-0 -> 10.244.2.7:80 TCP\n"
    );
    assert_eq!(
        print(&["-f"], &line),
        "node-b  2026-11-23T10:00:05.000Z  RST               REFUSED      staging/web-0 -> 10.244.2.7:80 TCP\n    SYN answered by RST\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&print(&["-f", "-o", "json"], &line)).unwrap();
    assert_eq!(json["node"], "node-b");
    assert_eq!(json["verdict"], "REFUSED");
    let mut expansion = event.clone();
    expansion.event = FlowEventKind::SearchExpansion;
    let expansion = serde_json::to_string(&expansion).unwrap();
    assert_eq!(print(&["-f"], &expansion), "");
    assert_ne!(print(&["-f", "--expansions"], &expansion), "");
}

#[test]
fn arguments_become_the_api_query() {
    let args = parse_args(&[
        "--verdict",
        "timeout,REFUSED",
        "--protocol",
        "TCP",
        "--ip",
        "fd00::1",
        "--port",
        "53",
        "--namespace",
        "prod",
        "--pod",
        "web-*",
        "--since",
        "5m",
        "--limit",
        "20",
    ]);
    assert_eq!(
        args.query(),
        [
            ("verdict", "TIMEOUT,REFUSED".to_string()),
            ("protocol", "TCP".into()),
            ("ip", "fd00::1".into()),
            ("port", "53".into()),
            ("namespace", "prod".into()),
            ("pod", "web-*".into()),
            ("since", "5m".into()),
            ("limit", "20".into()),
        ]
    );
    let follow = parse_args(&["-f", "-o", "json"]);
    assert_eq!(follow.query(), [("follow", "true".to_string())]);
    assert_eq!(follow.output, Output::Json);
    assert_eq!(follow.server, "http://127.0.0.1:9810");
}

#[test]
fn from_and_to_filters_are_the_servers_end_parameters() {
    let args = parse_args(&[
        "--from-namespace",
        "production",
        "--from-pod",
        "checkout-*",
        "--from-workload",
        "checkout",
        "--to-namespace",
        "payments",
        "--to-pod",
        "payment-?",
        "--to-service",
        "payment-service",
        "--to-port",
        "8080",
    ]);
    assert_eq!(
        args.query(),
        [
            ("port", "8080".to_string()),
            ("src_namespace", "production".into()),
            ("src_pod", "checkout-*".into()),
            ("src_workload", "checkout".into()),
            ("dst_namespace", "payments".into()),
            ("dst_pod", "payment-?".into()),
            ("dst_service", "payment-service".into()),
        ]
    );
    // Every parameter sent is one the server knows.
    let known: Vec<_> = serve::parameter_names().collect();
    for (key, _) in args.query() {
        assert!(known.contains(&key), "{key}");
    }
}

#[test]
fn bad_arguments_are_rejected_before_any_request() {
    let parse =
        |argv: &[&str]| Cli::try_parse_from(iter::once("observe").chain(argv.iter().copied()));
    assert!(parse(&["--verdict", "TIMEOUTS"]).is_err());
    assert!(parse(&["--limit", "0"]).is_err());
    assert!(parse(&["--limit", "10001"]).is_err());
    assert!(parse(&["--follow", "--limit", "5"]).is_err());
    assert!(parse(&["--protocol", "icmp"]).is_err());
    assert!(parse(&["-o", "yaml"]).is_err());
    assert!(parse(&["--to-port", "65536"]).is_err());
    assert!(parse(&["--timeout", "soon"]).is_err());
}

/// A real agent API on a loopback port, served from its own thread until dropped.
struct Server {
    url: String,
    addr: std::net::SocketAddr,
    source: Arc<fixtures::TestSource>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        Self::start_with(None)
    }

    /// With a kubeconfig: every request's bearer token is reviewed by that API server,
    /// as with `--api-auth kube`.
    fn start_with(kubeconfig: Option<std::path::PathBuf>) -> Self {
        let source = fixtures::source();
        let state = fixtures::state(&source);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let state = match kubeconfig {
                    Some(kubeconfig) => {
                        use crate::{config::KubeMode, enrich, serve::auth};
                        let options = enrich::KubeOptions {
                            mode: KubeMode::Auto,
                            kubeconfig: Some(kubeconfig),
                        };
                        let client = enrich::client(&options).await.unwrap().unwrap();
                        let ttl = Duration::from_secs(10);
                        let kube = auth::KubeAuth::new(client, ttl, ttl);
                        state.with_auth(auth::Auth::Kube(Arc::new(kube)))
                    }
                    None => state,
                };
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                serve::serve(listener, state, async {
                    stopped.await.ok();
                })
                .await
                .unwrap();
            });
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            source,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn observe(server: &Server, argv: &[&str]) -> anyhow::Result<String> {
    let mut args = parse_args(argv);
    args.server = format!("{}/", server.url);
    let mut out = Vec::new();
    run_to(&args, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn lists_verdicts_from_a_running_agent() {
    let server = Server::start();
    let argv = ["--verdict", "TIMEOUT,NXDOMAIN", "--namespace", "production"];
    let mut expected = verdicts();
    expected.retain(|v| matches!(v.verdict, VerdictKind::Timeout | VerdictKind::Nxdomain));
    let wide = observe(&server, &[&argv[..], &["-o", "wide"]].concat()).unwrap();
    assert_eq!(wide, format_wide(&rows(&expected, None)));
    let table = observe(&server, &argv).unwrap();
    assert_eq!(
        table,
        format_table(&rows(&expected, None), terminal_width())
    );
}

#[test]
fn json_output_is_one_server_object_per_line() {
    let server = Server::start();
    let out = observe(&server, &["-o", "json", "--limit", "2"]).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let expected: Vec<serde_json::Value> = verdicts()[2..4]
        .iter()
        .map(|v| serde_json::to_value(v).unwrap())
        .collect();
    assert_eq!(lines, expected);
    assert!(out.ends_with("}\n"));
}

#[test]
fn a_server_error_is_reported_with_its_message() {
    let server = Server::start();
    let err = observe(&server, &["--since", "yesterday"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}/v1/verdicts answered 400 Bad Request: invalid since \"yesterday\": expected a duration such as 30s or 5m, or an RFC 3339 time",
            server.url
        )
    );
}

#[test]
fn a_connection_failure_names_the_url() {
    let port = free_port();
    let mut args = parse_args(&[]);
    args.server = format!("http://127.0.0.1:{port}");
    let err = run_to(&args, Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach netprobe at http://127.0.0.1:{port}/v1/verdicts")
    );
}

/// A loopback port bound and dropped: nothing listens on it now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A writer the test can read while another thread writes to it.
#[derive(Clone, Default)]
struct SharedOut(Arc<Mutex<Vec<u8>>>);

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SharedOut {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn follow_prints_events_as_they_arrive_until_the_server_stops() {
    let mut server = Server::start();
    let mut args = parse_args(&["--follow", "--verdict", "REFUSED", "-o", "wide"]);
    args.server = server.url.clone();
    let out = SharedOut::default();
    let client = thread::spawn({
        let out = out.clone();
        move || run_to(&args, out)
    });
    wait_until("the follower", || server.source.live.receiver_count() == 1);
    let events = fixtures::fixture_events();
    let refused = events
        .iter()
        .find(|e| e.verdict == VerdictKind::Refused)
        .unwrap();
    assert_eq!(refused.event, FlowEventKind::Rst);
    server.source.live.send(events[0].clone()).unwrap();
    server.source.live.send(refused.clone()).unwrap();
    let expected = format_event(refused) + "\n";
    wait_until("the event line", || out.text() == expected);

    server.stop();
    client.join().unwrap().unwrap();
    assert_eq!(out.text(), expected);
}
