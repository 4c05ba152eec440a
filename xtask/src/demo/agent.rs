//! The agent the demo runs: started, waited for, watched, stopped; and the HTTP GET it
//! is asked with.

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lab::{Node, exec};
use serde_json::Value;

use super::{DNS_TIMEOUT, SYN_TIMEOUT, objects};
use crate::util;

/// probe-agent, started as a child; stopped with SIGTERM on drop.
pub(super) struct Agent {
    pub(super) bin: PathBuf,
    child: Child,
    pub(super) listen: SocketAddr,
    log: PathBuf,
}

impl Agent {
    pub(super) fn start(
        bin: &Path,
        node: &Node,
        listen: SocketAddr,
        kubeconfig: &Path,
    ) -> Result<Agent> {
        let dir = util::workspace_root().join("target").join("netprobe-demo");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("agent.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--netns")
            .arg(node.netns_path())
            .args(["--listen", &listen.to_string()])
            .args(["--syn-timeout", &format!("{}s", SYN_TIMEOUT.as_secs())])
            .args(["--dns-timeout", &format!("{}s", DNS_TIMEOUT.as_secs())])
            // The pods' spec.nodeName: the agent knows both ends of a flow are here.
            .args(["--node-name", objects::NODE])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            // A Kubernetes Event on the client pod for each new failing cause.
            .arg("--events")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Own process group: Ctrl-C reaches only us, and we stop the agent in order.
            .process_group(0);
        println!("\n== Starting the agent: {}", exec::describe(&cmd));
        println!("   (its log: {})", log.display());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Agent {
            bin: bin.to_owned(),
            child,
            listen,
            log,
        })
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Fails, with the end of its log, if the agent has exited.
    pub(super) fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the agent exited ({status}); the end of {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for `GET /readyz` to answer 200 (programs loaded and attached).
    pub(super) fn wait_ready(&mut self, interrupted: &AtomicBool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last: String;
        loop {
            if interrupted.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            self.ensure_alive()?;
            match http_get(self.listen, "/readyz") {
                Ok((200, _)) => {
                    println!("   ready: GET {}/readyz is 200", self.url());
                    return Ok(());
                }
                Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready after 60 s ({last}); the end of {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Agent {
    /// Waits until the agent knows every object the stand-in serves (its
    /// `netprobe_kube_objects{kind}` gauges): a cause is diagnosed once, when the flow
    /// fails, from what the agent knows then.
    pub(super) fn wait_synced(
        &mut self,
        objects: &[Value],
        interrupted: &AtomicBool,
    ) -> Result<()> {
        let wanted: Vec<String> = [
            ("pods", "Pod"),
            ("services", "Service"),
            ("endpointslices", "EndpointSlice"),
            ("namespaces", "Namespace"),
            ("networkpolicies", "NetworkPolicy"),
        ]
        .iter()
        .map(|(kind, object_kind)| {
            format!(
                "netprobe_kube_objects{{kind=\"{kind}\"}} {}",
                objects::count(objects, object_kind)
            )
        })
        .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if interrupted.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            self.ensure_alive()?;
            let metrics = http_get(self.listen, "/metrics").map(|(_, body)| body);
            let missing: Vec<&String> = match &metrics {
                Ok(body) => wanted
                    .iter()
                    .filter(|w| !body.lines().any(|line| line == w.as_str()))
                    .collect(),
                Err(_) => wanted.iter().collect(),
            };
            if missing.is_empty() {
                println!(
                    "   synced: the agent knows the stand-in's {} objects",
                    objects.len()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not learn the Kubernetes objects within 30 s (missing {missing:?}); the end of {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !exec::terminate(&mut self.child, Duration::from_secs(10)) {
            eprintln!("the agent did not stop within 10 s of SIGTERM: killed it");
        }
    }
}

/// A GET on loopback (the agent, Prometheus): (status, body), whatever the status. No proxy
/// and no redirect, so the answer is the one the addressed server gave.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_response(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .with_context(|| format!("GET {path} from {addr}"))?;
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .with_context(|| format!("reading GET {path}"))?;
    Ok((
        response.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
