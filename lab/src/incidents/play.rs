//! The runner: plays incidents of the catalog on a node with real tools, and says what
//! each client saw.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{Cluster, Dest, Host, Incident, Sees, Setup, Traffic};
use crate::{Node, Pod, exec, nft};

/// What a client saw in one incident, and whether that is what it must see.
pub struct Outcome {
    pub incident: &'static Incident,
    pub saw: String,
    pub as_expected: bool,
}

/// Plays incidents: the ones that hang at once in the background while the quick ones
/// run, then the node-wide ones last, each after `quiet_before_node_wide`.
pub struct Runner<'a> {
    pub node: &'a Node,
    pub cluster: &'a Cluster,
    /// Nothing happens this long before a node-wide incident, so that the agent, which
    /// weighs the pod pairs of the last 10 s, does not mix it up with those before it.
    pub quiet_before_node_wide: Duration,
    /// Called between incidents: fails to stop the play (agent dead, Ctrl-C).
    pub alive: &'a mut dyn FnMut() -> Result<()>,
    /// Called with each outcome as it comes.
    pub report: &'a mut dyn FnMut(&Outcome),
}

/// The node-wide outage: every forwarded TCP packet dropped, in a table of its own so
/// that removing it leaves the other rules alone.
const DATAPATH_TABLE: &str = "netprobe_lab_datapath";
/// The libc resolver would retry for more than a minute: it is stopped after its first
/// tries, past the agent's 5 s DNS timeout.
const GIVE_UP_LOOKUP: Duration = Duration::from_secs(6);

/// A client in the background: a connect on a thread, or a resolver process.
enum Running<'s> {
    Connect(std::thread::ScopedJoinHandle<'s, std::io::Result<()>>),
    Lookup(KillOnDrop),
}

impl Runner<'_> {
    /// Plays `incidents` and returns their outcomes, in the order played.
    pub fn play(&mut self, incidents: &[&'static Incident]) -> Result<Vec<Outcome>> {
        let stage = Stage {
            node: self.node,
            cluster: self.cluster,
        };
        let mut outcomes = Vec::new();
        for incident in incidents.iter().filter(|i| !i.is_node_wide()) {
            for setup in incident.setup {
                stage.set_up(setup)?;
            }
        }
        let (hanging, quick): (Vec<&'static Incident>, Vec<&'static Incident>) = incidents
            .iter()
            .copied()
            .filter(|i| !i.is_node_wide())
            .partition(|i| i.hangs());
        (self.alive)()?;
        std::thread::scope(|scope| -> Result<()> {
            let mut running = Vec::new();
            for &incident in &hanging {
                running.push((incident, stage.start(scope, incident)?));
            }
            let started = Instant::now();
            for &incident in &quick {
                (self.alive)()?;
                let outcome = stage.run(incident)?;
                (self.report)(&outcome);
                outcomes.push(outcome);
            }
            // The lookups end by themselves only if something answered them.
            let mut ended: Vec<Option<ExitStatus>> = vec![None; running.len()];
            let lookups_running = |ended: &[Option<ExitStatus>], running: &[(_, Running)]| {
                running
                    .iter()
                    .zip(ended)
                    .any(|((_, r), e)| matches!(r, Running::Lookup(_)) && e.is_none())
            };
            while started.elapsed() <= GIVE_UP_LOOKUP && lookups_running(&ended, &running) {
                for ((_, r), e) in running.iter_mut().zip(ended.iter_mut()) {
                    if let (Running::Lookup(child), None) = (r, &e) {
                        *e = child.0.try_wait()?;
                    }
                }
                (self.alive)()?;
                std::thread::sleep(Duration::from_millis(100));
            }
            for ((incident, r), e) in running.into_iter().zip(ended) {
                let saw = match r {
                    Running::Connect(handle) => describe(&handle.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("the client thread panicked"))
                    })),
                    Running::Lookup(_) => match e {
                        None => format!("no answer after {} s (gave up)", GIVE_UP_LOOKUP.as_secs()),
                        Some(s) => format!("getent ended early ({s})"),
                    },
                };
                let outcome = judge(incident, saw);
                (self.report)(&outcome);
                outcomes.push(outcome);
            }
            Ok(())
        })?;
        for &incident in incidents.iter().filter(|i| i.is_node_wide()) {
            self.wait_quiet()?;
            let outcome = stage.run(incident)?;
            (self.report)(&outcome);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn wait_quiet(&mut self) -> Result<()> {
        let until = Instant::now() + self.quiet_before_node_wide;
        while Instant::now() < until {
            (self.alive)()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// The node and cluster incidents play on.
#[derive(Clone, Copy)]
struct Stage<'a> {
    node: &'a Node,
    cluster: &'a Cluster,
}

impl Stage<'_> {
    fn pod(&self, name: &str) -> Result<&Pod> {
        self.cluster.pod(name)
    }

    fn addr(&self, to: Dest, port: u16) -> Result<SocketAddr> {
        let ip = match to {
            Dest::Pod(name) => IpAddr::V4(self.pod(name)?.ipv4),
            Dest::PodV6(name) => IpAddr::V6(self.pod(name)?.ipv6),
            Dest::Vip(ip) => IpAddr::V4(ip),
        };
        Ok(SocketAddr::new(ip, port))
    }

    fn set_up(&self, setup: &Setup) -> Result<()> {
        let ip = |name: &str| -> Result<IpAddr> { Ok(IpAddr::V4(self.pod(name)?.ipv4)) };
        match *setup {
            Setup::Drop {
                proto,
                from,
                to,
                port,
            } => {
                let to = to.map(ip).transpose()?;
                self.node.drop_traffic(proto, Some(ip(from)?), to, port)
            }
            Setup::DropInPod { pod, port } => self.pod(pod)?.drop_tcp_in(port),
            Setup::Reject { pod, port } => {
                self.node.reject_service(nft::Proto::Tcp, ip(pod)?, port)
            }
            Setup::LoseFirstSyn { pod, port } => self.node.nft(&format!(
                "{}add rule inet {} filter_forward ip daddr {} tcp dport {port} tcp flags syn quota until 60 bytes drop\n",
                nft::preamble(),
                nft::TABLE,
                ip(pod)?
            )),
            Setup::DatapathDown => self.node.nft(&format!(
                "add table inet {DATAPATH_TABLE}\n\
                 add chain inet {DATAPATH_TABLE} forward {{ type filter hook forward priority -10; policy accept; }}\n\
                 add rule inet {DATAPATH_TABLE} forward meta l4proto tcp drop\n"
            )),
        }
    }

    /// Starts a hanging incident's client in the background.
    fn start<'s>(
        &'s self,
        scope: &'s std::thread::Scope<'s, '_>,
        incident: &Incident,
    ) -> Result<Running<'s>> {
        Ok(match incident.traffic {
            Traffic::Connect {
                from,
                to,
                port,
                timeout_s,
            } => {
                let (pod, to) = (self.pod(from)?, self.addr(to, port)?);
                Running::Connect(
                    scope.spawn(move || pod.connect_tcp(to, Duration::from_secs(timeout_s))),
                )
            }
            Traffic::Getent { from, name } => {
                let pod = self.pod(from)?;
                let child = pod
                    .command("getent")
                    .args(["hosts", name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("running getent in pod {}", pod.name))?;
                Running::Lookup(KillOnDrop(child))
            }
            _ => anyhow::bail!("{}: cannot be played in the background", incident.name),
        })
    }

    /// Plays one incident to its end.
    fn run(&self, incident: &'static Incident) -> Result<Outcome> {
        let node_wide = incident.is_node_wide();
        if node_wide {
            for setup in incident.setup {
                self.set_up(setup)?;
            }
        }
        let saw = match incident.traffic {
            Traffic::Connect {
                from,
                to,
                port,
                timeout_s,
            } => describe(
                &self
                    .pod(from)?
                    .connect_tcp(self.addr(to, port)?, Duration::from_secs(timeout_s)),
            ),
            Traffic::ConnectPairs(pairs) => {
                let mut clients = Vec::new();
                for &(from, to, port) in pairs {
                    clients.push((self.pod(from)?, self.addr(Dest::Pod(to), port)?));
                }
                let results: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
                    let handles: Vec<_> = clients
                        .iter()
                        .map(|&(pod, to)| {
                            scope.spawn(move || pod.connect_tcp(to, Duration::from_secs(4)))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(std::io::Error::other("the client thread panicked"))
                            })
                        })
                        .collect()
                });
                let timed_out = results
                    .iter()
                    .filter(|r| matches!(r, Err(e) if e.kind() == ErrorKind::TimedOut))
                    .count();
                if timed_out == results.len() {
                    "Connection timed out".to_owned()
                } else {
                    format!("{timed_out} of {} connections timed out", results.len())
                }
            }
            Traffic::Curl { from, host, port } => {
                let host = match host {
                    Host::Name(name) => name.to_owned(),
                    Host::Dest(to) => match self.addr(to, 0)?.ip() {
                        IpAddr::V6(ip) => format!("[{ip}]"),
                        ip => ip.to_string(),
                    },
                };
                let url = match port {
                    Some(port) => format!("http://{host}:{port}/"),
                    None => format!("http://{host}/"),
                };
                output(&mut curl(self.pod(from)?, &url)).1
            }
            Traffic::Getent { from, name } => {
                let (ok, out) = output(self.pod(from)?.command("getent").args(["hosts", name]));
                if ok {
                    out.split_whitespace().collect::<Vec<_>>().join(" ")
                } else {
                    "not found".to_owned()
                }
            }
            Traffic::Dig { from, server, name } => {
                let (_, out) = output(self.pod(from)?.command("dig").args([
                    "+tries=1",
                    "+time=3",
                    &format!("@{server}"),
                    name,
                ]));
                out.lines()
                    .find_map(|line| line.split("status: ").nth(1))
                    .map(|rest| rest.split(',').next().unwrap_or(rest).to_owned())
                    .unwrap_or(out)
            }
        };
        if node_wide {
            // Back up, so that the node stays usable.
            self.node.nft(&format!(
                "add table inet {DATAPATH_TABLE}\ndelete table inet {DATAPATH_TABLE}\n"
            ))?;
        }
        Ok(judge(incident, saw))
    }
}

/// Whether what the client saw is what the incident makes it see.
fn judge(incident: &'static Incident, saw: String) -> Outcome {
    let as_expected = match incident.sees {
        Sees::Http200 => saw == "HTTP 200",
        Sees::Connected => saw == "connected",
        Sees::TimedOut => saw == "Connection timed out",
        Sees::Refused => saw == "Connection refused",
        Sees::Reset => saw.contains("reset"),
        Sees::DnsStatus(status) => saw == status,
        Sees::NotFound => saw == "not found",
        Sees::Found(ip) => saw.starts_with(&ip.to_string()),
        Sees::Hangs => saw.starts_with("no answer after"),
    };
    Outcome {
        incident,
        saw,
        as_expected,
    }
}

impl Sees {
    /// What the user sees, in words.
    pub fn describe(&self) -> String {
        match self {
            Sees::Http200 => "HTTP 200".into(),
            Sees::Connected => "connected".into(),
            Sees::TimedOut => "Connection timed out".into(),
            Sees::Refused => "Connection refused".into(),
            Sees::Reset => "Connection reset by peer".into(),
            Sees::DnsStatus(status) => (*status).into(),
            Sees::NotFound => "not found".into(),
            Sees::Found(ip) => format!("found ({ip})"),
            Sees::Hangs => "hangs".into(),
        }
    }
}

/// A child process killed (and reaped) when dropped, however the incident ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a connect ended, in the words a user would see.
fn describe(r: &std::io::Result<()>) -> String {
    match r {
        Ok(()) => "connected".into(),
        Err(e) if e.kind() == ErrorKind::TimedOut => "Connection timed out".into(),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "Connection refused".into(),
        Err(e) => e.to_string(),
    }
}

/// `curl` in `pod`, printing only "HTTP <status>"; `-g` lets IPv6 literals through.
fn curl(pod: &Pod, url: &str) -> Command {
    let mut cmd = pod.command("curl");
    cmd.args([
        "-sS",
        "-g",
        "-o",
        "/dev/null",
        "-w",
        "HTTP %{http_code}",
        "--max-time",
        "5",
        url,
    ]);
    cmd
}

/// Runs a client program; (success, trimmed stdout, or stderr when it failed).
fn output(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => (true, String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            (false, if err.is_empty() { out } else { err })
        }
        Err(e) => (false, format!("cannot run {}: {e}", exec::describe(cmd))),
    }
}
