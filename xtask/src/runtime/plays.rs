//! The traffic played on one container network, and what the agent must say of it.
//!
//! Three busybox containers on the network: a server (`nc` answering on 8080), a DNS
//! server (dnsmasq, run from the host in the container's network namespace: the busybox
//! image has no DNS server) and a client. A firewall inside the server's and the DNS
//! server's namespaces plays the policy drop and the blocked DNS, as a NetworkPolicy
//! enforced on the pod's side would.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lab::{self, Capture, exec};
use serde_json::Value;

use super::{
    capture,
    podman::{Backend, Podman},
};
use crate::demo;

/// Where the agent serves its API (the DaemonSet's NETPROBE_LISTEN, on the node).
pub const API: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9810);

const OPEN_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
const DROPPED_PORT: u16 = 7000;
const PRESENT: &str = "present.netprobe.test.";
const MISSING: &str = "missing.netprobe.test.";
const BLOCKED: &str = "blocked.netprobe.test.";

/// One incident and the verdict it must get.
struct Expected {
    what: &'static str,
    protocol: &'static str,
    to: Ipv4Addr,
    port: u16,
    /// For DNS: the name asked.
    qname: Option<&'static str>,
    verdict: &'static str,
    /// `null` for OK.
    cause: Option<&'static str>,
    counts: [(&'static str, u64); 4],
}

/// The containers of one network.
pub struct Pods {
    pub backend: Backend,
    pub label: &'static str,
    pub client: String,
    pub server: String,
    pub dns: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    pub dns_ip: Ipv4Addr,
    /// Their host-side veths, which the agent must attach to (the client's last).
    pub veths: Vec<String>,
}

impl Pods {
    fn client_veth(&self) -> &str {
        self.veths.last().expect("three veths")
    }
}

/// Starts the three containers on `network`.
pub fn start_pods(
    podman: &Podman,
    backend: Backend,
    label: &'static str,
    network: &str,
    image: &str,
) -> Result<Pods> {
    let flags = [format!("--network={network}")];
    let sleep = |cmd: &str| vec!["sh".to_owned(), "-c".to_owned(), cmd.to_owned()];
    // busybox as PID 1 ignores SIGTERM: the containers are removed with --time 0.
    let server = podman.start(
        backend,
        &format!("{label}-server"),
        &flags,
        image,
        &sleep(&format!("nc -l -p {OPEN_PORT} -e echo hi; exec sleep 3600")),
    )?;
    let dns = podman.start(
        backend,
        &format!("{label}-dns"),
        &flags,
        image,
        &sleep("exec sleep 3600"),
    )?;
    let client = podman.start(
        backend,
        &format!("{label}-client"),
        &flags,
        image,
        &sleep("exec sleep 3600"),
    )?;
    let mut veths = Vec::new();
    for name in [&server, &dns, &client] {
        veths.push(podman.host_veth(backend, name)?);
    }
    Ok(Pods {
        backend,
        label,
        client_ip: podman.ipv4(backend, &client)?,
        server_ip: podman.ipv4(backend, &server)?,
        dns_ip: podman.ipv4(backend, &dns)?,
        client,
        server,
        dns,
        veths,
    })
}

/// dnsmasq in the DNS container's network namespace; killed when dropped.
pub struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        exec::terminate(&mut self.0, Duration::from_secs(5));
    }
}

/// Starts dnsmasq for `pods` (an A record for PRESENT, NXDOMAIN for any other name) and
/// waits until it answers.
pub fn start_dns(podman: &Podman, pods: &Pods) -> Result<Dnsmasq> {
    let pid = podman.pid(pods.backend, &pods.dns)?;
    let mut cmd = exec::command("nsenter", [format!("--net=/proc/{pid}/ns/net")]);
    let records = [(PRESENT, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))];
    cmd.arg(exec::tool("dnsmasq"))
        .args(lab::dnsmasq_args(&[IpAddr::V4(pods.dns_ip)], &records)?)
        .args([
            "--bind-interfaces",
            // No switch to another user or group: that would clear the parent-death
            // signal set below.
            "--user=root",
            "--group=root",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Killed with this task, however it ends: a dnsmasq left behind would keep the
    // removed container's namespace alive.
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut dnsmasq = Dnsmasq(
        cmd.spawn()
            .with_context(|| format!("starting `{}`", exec::describe(&cmd)))?,
    );
    // Ready when it answers from inside its own namespace (its loopback: the agent does
    // not see it).
    let ip = pods.dns_ip.to_string();
    wait_for("dnsmasq to answer", Duration::from_secs(10), || {
        if let Some(status) = dnsmasq.0.try_wait()? {
            bail!("`{}` exited ({status})", exec::describe(&cmd));
        }
        let out = podman.exec(
            pods.backend,
            &pods.dns,
            &["nslookup", "-type=a", PRESENT, &ip],
        )?;
        Ok(out.status.success())
    })?;
    Ok(dnsmasq)
}

/// nft rules in the network namespace of container `name`.
fn firewall(podman: &Podman, backend: Backend, name: &str, rules: &str) -> Result<()> {
    let pid = podman.pid(backend, name)?;
    let ruleset = format!(
        "table inet netprobe_runtime {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {rules}\n  }}\n}}\n"
    );
    exec::run_with_stdin(
        exec::command("nsenter", [format!("--net=/proc/{pid}/ns/net")])
            .arg(exec::tool("nft"))
            .args(["-f", "-"]),
        &ruleset,
    )?;
    Ok(())
}

/// Plays every incident on `pods` and checks each verdict through the agent's API, and
/// each of its counts against a capture on the client's veth. Captures are kept in `dir`
/// until checked.
pub fn play(podman: &Podman, pods: &Pods, dir: &Path) -> Result<()> {
    let b = pods.backend;
    let veth = pods.client_veth();
    let capture = Capture::on_interface(
        veth,
        IpAddr::V4(pods.client_ip),
        dir.join(format!("{veth}.pcapng")),
    )?;
    let (srv, dns) = (pods.server_ip.to_string(), pods.dns_ip.to_string());
    let client = |args: &[&str]| -> Result<(bool, String)> {
        let out = podman.exec(b, &pods.client, args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text.trim().to_owned()))
    };
    let say = |what: &str, said: &str| println!("   {}: {what}: {said}", pods.label);

    // Healthy: the server answers "hi" and closes.
    let (ok, said) = client(&["nc", "-w", "3", &srv, &OPEN_PORT.to_string()])?;
    ensure!(ok && said == "hi", "healthy TCP: the client got {said:?}");
    say("healthy TCP", "hi");
    // Nothing listens: the server's kernel answers RST.
    let (ok, said) = client(&["nc", "-w", "3", &srv, &CLOSED_PORT.to_string()])?;
    ensure!(
        !ok && said.contains("refused"),
        "refused: the client got {said:?}"
    );
    say("refused", &said);
    // A name without a record: NXDOMAIN (the trailing dot: no search list).
    let (ok, said) = client(&["nslookup", "-type=a", MISSING, &dns])?;
    ensure!(
        !ok && said.contains("NXDOMAIN"),
        "NXDOMAIN: the client got {said:?}"
    );
    say("NXDOMAIN", "NXDOMAIN");

    // Policy drop and blocked DNS: the firewalls drop what reaches the servers.
    firewall(
        podman,
        b,
        &pods.server,
        &format!("tcp dport {DROPPED_PORT} drop"),
    )?;
    firewall(podman, b, &pods.dns, "udp dport 53 drop")?;
    // nc gives up after 2 s (the SYN and its retransmission 1 s later).
    let (ok, said) = client(&["nc", "-w", "2", &srv, &DROPPED_PORT.to_string()])?;
    ensure!(
        !ok && said.contains("timed out"),
        "policy drop: the client got {said:?}"
    );
    say("policy drop", &said);
    // busybox's nslookup sends its query twice, 2.5 s apart, and gives up after 5 s.
    let (ok, said) = client(&["nslookup", "-type=a", BLOCKED, &dns])?;
    ensure!(
        !ok && said.contains("timed out"),
        "blocked DNS: the client got {said:?}"
    );
    say("blocked DNS", &said);

    let tcp = |what, port, verdict, cause, syn, syn_ack, rst| Expected {
        what,
        protocol: "TCP",
        to: pods.server_ip,
        port,
        qname: None,
        verdict,
        cause,
        counts: [
            ("syn", syn),
            ("syn_ack", syn_ack),
            ("rst", rst),
            ("icmp_unreachable", 0),
        ],
    };
    let udp = |what, qname, verdict, cause, queries, responses| Expected {
        what,
        protocol: "UDP",
        to: pods.dns_ip,
        port: 53,
        qname: Some(qname),
        verdict,
        cause: Some(cause),
        counts: [
            ("dns_queries", queries),
            ("dns_responses", responses),
            ("syn", 0),
            ("rst", 0),
        ],
    };
    let expected = [
        tcp("healthy TCP", OPEN_PORT, "OK", None, 1, 1, 0),
        tcp(
            "refused",
            CLOSED_PORT,
            "REFUSED",
            Some("nothing_listening"),
            1,
            0,
            1,
        ),
        // The SYN reached the server's veth (the agent sees both ends on this node).
        tcp(
            "policy drop",
            DROPPED_PORT,
            "TIMEOUT",
            Some("server_silent"),
            2,
            0,
            0,
        ),
        udp("NXDOMAIN", MISSING, "NXDOMAIN", "name_not_found", 1, 1),
        // busybox's query and its retransmission.
        udp("blocked DNS", BLOCKED, "DNS_TIMEOUT", "dns_no_answer", 2, 0),
    ];
    // The agent judges a SYN without answer after 3 s and a query after 5 s.
    let mut verdicts = Vec::new();
    for e in &expected {
        let verdict = wait_for_verdict(pods, e, Duration::from_secs(20))?;
        println!(
            "   {}: {:<12} -> {} {} counts {} [{}]",
            pods.label,
            e.what,
            verdict["verdict"].as_str().unwrap_or("?"),
            verdict["interface"].as_str().unwrap_or("?"),
            verdict["counts"],
            verdict["cause"].as_str().unwrap_or("no cause"),
        );
        verdicts.push(verdict);
    }
    // What the client's veth carried, counted by tshark, is what the agent counted.
    let filters: Vec<String> = expected
        .iter()
        .flat_map(|e| {
            e.counts
                .iter()
                .map(|(count, _)| capture::filter(count, IpAddr::V4(e.to), e.port, e.qname))
        })
        .collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let mut seen = capture.finish(&filters)?.into_iter();
    for (e, verdict) in expected.iter().zip(&verdicts) {
        for (count, _) in &e.counts {
            let captured = seen.next().expect("one count per filter") as u64;
            ensure!(
                verdict["counts"][*count] == captured,
                "{}: {}: the agent counted {count} = {}, the capture on {} has {captured}",
                pods.label,
                e.what,
                verdict["counts"][*count],
                pods.client_veth()
            );
        }
    }
    println!(
        "   {}: every count of the {} verdicts matches the capture on {}",
        pods.label,
        expected.len(),
        pods.client_veth()
    );
    Ok(())
}

/// Polls GET /v1/verdicts?verdict=…&src_ip=…&dst_ip=… until the flow `e` describes has
/// its verdict with exactly its counts; fails with what the agent said otherwise.
fn wait_for_verdict(pods: &Pods, e: &Expected, within: Duration) -> Result<Value> {
    let path = format!(
        "/v1/verdicts?src_ip={}&dst_ip={}&port={}&expand=true",
        pods.client_ip, e.to, e.port
    );
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = demo::http_get(API, &path)?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        let answer: Value = serde_json::from_str(&body)?;
        let flows: Vec<&Value> = answer["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| {
                v["flow"]["protocol"] == e.protocol
                    && v["flow"]["dst_port"] == e.port
                    && e.qname.is_none_or(|q| v["dns"]["qname"] == q)
            })
            .collect();
        if let [only] = flows.as_slice() {
            let counts_match = e.counts.iter().all(|(name, n)| only["counts"][*name] == *n);
            let cause_matches = match e.cause {
                Some(cause) => only["cause"] == cause,
                None => only["cause"].is_null(),
            };
            if only["verdict"] == e.verdict && cause_matches && counts_match {
                return Ok((*only).clone());
            }
        }
        if Instant::now() > deadline {
            let last = Value::Array(flows.into_iter().cloned().collect());
            bail!(
                "{}: {}: expected {} (cause {:?}) with counts {:?} for {} → {}:{}, the agent says (GET {path}):\n{}",
                pods.label,
                e.what,
                e.verdict,
                e.cause,
                e.counts,
                pods.client_ip,
                e.to,
                e.port,
                serde_json::to_string_pretty(&last)?
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Polls `check` every 100 ms until it says true, for at most `within`; an error from
/// `check` fails at once.
pub fn wait_for(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check().with_context(|| format!("waiting for {what}"))? {
        ensure!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
