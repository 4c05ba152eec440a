//! Debian's prometheus, run as a child of `cargo xtask check-monitoring`, and what the
//! check asks it over its HTTP API.

use std::{
    collections::BTreeSet,
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lab::exec;
use serde_json::Value;

use crate::demo;

/// Percent-encodes a query-string value (RFC 3986: everything but unreserved characters).
pub(super) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Debian's prometheus, started as a child with its data in a temporary directory; killed
/// on drop (and by the kernel if this process dies first).
pub(super) struct Prometheus {
    child: Child,
    addr: SocketAddr,
    pub(super) log: PathBuf,
}

impl Prometheus {
    pub(super) fn start(
        bin: &Path,
        dir: &Path,
        config: &Path,
        addr: SocketAddr,
    ) -> Result<Prometheus> {
        let log = dir.join("prometheus.log");
        let log_file = File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Own process group: Ctrl-C reaches only xtask, which stops it in order.
            .process_group(0);
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exec::describe(&cmd)))?;
        Ok(Prometheus { child, addr, log })
    }

    pub(super) fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "prometheus exited ({status}); the end of {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    pub(super) fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.ensure_alive()?;
            if let Ok((200, _)) = demo::http_get(self.addr, "/-/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready after 30 s; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GETs an API path; the `data` of a successful answer.
    pub(super) fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = demo::http_get(self.addr, path)?;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {status}, not JSON: {body}"))?;
        ensure!(
            status == 200 && json["status"] == "success",
            "HTTP {status}: {} {}",
            json["errorType"].as_str().unwrap_or(""),
            json["error"].as_str().unwrap_or(&body)
        );
        Ok(json["data"].clone())
    }

    /// Evaluates `expr` now (/api/v1/query); the series of the instant vector.
    pub(super) fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        ensure!(
            data["resultType"] == "vector",
            "a {} instead of an instant vector",
            data["resultType"]
        );
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Values of `label` on the series of `metric` (what Grafana's label_values() lists).
    pub(super) fn label_values(&self, label: &str, metric: &str) -> Result<Vec<String>> {
        let data = self.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode(metric)
        ))?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Like [`Self::label_values`], as a set (the empty value included: /api/v1/query).
    pub(super) fn label_set(&self, label: &str, metric: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .query(&format!("count by ({label}) ({metric})"))?
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
            .collect())
    }

    /// The value of a one-series `expr` (`sum(...)`), `None` without a series.
    pub(super) fn scalar(&self, expr: &str) -> Result<Option<f64>> {
        let series = self.query(expr)?;
        Ok(series
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }

    /// Polls `done` every 500 ms until it holds; fails after `timeout` or when `alive` fails.
    pub(super) fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        alive: &mut dyn FnMut() -> Result<()>,
        mut done: impl FnMut(&Prometheus) -> Result<bool>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            alive()?;
            self.ensure_alive()?;
            if done(self)? {
                println!(
                    "   waited {:.1} s for {what}",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "waited {} s for {what}, in vain; Prometheus' log: {}",
                    timeout.as_secs(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every alerting rule's state and its active (pending or firing) alerts.
    pub(super) fn rule_states(&self) -> Result<Vec<RuleState>> {
        let data = self.api("/api/v1/rules")?;
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for r in group["rules"].as_array().into_iter().flatten() {
                let alerts = r["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| ActiveAlert {
                        state: a["state"].as_str().unwrap_or("?").to_owned(),
                        node: a["labels"]["node"].as_str().unwrap_or("").to_owned(),
                        summary: a["annotations"]["summary"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    })
                    .collect();
                let for_ = r["duration"].as_f64().unwrap_or(0.0);
                rules.push(RuleState {
                    name: r["name"].as_str().unwrap_or("?").to_owned(),
                    alerts,
                    for_: if for_ > 0.0 {
                        format!("{}m", for_ / 60.0)
                    } else {
                        "none".into()
                    },
                    health: r["health"].as_str().unwrap_or("?").to_owned(),
                    error: r["lastError"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
        Ok(rules)
    }
}

/// How Prometheus' own evaluation of a rule went (/api/v1/rules).
pub(super) struct RuleState {
    pub(super) name: String,
    /// Its pending and firing alerts.
    pub(super) alerts: Vec<ActiveAlert>,
    /// Its `for:`, as `10m` (or `none`).
    pub(super) for_: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub(super) health: String,
    pub(super) error: String,
}

/// One active alert of a rule.
pub(super) struct ActiveAlert {
    /// `pending` or `firing`.
    pub(super) state: String,
    /// Its `node` label: which target it is about.
    pub(super) node: String,
    /// Its summary, as rendered.
    pub(super) summary: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        exec::terminate(&mut self.child, Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            url_encode(r#"sum by (a) (x{b=~".*"}[1m])"#),
            "sum%20by%20%28a%29%20%28x%7Bb%3D~%22.%2A%22%7D%5B1m%5D%29"
        );
    }
}
