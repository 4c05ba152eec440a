//! `probe-agent observe`: the agent as its own client (docs/cli.md, "probe-agent observe").
//! Prints verdicts from a running agent's HTTP API the way `hubble observe` does.

use std::{
    io::{self, BufRead, BufReader, Write},
    iter,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::model::{
    Cause, DnsSummary, Endpoint, FlowEvent, NodeVerdict, Protocol, Verdict, VerdictKind,
};

#[derive(Args, Clone, Debug)]
pub struct ObserveArgs {
    /// Base URL of the agent's HTTP API.
    #[arg(long, env = "NETPROBE_SERVER", default_value = "http://127.0.0.1:9810")]
    pub server: String,
    /// Only these verdicts (comma-separated, e.g. TIMEOUT,REFUSED).
    #[arg(long, env = "NETPROBE_VERDICT", value_delimiter = ',')]
    pub verdict: Vec<VerdictKind>,
    /// Stream flow events as they happen instead of listing current verdicts.
    #[arg(short, long, env = "NETPROBE_FOLLOW")]
    pub follow: bool,
    /// `table` for people; `json` prints one server JSON object per line (JSON Lines),
    /// the same with and without --follow.
    #[arg(short, long, env = "NETPROBE_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// At most this many verdicts, the most recently seen (server default 100).
    #[arg(long, env = "NETPROBE_LIMIT", value_parser = clap::value_parser!(u16).range(1..=10000), conflicts_with = "follow")]
    pub limit: Option<u16>,
    /// Only this protocol.
    #[arg(long, env = "NETPROBE_PROTOCOL", value_parser = ["tcp", "udp"], ignore_case = true)]
    pub protocol: Option<String>,
    /// Only flows with this address on either side.
    #[arg(long, env = "NETPROBE_IP")]
    pub ip: Option<IpAddr>,
    /// Only flows to this destination port.
    #[arg(long, env = "NETPROBE_PORT")]
    pub port: Option<u16>,
    /// Only flows with an end in this namespace.
    #[arg(long, env = "NETPROBE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only flows with an end whose pod name matches this glob.
    #[arg(long, env = "NETPROBE_POD")]
    pub pod: Option<String>,
    /// Only flows seen in this past duration (30s, 5m) or since an RFC 3339 time.
    #[arg(long, env = "NETPROBE_SINCE")]
    pub since: Option<String>,
    /// Only flows failing for these causes (comma-separated, e.g. no_ready_endpoints).
    #[arg(long, env = "NETPROBE_CAUSE", value_delimiter = ',')]
    pub cause: Vec<Cause>,
    /// Also list the flows a node-level verdict stands for.
    #[arg(long, env = "NETPROBE_EXPAND", conflicts_with = "follow")]
    pub expand: bool,
    /// Bearer token to send (an agent run with `--api-auth kube` asks the Kubernetes API
    /// who it is). Default: the pod's service-account token, else the current user's token
    /// of the kubeconfig.
    #[arg(
        long,
        env = "NETPROBE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, env = "NETPROBE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The kubeconfig whose current user's token is sent (default: $KUBECONFIG, then
    /// ~/.kube/config). Exec and auth-provider plugins are not run: pass `--token` then.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// Where a pod's service-account token is mounted.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

impl ObserveArgs {
    /// The bearer token to send, if any: `--token`, `--token-file`, `--kubeconfig`'s,
    /// the pod's service account's, or the default kubeconfig's current user's.
    pub fn bearer_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_string()));
        }
        let read = |path: &Path| -> anyhow::Result<String> {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            Ok(token.trim().to_string())
        };
        if let Some(path) = &self.token_file {
            return read(path).map(Some);
        }
        if let Some(path) = &self.kubeconfig {
            let config = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            return kubeconfig_token(&config);
        }
        let service_account = Path::new(SERVICE_ACCOUNT_TOKEN);
        if service_account.exists() {
            return read(service_account).map(Some);
        }
        match kube::config::Kubeconfig::read() {
            Ok(config) => kubeconfig_token(&config),
            // No kubeconfig: nothing to send, an agent without authentication still answers.
            Err(_) => Ok(None),
        }
    }

    /// The API query for these arguments; the server validates what we pass through.
    fn query(&self) -> Vec<(&'static str, String)> {
        let verdicts = (!self.verdict.is_empty()).then(|| {
            let names: Vec<_> = self.verdict.iter().map(|v| v.as_str()).collect();
            names.join(",")
        });
        let causes = (!self.cause.is_empty()).then(|| {
            let names: Vec<_> = self.cause.iter().map(|c| c.as_str()).collect();
            names.join(",")
        });
        let params = [
            ("verdict", verdicts),
            ("cause", causes),
            ("expand", self.expand.then(|| "true".to_string())),
            ("protocol", self.protocol.clone()),
            ("ip", self.ip.map(|ip| ip.to_string())),
            ("port", self.port.map(|port| port.to_string())),
            ("namespace", self.namespace.clone()),
            ("pod", self.pod.clone()),
            ("since", self.since.clone()),
            ("limit", self.limit.map(|limit| limit.to_string())),
            ("follow", self.follow.then(|| "true".to_string())),
        ];
        params
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect()
    }
}

/// Runs `observe`, writing to stdout; a closed pipe (`| head`) ends it quietly.
pub fn run(args: ObserveArgs) -> anyhow::Result<()> {
    match run_to(&args, io::stdout().lock()) {
        Err(err)
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        result => result,
    }
}

fn run_to(args: &ObserveArgs, mut out: impl Write) -> anyhow::Result<()> {
    let path = if args.follow {
        "/v1/flows"
    } else {
        "/v1/verdicts"
    };
    let url = format!("{}{path}", args.server.trim_end_matches('/'));
    let token = args.bearer_token()?;
    let reader = get(&url, &args.query(), token.as_deref(), !args.follow)?;
    if args.follow {
        for line in BufReader::new(reader).lines() {
            let line = line.with_context(|| format!("reading {url}"))?;
            match args.output {
                Output::Json => writeln!(out, "{line}")?,
                Output::Table => {
                    let event: FlowEvent = serde_json::from_str(&line)
                        .with_context(|| format!("unexpected event from {url}: {line}"))?;
                    writeln!(out, "{}", format_event(&event))?;
                }
            }
            out.flush()?;
        }
        return Ok(());
    }
    #[derive(Deserialize)]
    struct Listing<T> {
        verdicts: Vec<T>,
        #[serde(default)]
        node: Vec<NodeVerdict>,
    }
    let unexpected = || format!("unexpected answer from {url}");
    match args.output {
        Output::Json => {
            // Re-printed from the server's JSON, fields this client does not know included
            // (serde_json sorts the keys).
            let listing: Listing<serde_json::Value> =
                serde_json::from_reader(reader).with_context(unexpected)?;
            for verdict in listing.verdicts {
                writeln!(out, "{verdict}")?;
            }
        }
        Output::Table => {
            let listing: Listing<Verdict> =
                serde_json::from_reader(reader).with_context(unexpected)?;
            for node in &listing.node {
                writeln!(out, "{}", format_node(node))?;
            }
            out.write_all(format_table(&listing.verdicts).as_bytes())?;
        }
    }
    Ok(out.flush()?)
}

/// The token of the kubeconfig's current user (inline or from its token file).
fn kubeconfig_token(config: &kube::config::Kubeconfig) -> anyhow::Result<Option<String>> {
    let Some(user) = config
        .current_context
        .as_ref()
        .and_then(|current| config.contexts.iter().find(|c| &c.name == current))
        .and_then(|context| context.context.as_ref()?.user.clone())
    else {
        return Ok(None);
    };
    let Some(auth) = config
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
    else {
        return Ok(None);
    };
    if let Some(token) = &auth.token {
        use secrecy::ExposeSecret as _;
        return Ok(Some(token.expose_secret().trim().to_string()));
    }
    if let Some(path) = &auth.token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {path} of user {user}"))?;
        return Ok(Some(token.trim().to_string()));
    }
    Ok(None)
}

/// GETs `url`: the body on success, the server's `{"error"}` message otherwise.
fn get(
    url: &str,
    query: &[(&str, String)],
    token: Option<&str>,
    bounded: bool,
) -> anyhow::Result<ureq::BodyReader<'static>> {
    // A listing should come back promptly; a follow stream may be quiet for hours.
    let timeout = bounded.then_some(Duration::from_secs(30));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(timeout)
        .build()
        .into();
    let request = query.iter().fold(agent.get(url), |request, (key, value)| {
        request.query(key, value)
    });
    let request = match token {
        Some(token) => request.header("Authorization", format!("Bearer {token}")),
        None => request,
    };
    let response = request
        .call()
        .with_context(|| format!("cannot reach netprobe at {url}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let text = body.read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|body| body.error)
            .unwrap_or_else(|_| text.trim().to_string());
        bail!("{url} answered {status}: {message}");
    }
    Ok(body.into_reader())
}

const HEADER: [&str; 7] = [
    "FIRST SEEN",
    "VERDICT",
    "PROTO",
    "SOURCE",
    "DESTINATION",
    "COUNTS",
    "REASON",
];

/// Verdicts as an aligned table, one row per verdict under a header row; column widths
/// fit the content and the last column is not padded.
pub fn format_table(verdicts: &[Verdict]) -> String {
    let rows: Vec<[String; 7]> = verdicts.iter().map(row).collect();
    let mut widths = HEADER.map(|title| title.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in iter::once(HEADER.map(String::from)).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}

fn row(v: &Verdict) -> [String; 7] {
    let flow = &v.flow;
    [
        timestamp(v.first_seen),
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
            &reason(&v.reason, v.dns.as_ref()),
            v.cause,
            v.next.as_deref(),
        ),
    ]
}

/// A node-level verdict, printed above the table.
pub fn format_node(n: &NodeVerdict) -> String {
    let period = match n.until {
        Some(until) => format!("{} to {}", timestamp(n.since), timestamp(until)),
        None => format!("since {}", timestamp(n.since)),
    };
    let next = n
        .next
        .as_deref()
        .map(|c| format!("; next: {c}"))
        .unwrap_or_default();
    format!(
        "NODE {} [{}] {period}, {} flows: {}{next}",
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

/// One `--follow` line: time, event, verdict, flow, reason.
pub fn format_event(e: &FlowEvent) -> String {
    let flow = &e.flow;
    let line = format!(
        "{}  {:<16}  {:<11}  {} -> {} {}  {}",
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
        explained(
            &reason(&e.reason, e.dns.as_ref()),
            e.cause,
            e.next.as_deref(),
        ),
    );
    line.trim_end().to_string()
}

fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
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

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        thread,
    };

    use clap::Parser;

    use super::*;
    use crate::{
        model::{Counts, FlowEventKind},
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

    #[test]
    fn table_aligns_columns_to_their_content() {
        assert_eq!(
            format_table(&verdicts()),
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
    fn an_empty_table_is_just_the_header() {
        assert_eq!(
            format_table(&[]),
            "FIRST SEEN  VERDICT  PROTO  SOURCE  DESTINATION  COUNTS  REASON\n"
        );
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
    fn bad_arguments_are_rejected_before_any_request() {
        let parse =
            |argv: &[&str]| Cli::try_parse_from(iter::once("observe").chain(argv.iter().copied()));
        assert!(parse(&["--verdict", "TIMEOUTS"]).is_err());
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--limit", "10001"]).is_err());
        assert!(parse(&["--follow", "--limit", "5"]).is_err());
        assert!(parse(&["--protocol", "icmp"]).is_err());
        assert!(parse(&["-o", "yaml"]).is_err());
    }

    /// A real agent API on a loopback port, served from its own thread until dropped.
    struct Server {
        url: String,
        source: Arc<fixtures::TestSource>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Server {
        fn start() -> Self {
            let source = fixtures::source();
            let state = fixtures::state(&source);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
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
                url,
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
    fn lists_verdicts_from_a_running_agent_as_a_table() {
        let server = Server::start();
        let out = observe(
            &server,
            &["--verdict", "TIMEOUT,NXDOMAIN", "--namespace", "production"],
        )
        .unwrap();
        let mut expected = verdicts();
        expected.retain(|v| matches!(v.verdict, VerdictKind::Timeout | VerdictKind::Nxdomain));
        assert_eq!(out, format_table(&expected));
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
        // Bound and dropped: nothing listens on this port now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args = parse_args(&[]);
        args.server = format!("http://127.0.0.1:{port}");
        let err = run_to(&args, Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach netprobe at http://127.0.0.1:{port}/v1/verdicts")
        );
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
        let mut args = parse_args(&["--follow", "--verdict", "REFUSED"]);
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
}
