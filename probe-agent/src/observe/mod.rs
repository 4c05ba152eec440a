//! `probe-agent observe`: the agent as its own client (docs/cli.md, "probe-agent observe").
//! Prints verdicts from one agent's HTTP API (`--server`), or from every agent of the
//! cluster at once (`--cluster`, through the API server), the way `hubble observe` does.

mod cluster;
mod fold;
mod format;
#[cfg(test)]
mod tests;

use std::{
    io::{self, BufRead, BufReader, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;

pub use self::{
    cluster::{Agent, agents, proxy_path},
    fold::fold_expansions,
    format::{
        event_line, event_table, format_compact, format_event, format_node, format_table,
        format_wide, terminal_width,
    },
};
use crate::model::{Cause, FlowEvent, FlowEventKind, NodeVerdict, Verdict, VerdictKind};

#[derive(Args, Clone, Debug)]
pub struct ObserveArgs {
    /// Base URL of the agent's HTTP API.
    #[arg(long, env = "NETPROBE_SERVER", default_value = "http://127.0.0.1:9810")]
    pub server: String,
    /// Ask every agent of the cluster instead of `--server`: the DaemonSet's pods are
    /// found and reached through the Kubernetes API server (kubeconfig, pods/proxy).
    #[arg(long, env = "NETPROBE_CLUSTER")]
    pub cluster: bool,
    /// With --cluster: the namespace of the agent pods.
    #[arg(long, env = "NETPROBE_AGENT_NAMESPACE", default_value = "netprobe")]
    pub agent_namespace: String,
    /// With --cluster: the label selector of the agent pods.
    #[arg(
        long,
        env = "NETPROBE_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=netprobe,app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,
    /// With --cluster: how long to wait for each agent's answer (for --follow, for the
    /// stream to start).
    #[arg(long, env = "NETPROBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Only these verdicts (comma-separated, e.g. TIMEOUT,REFUSED).
    #[arg(long, env = "NETPROBE_VERDICT", value_delimiter = ',')]
    pub verdict: Vec<VerdictKind>,
    /// Stream flow events as they happen instead of listing current verdicts.
    #[arg(short, long, env = "NETPROBE_FOLLOW")]
    pub follow: bool,
    /// `table` fits the terminal (reason on its own line), `compact` is one short line
    /// per verdict, `wide` every column on one row, `json` one server JSON object per
    /// line (JSON Lines; with --cluster each names its `node`).
    #[arg(short, long, env = "NETPROBE_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// At most this many verdicts, the most recently seen (default 100; with --cluster,
    /// of all agents together).
    #[arg(long, env = "NETPROBE_LIMIT", value_parser = clap::value_parser!(u16).range(1..=10000), conflicts_with = "follow")]
    pub limit: Option<u16>,
    /// Only this protocol.
    #[arg(long, env = "NETPROBE_PROTOCOL", value_parser = ["tcp", "udp"], ignore_case = true)]
    pub protocol: Option<String>,
    /// Only flows with this address on either side.
    #[arg(long, env = "NETPROBE_IP")]
    pub ip: Option<IpAddr>,
    /// Only flows to this destination port.
    #[arg(long, visible_alias = "to-port", env = "NETPROBE_PORT")]
    pub port: Option<u16>,
    /// Only flows with an end in this namespace.
    #[arg(long, env = "NETPROBE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only flows with an end whose pod name matches this glob.
    #[arg(long, env = "NETPROBE_POD")]
    pub pod: Option<String>,
    /// Only flows from a pod of this namespace.
    #[arg(long, env = "NETPROBE_FROM_NAMESPACE")]
    pub from_namespace: Option<String>,
    /// Only flows from a pod whose name matches this glob.
    #[arg(long, env = "NETPROBE_FROM_POD")]
    pub from_pod: Option<String>,
    /// Only flows from a pod of this workload (Deployment, StatefulSet, DaemonSet, Job).
    #[arg(long, env = "NETPROBE_FROM_WORKLOAD")]
    pub from_workload: Option<String>,
    /// Only flows to a pod or Service of this namespace.
    #[arg(long, env = "NETPROBE_TO_NAMESPACE")]
    pub to_namespace: Option<String>,
    /// Only flows to a pod whose name matches this glob.
    #[arg(long, env = "NETPROBE_TO_POD")]
    pub to_pod: Option<String>,
    /// Only flows to this Service.
    #[arg(long, env = "NETPROBE_TO_SERVICE")]
    pub to_service: Option<String>,
    /// Only flows seen in this past duration (30s, 5m) or since an RFC 3339 time.
    #[arg(long, env = "NETPROBE_SINCE")]
    pub since: Option<String>,
    /// Only flows failing for these causes (comma-separated, e.g. no_ready_endpoints).
    #[arg(long, env = "NETPROBE_CAUSE", value_delimiter = ',')]
    pub cause: Vec<Cause>,
    /// Also list the flows a node-level verdict stands for.
    #[arg(long, env = "NETPROBE_EXPAND", conflicts_with = "follow")]
    pub expand: bool,
    /// Show DNS search-path expansions (the NXDOMAINs of `name.<search suffix>` a lookup
    /// went past) as rows of their own instead of counting them on their lookup.
    #[arg(long, env = "NETPROBE_EXPANSIONS")]
    pub expansions: bool,
    /// Bearer token to send (an agent run with `--api-auth kube` asks the Kubernetes API
    /// who it is). Default: the pod's service-account token, else the current user's token
    /// of the kubeconfig. Not with --cluster: the API server does not pass tokens on.
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
    /// With --cluster, the kubeconfig that reaches the API server (plugins included).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current one.
    #[arg(long)]
    pub context: Option<String>,
}

/// Where a pod's service-account token is mounted.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Compact,
    Json,
    Wide,
}

/// A verdict as printed: the node of the agent that answered (cluster-wide), the
/// server's JSON as sent (`-o json` keeps fields this client does not know), and the
/// search-path expansions folded into it.
#[derive(Clone, Debug)]
pub struct Row {
    pub node: Option<String>,
    pub verdict: Verdict,
    pub raw: serde_json::Value,
    pub expansions: usize,
}

impl Row {
    pub fn new(node: Option<String>, raw: serde_json::Value) -> serde_json::Result<Self> {
        Ok(Self {
            node,
            verdict: serde_json::from_value(raw.clone())?,
            raw,
            expansions: 0,
        })
    }
}

/// An agent's `/v1/verdicts` answer.
#[derive(Deserialize)]
pub struct Listing {
    pub verdicts: Vec<serde_json::Value>,
    #[serde(default)]
    pub node: Vec<NodeVerdict>,
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
            return kubeconfig_token(&config, self.context.as_deref());
        }
        let service_account = Path::new(SERVICE_ACCOUNT_TOKEN);
        if service_account.exists() {
            return read(service_account).map(Some);
        }
        match kube::config::Kubeconfig::read() {
            Ok(config) => kubeconfig_token(&config, self.context.as_deref()),
            // No kubeconfig: nothing to send, an agent without authentication still answers.
            Err(_) => Ok(None),
        }
    }

    /// The API query for these arguments: every filter is the server's to apply (it
    /// validates what we pass through).
    pub fn query(&self) -> Vec<(&'static str, String)> {
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
            ("src_namespace", self.from_namespace.clone()),
            ("src_pod", self.from_pod.clone()),
            ("src_workload", self.from_workload.clone()),
            ("dst_namespace", self.to_namespace.clone()),
            ("dst_pod", self.to_pod.clone()),
            ("dst_service", self.to_service.clone()),
            ("since", self.since.clone()),
            ("limit", self.limit.map(|limit| limit.to_string())),
            ("follow", self.follow.then(|| "true".to_string())),
        ];
        params
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect()
    }

    /// The API path asked: the event stream or the current verdicts.
    fn path(&self) -> &'static str {
        if self.follow {
            "/v1/flows"
        } else {
            "/v1/verdicts"
        }
    }

    /// At most this many rows are printed (cluster-wide, of all agents' answers).
    fn limit(&self) -> usize {
        self.limit.map_or(crate::serve::DEFAULT_LIMIT, usize::from)
    }

    /// Prints a listing: node-level verdicts, then the newest [`Self::limit`] rows, oldest
    /// first (the server's order, cluster-wide by `last_seen` then node), expansions
    /// folded unless `--expansions` or `-o json`.
    pub fn print_listing(
        &self,
        out: &mut impl Write,
        mut rows: Vec<Row>,
        nodes: &[(Option<String>, NodeVerdict)],
    ) -> anyhow::Result<()> {
        rows.sort_by(|a, b| {
            let key = |row: &Row| {
                (
                    row.verdict.last_seen,
                    row.node.clone(),
                    row.verdict.first_seen,
                )
            };
            key(a).cmp(&key(b))
        });
        let newest = rows.len().saturating_sub(self.limit());
        rows.drain(..newest);
        if self.output == Output::Json {
            for mut row in rows {
                if let (Some(node), Some(object)) = (row.node, row.raw.as_object_mut()) {
                    object.insert("node".into(), node.into());
                }
                writeln!(out, "{}", row.raw)?;
            }
            return Ok(out.flush()?);
        }
        if !self.expansions {
            rows = fold_expansions(rows);
        }
        for (node, verdict) in nodes {
            writeln!(out, "{}", format_node(node.as_deref(), verdict))?;
        }
        let text = match self.output {
            Output::Table => format_table(&rows, terminal_width()),
            Output::Compact => format_compact(&rows),
            Output::Wide | Output::Json => format_wide(&rows),
        };
        out.write_all(text.as_bytes())?;
        Ok(out.flush()?)
    }

    /// Prints one line of a `/v1/flows?follow=true` stream, from the agent of `node`
    /// (cluster-wide). Search-path expansions are left out unless `--expansions`.
    pub fn print_event(
        &self,
        out: &mut impl Write,
        node: Option<&str>,
        line: &str,
    ) -> anyhow::Result<()> {
        let unexpected = || format!("unexpected event: {line}");
        if self.output == Output::Json {
            match node {
                Some(node) => {
                    let mut event: serde_json::Value =
                        serde_json::from_str(line).with_context(unexpected)?;
                    if let Some(object) = event.as_object_mut() {
                        object.insert("node".into(), node.into());
                    }
                    writeln!(out, "{event}")?;
                }
                None => writeln!(out, "{line}")?,
            }
            return Ok(out.flush()?);
        }
        let event: FlowEvent = serde_json::from_str(line).with_context(unexpected)?;
        let expansion = event.event == FlowEventKind::SearchExpansion
            || event.cause == Some(Cause::SearchPathExpansion);
        if expansion && !self.expansions {
            return Ok(());
        }
        let prefix = node.map(|node| format!("{node}  ")).unwrap_or_default();
        let text = match self.output {
            Output::Table => event_table(&event, terminal_width()),
            Output::Compact => event_line(&event, true) + "\n",
            Output::Wide | Output::Json => event_line(&event, false) + "\n",
        };
        write!(out, "{prefix}{text}")?;
        Ok(out.flush()?)
    }
}

/// Runs `observe`, writing to stdout (which agents did not answer, to stderr); a closed
/// pipe (`| head`) ends it quietly.
pub fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let result = if args.cluster {
        cluster::run(&args, io::stdout().lock(), io::stderr())
    } else {
        run_to(&args, io::stdout().lock())
    };
    match result {
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

/// `observe` against the one agent of `--server`.
fn run_to(args: &ObserveArgs, mut out: impl Write) -> anyhow::Result<()> {
    let url = format!("{}{}", args.server.trim_end_matches('/'), args.path());
    let token = args.bearer_token()?;
    let reader = get(&url, &args.query(), token.as_deref(), !args.follow)?;
    if args.follow {
        for line in BufReader::new(reader).lines() {
            let line = line.with_context(|| format!("reading {url}"))?;
            args.print_event(&mut out, None, &line)
                .with_context(|| format!("from {url}"))?;
        }
        return Ok(());
    }
    let unexpected = || format!("unexpected answer from {url}");
    let listing: Listing = serde_json::from_reader(reader).with_context(unexpected)?;
    let rows = listing
        .verdicts
        .into_iter()
        .map(|raw| Row::new(None, raw))
        .collect::<Result<_, _>>()
        .with_context(unexpected)?;
    let nodes: Vec<_> = listing.node.into_iter().map(|n| (None, n)).collect();
    args.print_listing(&mut out, rows, &nodes)
}

/// The token of the user of the kubeconfig's `context` or current context (inline or
/// from its token file).
fn kubeconfig_token(
    config: &kube::config::Kubeconfig,
    context: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let Some(user) = context
        .or(config.current_context.as_deref())
        .and_then(|name| config.contexts.iter().find(|c| c.name == name))
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

/// The message of an agent's `{"error": …}` answer, or the body as it is.
pub fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_str::<ErrorBody>(body)
        .map(|body| body.error)
        .unwrap_or_else(|_| body.trim().to_string())
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
        let text = body.read_to_string().unwrap_or_default();
        bail!("{url} answered {status}: {}", error_message(&text));
    }
    Ok(body.into_reader())
}
