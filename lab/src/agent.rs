//! One supervisor for `probe-agent run` on a simulated node, for the tests, the demo, the
//! soak and the checks: started on a free loopback port with its log in a file, ready when
//! `/readyz` answers 200, stopped with SIGTERM (then SIGKILL) when dropped.

use std::{
    ffi::OsString,
    fs::File,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde::de::DeserializeOwned;

use crate::{Node, Samples, exec};

/// How `probe-agent run` is started; [`AgentCommand::start`] starts it.
pub struct AgentCommand {
    bin: PathBuf,
    netns: PathBuf,
    listen: Option<SocketAddr>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    keep_log: bool,
}

impl AgentCommand {
    /// `bin run --netns <node> --listen <a free loopback port>`, logging to `log`, with
    /// `RUST_LOG=info` unless [`AgentCommand::env`] says otherwise.
    pub fn new(bin: &Path, node: &Node, log: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            netns: node.netns_path(),
            listen: None,
            args: Vec::new(),
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            log: log.to_owned(),
            keep_log: true,
        }
    }

    /// Listen on `addr` instead of a free loopback port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Remove the log when the agent is dropped (it is printed first if a test panics).
    pub fn remove_log(mut self) -> Self {
        self.keep_log = false;
        self
    }

    /// The command line, for printing.
    pub fn describe(&self) -> String {
        exec::describe(&self.command(self.listen.unwrap_or(([127, 0, 0, 1], 0).into())))
    }

    fn command(&self, listen: SocketAddr) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--netns")
            .arg(&self.netns)
            .args(["--listen", &listen.to_string()])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the agent in a process group of its own (a Ctrl-C at the terminal reaches
    /// only its supervisor, which stops it in order). Not waited for: see
    /// [`Agent::wait_ready`].
    pub fn start(self) -> Result<Agent> {
        let listen = match self.listen {
            Some(listen) => listen,
            None => TcpListener::bind("127.0.0.1:0")?.local_addr()?,
        };
        let log_file =
            File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let child = self
            .command(listen)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(Agent {
            child,
            listen,
            base: format!("http://{listen}"),
            log: self.log,
            keep_log: self.keep_log,
        })
    }
}

/// A running `probe-agent run`.
pub struct Agent {
    pub child: Child,
    pub listen: SocketAddr,
    /// `http://<listen>`.
    pub base: String,
    pub log: PathBuf,
    keep_log: bool,
}

impl Agent {
    /// Waits for `GET /readyz` to answer 200 (programs loaded and attached); fails, with
    /// the end of its log, if the agent exits first or `within` passes.
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.ensure_alive()?;
            let last = match http_get(self.listen, "/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready after {within:?} ({last}); the end of {}:\n{}",
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails, with the end of its log, if the agent has exited.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the agent exited ({status}); the end of {}:\n{}",
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// GET `path` (with its query) from the agent: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.listen, path)
    }

    /// GET `path` and read its JSON answer as `T`; an answer other than 200 is an error.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, body) = self.get(path)?;
        ensure!(status == 200, "GET {path}: HTTP {status}: {}", body.trim());
        serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
    }

    /// The `/metrics` exposition, as text.
    pub fn metrics_text(&self) -> Result<String> {
        let (status, body) = self.get("/metrics")?;
        ensure!(status == 200, "GET /metrics: HTTP {status}");
        Ok(body)
    }

    /// The `/metrics` exposition, as samples.
    pub fn samples(&self) -> Result<Samples> {
        Samples::parse(&self.metrics_text()?)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Resident memory in MiB; an error if the agent is gone.
    pub fn rss_mib(&self) -> Result<f64> {
        let kib = crate::rss_kib(self.child.id()).context("the agent has no VmRSS: gone?")?;
        Ok(kib as f64 / 1024.0)
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`; false if it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        exec::terminate(&mut self.child, grace)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.terminate(Duration::from_secs(10)) {
            eprintln!("the agent did not stop within 10 s of SIGTERM: killed it");
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- probe-agent log ---\n{log}--- end of log ---");
        }
        if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A GET on loopback (the agent, Prometheus): (status, body), whatever the status. No proxy
/// and no redirect, so the answer is the one the addressed server gave.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
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
