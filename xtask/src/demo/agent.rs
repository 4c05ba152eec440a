//! The agent the demo runs: started, waited for, watched, stopped; and the HTTP GET it
//! is asked with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use lab::{Node, incidents as objects};
use serde_json::Value;

use super::{DNS_TIMEOUT, SYN_TIMEOUT};
use crate::util;

/// probe-agent, started as a child by the lab's supervisor; stopped with SIGTERM on drop,
/// its log kept in target/netprobe-demo/.
pub(super) struct Agent {
    pub(super) bin: PathBuf,
    inner: lab::Agent,
}

impl std::ops::Deref for Agent {
    type Target = lab::Agent;
    fn deref(&self) -> &lab::Agent {
        &self.inner
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut lab::Agent {
        &mut self.inner
    }
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
        let cmd = lab::AgentCommand::new(bin, node, &log)
            .listen(listen)
            .args(["--syn-timeout", &format!("{}s", SYN_TIMEOUT.as_secs())])
            .args(["--dns-timeout", &format!("{}s", DNS_TIMEOUT.as_secs())])
            // The pods' spec.nodeName: the agent knows both ends of a flow are here.
            .args(["--node-name", objects::NODE])
            .args([std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()])
            // A Kubernetes Event on the client pod for each new failing cause.
            .args(["--events"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        println!("\n== Starting the agent: {}", cmd.describe());
        println!("   (its log: {})", log.display());
        Ok(Agent {
            bin: bin.to_owned(),
            inner: cmd.start()?,
        })
    }

    pub(super) fn url(&self) -> String {
        self.base.clone()
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
            match self.get("/readyz") {
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
                    self.log_tail(30)
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
            let metrics = self.get("/metrics").map(|(_, body)| body);
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
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A GET on loopback (the agent, Prometheus): (status, body), whatever the status.
pub(crate) use lab::http_get;
