//! `observe --cluster`: every agent of the DaemonSet at once. The agent pods are listed
//! with the operator's kubeconfig and each is asked through the API server's pods/proxy
//! subresource, so no node port needs to be reachable from where `observe` runs. Answers
//! are merged; an agent that cannot answer is named with the reason, not fatal.

use std::{io::Write, time::Duration};

use anyhow::{Context as _, bail};
use axum::http;
use futures::{AsyncBufReadExt as _, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client, api::ListParams, client::Body, config::KubeConfigOptions};
use tokio::sync::mpsc;

use super::{Listing, ObserveArgs, Row, error_message};
use crate::serve::PROXIED_AUTHORIZATION;

/// The agent's port when its pod declares none named `http`.
const DEFAULT_PORT: u16 = 9810;

/// One agent pod, as found: where it runs and how to reach it, or why it cannot answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub namespace: String,
    pub pod: String,
    /// `spec.nodeName` (`<unscheduled>` before the pod has one).
    pub node: String,
    pub port: u16,
    /// The agent serves HTTPS (`--tls-cert-file`).
    pub https: bool,
    /// Not worth asking: not running, or without an address yet.
    pub problem: Option<String>,
}

/// The agents of `pods`, by node name.
pub fn agents(pods: &[Pod]) -> Vec<Agent> {
    let mut agents: Vec<Agent> = pods.iter().map(agent).collect();
    agents.sort_by(|a, b| (&a.node, &a.pod).cmp(&(&b.node, &b.pod)));
    agents
}

fn agent(pod: &Pod) -> Agent {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let containers = spec
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default();
    let port = containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_PORT);
    let https = containers.iter().any(|c| {
        let flag = c
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--tls-cert-file"));
        let env = c
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "NETPROBE_TLS_CERT_FILE");
        flag || env
    });
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
    // A container's waiting reason says more than the phase (CrashLoopBackOff, ...).
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let problem = if pod.metadata.deletion_timestamp.is_some() {
        Some(format!("pod {name} is terminating"))
    } else if phase != "Running" {
        let phase = if phase.is_empty() { "Unknown" } else { &phase };
        let waiting = waiting.map(|w| format!(" ({w})")).unwrap_or_default();
        Some(format!("pod {name} is {phase}{waiting}"))
    } else if status.and_then(|s| s.pod_ip.as_ref()).is_none() {
        Some(format!("pod {name} has no IP address yet"))
    } else {
        None
    };
    Agent {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod: name,
        node: spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "<unscheduled>".into()),
        port,
        https,
        problem,
    }
}

/// `/api/v1/namespaces/{ns}/pods/[https:]{pod}:{port}/proxy{path}?{query}`: the API
/// server forwards it to the agent.
pub fn proxy_path(agent: &Agent, path: &str, query: &[(&str, String)]) -> String {
    let scheme = if agent.https { "https:" } else { "" };
    let mut url = format!(
        "/api/v1/namespaces/{}/pods/{scheme}{}:{}/proxy{path}",
        agent.namespace, agent.pod, agent.port
    );
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url += &format!("{}={}", encode(key), encode(value));
    }
    url
}

/// Percent-encodes all but the unreserved characters of RFC 3986 (globs, commas, `+`
/// of a time zone all reach the agent as given).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs `path` from the API server: the answer if it is a success, else its status and
/// message, as the operator reads them: the API server's own Status (the pod cannot be
/// reached) or the agent's `{"error"}` answer that it passed through.
async fn get(
    client: &Client,
    path: String,
    token: Option<&str>,
) -> Result<http::Response<Body>, String> {
    let mut request = http::Request::get(path);
    if let Some(token) = token {
        request = request.header(PROXIED_AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Body::empty()).map_err(|e| e.to_string())?;
    let answer = client.send(request).await.map_err(|e| e.to_string())?;
    let status = answer.status();
    if status.is_success() {
        return Ok(answer);
    }
    let body = answer.into_body().collect_bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = match serde_json::from_str::<kube::core::Status>(&text) {
        Ok(api) if !api.message.is_empty() => api.message,
        _ => error_message(&text),
    };
    let hint = match (status, token) {
        (http::StatusCode::UNAUTHORIZED, None) => " (no token to send: see --token)",
        _ => "",
    };
    Err(format!("{} {message}{hint}", status.as_u16()))
}

/// Runs `observe --cluster`.
pub fn run(args: &ObserveArgs, out: impl Write, err: impl Write) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(observe(args, out, err))
}

async fn client(args: &ObserveArgs) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer()
            .await
            .context("no Kubernetes API configuration (kubeconfig or in-cluster)")?,
    };
    // An agent that cannot be reached is a 503 of the API server: said at once, not
    // retried for minutes.
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

async fn observe(
    args: &ObserveArgs,
    mut out: impl Write,
    mut err: impl Write,
) -> anyhow::Result<()> {
    let client = client(args).await?;
    let (namespace, selector) = (&args.agent_namespace, &args.agent_selector);
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the agent pods in namespace {namespace}"))?;
    let agents = agents(&pods.items);
    if agents.is_empty() {
        bail!(
            "no agent pods in namespace {namespace} with labels {selector} \
             (see --agent-namespace, --agent-selector)"
        );
    }
    let uncovered = uncovered(&client, &agents).await;
    if !uncovered.is_empty() {
        let nodes = if uncovered.len() == 1 {
            "node"
        } else {
            "nodes"
        };
        let names = uncovered.join(", ");
        writeln!(
            err,
            "netprobe: no agent pod on {} {nodes}: {names}",
            uncovered.len()
        )?;
    }
    let query = args.query();
    // The agents' token (with `--api-auth kube` they ask the API server whose it is).
    let token = args.bearer_token()?;
    if args.follow {
        let token = token.as_deref();
        return follow(args, &client, &agents, &query, token, &mut out, &mut err).await;
    }
    let (client, query, token) = (&client, &query, token.as_deref());
    let answers = futures::future::join_all(agents.iter().map(|agent| async move {
        let Some(problem) = &agent.problem else {
            return (agent, list(client, agent, query, token, args.timeout).await);
        };
        (agent, Err(problem.clone()))
    }))
    .await;
    let (mut rows, mut nodes, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (agent, answer) in answers {
        match answer {
            Ok(listing) => {
                for raw in listing.verdicts {
                    let row = Row::new(Some(agent.node.clone()), raw);
                    rows.push(
                        row.with_context(|| format!("unexpected verdict from {}", agent.pod))?,
                    );
                }
                nodes.extend(
                    listing
                        .node
                        .into_iter()
                        .map(|n| (Some(agent.node.clone()), n)),
                );
            }
            Err(reason) => failed.push((agent, reason)),
        }
    }
    args.print_listing(&mut out, rows, &nodes)?;
    if !failed.is_empty() {
        writeln!(
            err,
            "netprobe: {} of {} agents did not answer:",
            failed.len(),
            agents.len()
        )?;
        for (agent, reason) in &failed {
            writeln!(
                err,
                "  {} ({}/{}): {reason}",
                agent.node, agent.namespace, agent.pod
            )?;
        }
        err.flush()?;
    }
    if failed.len() == agents.len() {
        bail!("no agent answered");
    }
    Ok(())
}

/// The cluster's nodes that no agent pod runs on (tainted, cordoned before the
/// DaemonSet came, or outside its node selector), when the reader may list nodes.
async fn uncovered(client: &Client, agents: &[Agent]) -> Vec<String> {
    let Ok(nodes) = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    else {
        return Vec::new();
    };
    let mut names: Vec<String> = nodes
        .items
        .into_iter()
        .filter_map(|node| node.metadata.name)
        .filter(|name| !agents.iter().any(|agent| &agent.node == name))
        .collect();
    names.sort();
    names
}

/// One agent's `/v1/verdicts`, or why there is none.
async fn list(
    client: &Client,
    agent: &Agent,
    query: &[(&str, String)],
    token: Option<&str>,
    timeout: Duration,
) -> Result<Listing, String> {
    let path = proxy_path(agent, "/v1/verdicts", query);
    let waited = || format!("no answer within {}", humantime::format_duration(timeout));
    let body = tokio::time::timeout(timeout, async {
        let answer = get(client, path, token).await?;
        let body = answer.into_body().collect_bytes().await;
        body.map_err(|e| format!("reading the answer: {e}"))
    })
    .await
    .map_err(|_| waited())??;
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}

enum Message {
    /// An agent's stream started: the API server and the agent accepted it.
    Started,
    Line(String, String),
    /// An agent's stream could not start or ended: its node, pod and why.
    Ended(String, String, String),
}

/// Every answering agent's event stream, merged line by line as they come, each line
/// named with its node; an agent whose stream fails or ends is reported on `err`. Ends
/// when every stream has; an error if none started.
async fn follow(
    args: &ObserveArgs,
    client: &Client,
    agents: &[Agent],
    query: &[(&str, String)],
    token: Option<&str>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(1024);
    for agent in agents {
        if let Some(problem) = &agent.problem {
            writeln!(err, "netprobe: {} ({}): {problem}", agent.node, agent.pod)?;
            continue;
        }
        let (client, tx, agent) = (client.clone(), tx.clone(), agent.clone());
        let token = token.map(str::to_string);
        let path = proxy_path(&agent, "/v1/flows", query);
        let timeout = args.timeout;
        tokio::spawn(async move {
            let ended = |reason| Message::Ended(agent.node.clone(), agent.pod.clone(), reason);
            let asked = get(&client, path, token.as_deref());
            let answer = match tokio::time::timeout(timeout, asked).await {
                Err(_) => {
                    let waited = humantime::format_duration(timeout);
                    return drop(tx.send(ended(format!("no answer within {waited}"))).await);
                }
                Ok(Err(reason)) => return drop(tx.send(ended(reason)).await),
                Ok(Ok(answer)) => answer,
            };
            if tx.send(Message::Started).await.is_err() {
                return;
            }
            let body = axum::body::Body::new(answer.into_body()).into_data_stream();
            let reader = body.map_err(std::io::Error::other).into_async_read();
            let mut lines = std::pin::pin!(reader.lines());
            let reason = loop {
                match lines.next().await {
                    Some(Ok(line)) if line.trim().is_empty() => {}
                    Some(Ok(line)) => {
                        if tx
                            .send(Message::Line(agent.node.clone(), line))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(e)) => break format!("the stream broke: {e}"),
                    None => break "the stream ended".to_string(),
                }
            };
            let _ = tx.send(ended(reason)).await;
        });
    }
    drop(tx);
    let mut started = 0;
    while let Some(message) = rx.recv().await {
        match message {
            Message::Started => started += 1,
            Message::Line(node, line) => args.print_event(out, Some(&node), &line)?,
            Message::Ended(node, pod, reason) => {
                writeln!(err, "netprobe: {node} ({pod}): {reason}")?;
                err.flush()?;
            }
        }
    }
    if started == 0 {
        bail!("no agent answered");
    }
    Ok(())
}
