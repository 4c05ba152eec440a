//! `cargo xtask demo`: a simulated node with a few pods, the agent watching it, and the
//! incidents of DESIGN.md played with real tools, then the verdicts the agent gave them.

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xtask::{
    exec,
    kube_stand_in::KubeStandIn,
    lab::{self, DnsServer, Listener, Node, Pod, Proto},
};

use crate::{build, toolchain, util};

mod objects;

/// Namespaces are `demo-node`, `demo-checkout`, ...: short enough to type by hand.
const PREFIX: &str = "demo";
const SYN_TIMEOUT: Duration = Duration::from_secs(3);
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const PAYMENT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const ORDERS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Play the incidents, print the verdicts, then clean up and exit; fails if the agent
    /// dies or an incident did not get its verdict (used by `cargo xtask test`).
    #[arg(long)]
    no_wait: bool,
    /// Build the lab and play the incidents without the agent: checks the lab itself.
    #[arg(long)]
    no_agent: bool,
    /// Address of the agent's API (in this machine's namespace).
    #[arg(long, default_value = "127.0.0.1:9810")]
    listen: SocketAddr,
}

impl DemoArgs {
    /// `--no-wait` with the agent's API on `listen`: for [`run_then`].
    pub fn no_wait(listen: SocketAddr) -> DemoArgs {
        DemoArgs {
            no_wait: true,
            no_agent: false,
            listen,
        }
    }
}

/// What [`run_then`] calls once every incident has its verdict, while the agent still serves
/// them; its argument fails once the agent has died or Ctrl-C was pressed.
pub type AfterIncidents<'a> = &'a mut dyn FnMut(&mut dyn FnMut() -> Result<()>) -> Result<()>;

pub fn run(args: DemoArgs) -> Result<()> {
    run_then(args, None)
}

/// The demo; with `--no-wait` and `then`, `then` runs after the incidents' verdicts are
/// checked and before the demo cleans up (e.g. a Prometheus scraping the agent, in
/// `cargo xtask check-monitoring`), and its result is the demo's.
pub fn run_then(args: DemoArgs, then: Option<AfterIncidents<'_>>) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        // SIGINT, SIGTERM and SIGHUP ("termination" feature): stop, then clean up in order.
        ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let check = || -> Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    };

    // Before the (possibly long) set-up: without root there is nothing the demo can do.
    util::require_root(
        "demo",
        "it creates network namespaces and loads eBPF programs",
    )?;
    toolchain::bootstrap()?;
    let agent_bin = if args.no_agent {
        None
    } else {
        Some(build::build_agent()?)
    };
    check()?;

    let _one_demo_at_a_time = hold_demo_lock()?;
    // No other demo is alive, so whatever a killed one left is ours to clear.
    let removed = lab::remove_orphans(PREFIX)?;
    if !removed.is_empty() {
        println!(
            "Removed what an earlier demo left (its processes, then namespaces {})",
            removed.join(" ")
        );
    }
    // Declared before the agent, so dropped after it: the agent stops before its node goes.
    let mut node = Node::new(PREFIX)?;
    let cluster = Cluster::create(&mut node)?;
    // The Kubernetes API the agent names flows from: a stand-in serving the demo's pods,
    // Services and EndpointSlices.
    let kube_api = KubeStandIn::start_in_netns(Some(node.netns()))?;
    for object in objects::objects(&node, PAYMENT_VIP, ORDERS_VIP) {
        kube_api.apply(object)?;
    }
    let kubeconfig = util::workspace_root()
        .join("target")
        .join("netprobe-demo")
        .join("kubeconfig");
    std::fs::create_dir_all(kubeconfig.parent().expect("a parent"))?;
    kube_api.write_kubeconfig(&kubeconfig)?;
    check()?;

    let mut agent = match &agent_bin {
        Some(bin) => {
            let mut agent = Agent::start(bin, &node, args.listen, &kubeconfig)?;
            agent.wait_ready(&interrupted)?;
            Some(agent)
        }
        None => None,
    };
    let alive = |agent: &mut Option<Agent>| -> Result<()> {
        check()?;
        if let Some(a) = agent {
            a.ensure_alive()?;
        }
        Ok(())
    };

    println!("\n== Playing the incidents (what the pods' users see)\n");
    let outcomes = cluster.play(&node, &mut || alive(&mut agent))?;
    let lab_ok = outcomes.iter().all(|o| o.as_expected);

    let Some(mut agent) = agent else {
        println!();
        ensure!(lab_ok, "the lab did not behave as expected (see above)");
        println!("The lab behaves as expected (no agent was started: --no-agent).");
        return Ok(());
    };

    let wait = DNS_TIMEOUT.max(SYN_TIMEOUT) + Duration::from_secs(1);
    println!(
        "\nWaiting {} s for the agent's SYN ({} s) and DNS ({} s) timeouts to expire...",
        wait.as_secs(),
        SYN_TIMEOUT.as_secs(),
        DNS_TIMEOUT.as_secs()
    );
    let until = Instant::now() + wait;
    while Instant::now() < until {
        agent.ensure_alive()?;
        check()?;
        std::thread::sleep(Duration::from_millis(200));
    }

    println!("\n== What netprobe saw (`probe-agent observe`)\n");
    let observe = exec::run_streaming(
        Command::new(agent.bin.as_path())
            .args(["observe", "--server", &agent.url()])
            .stdin(Stdio::null()),
    );
    let missing = cluster.check_verdicts(&agent)?;
    agent.ensure_alive()?;

    if args.no_wait {
        observe?;
        ensure!(lab_ok, "the lab did not behave as expected (see above)");
        ensure!(
            missing.is_empty(),
            "the agent gave no verdict for: {}",
            missing.join("; ")
        );
        if let Some(then) = then {
            return then(&mut || {
                check()?;
                agent.ensure_alive()
            });
        }
        return Ok(());
    }
    if let Err(e) = observe {
        eprintln!("warning: {e:#}");
    }

    print_examples(&agent, &cluster);
    while !interrupted.load(Ordering::SeqCst) {
        agent.ensure_alive()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nStopping the agent and removing the demo node...");
    drop(agent);
    drop(cluster);
    drop(node);
    println!("Done.");
    Ok(())
}

fn print_examples(agent: &Agent, cluster: &Cluster) {
    let port = agent.listen.port();
    let bin = agent.bin.display();
    let pretty = if exec::find_tool("jq").is_some() {
        " | jq"
    } else {
        ""
    };
    println!(
        "\n== The API stays up: try\n\n  \
         curl -s 'localhost:{port}/v1/verdicts?verdict=TIMEOUT'{pretty}\n  \
         curl -N 'localhost:{port}/v1/flows?follow=true'\n  \
         curl -s localhost:{port}/metrics | grep netprobe_\n  \
         {bin} observe --server {url} --follow\n\n\
         and make more traffic from a pod, e.g.\n\n  \
         sudo ip netns exec {checkout} curl -s http://payment-service/\n  \
         sudo ip netns exec {checkout} getent hosts orders.production\n\n\
         Ctrl-C stops the agent and removes the demo's namespaces.",
        url = agent.url(),
        checkout = cluster.checkout.netns,
    );
}

/// The demo's pods, servers and Services.
struct Cluster {
    payment: Pod,
    db: Pod,
    checkout: Pod,
    batch: Pod,
    // Kept alive for the demo's lifetime (they stop when dropped).
    _dns: DnsServer,
    _servers: Vec<Listener>,
}

/// What a client saw in one incident, and whether that is what the incident should cause.
struct Outcome {
    as_expected: bool,
}

impl Cluster {
    fn create(node: &mut Node) -> Result<Cluster> {
        let kube_dns = node.add_pod("kube-dns", "kube-system", 2)?;
        let payment = node.add_pod("payment", "production", 3)?;
        let db = node.add_pod("db", "production", 4)?;
        let checkout = node.add_pod("checkout", "production", 5)?;
        let batch = node.add_pod("batch", "jobs", 6)?;

        let dns = lab::start_dns(
            &kube_dns,
            &[
                (
                    "kube-dns.kube-system.svc.cluster.local",
                    IpAddr::V4(lab::DEFAULT_DNS),
                ),
                (
                    "payment-service.production.svc.cluster.local",
                    IpAddr::V4(PAYMENT_VIP),
                ),
                // A Service with no endpoints: it resolves, but nothing answers behind it.
                (
                    "orders.production.svc.cluster.local",
                    IpAddr::V4(ORDERS_VIP),
                ),
                ("postgres.production.svc.cluster.local", IpAddr::V4(db.ipv4)),
            ],
        )?;
        // kube-dns' ClusterIP, DNAT'ed to the DNS pod like kube-proxy does.
        for proto in [Proto::Udp, Proto::Tcp] {
            node.add_service(
                proto,
                IpAddr::V4(lab::DEFAULT_DNS),
                53,
                SocketAddr::new(IpAddr::V4(kube_dns.ipv4), 53),
            )?;
        }
        let servers = vec![payment.listen_tcp(8080)?, db.listen_tcp(5432)?];
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(PAYMENT_VIP),
            80,
            SocketAddr::new(IpAddr::V4(payment.ipv4), 8080),
        )?;

        println!(
            "\n== Demo node: namespace {} (agent attaches to veth* there)\n",
            node.netns()
        );
        let row = |cols: [&str; 6]| {
            let [pod, ns, netns, v4, v6, veth] = cols;
            println!("  {pod:<10} {ns:<12} {netns:<14} {v4:<12} {v6:<16} {veth}");
        };
        row(["pod", "namespace", "netns", "IPv4", "IPv6", "host veth"]);
        for p in node.pods() {
            let (v4, v6) = (p.ipv4.to_string(), p.ipv6.to_string());
            row([&p.name, &p.k8s_namespace, &p.netns, &v4, &v6, &p.host_if]);
        }
        println!(
            "\n  Services: kube-dns {dns}:53 -> kube-dns pod, payment-service {PAYMENT_VIP}:80 -> payment:8080,\n            \
             orders {ORDERS_VIP}:80 (no endpoints), postgres -> db pod :5432",
            dns = lab::DEFAULT_DNS
        );
        Ok(Cluster {
            payment,
            db,
            checkout,
            batch,
            _dns: dns,
            _servers: servers,
        })
    }

    /// Plays every incident; `alive` is called between them (agent still up, no Ctrl-C).
    fn play(&self, node: &Node, alive: &mut dyn FnMut() -> Result<()>) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        let mut report = |title: &str, expect: &str, saw: String, as_expected: bool| {
            let mark = if as_expected { "ok " } else { "BAD" };
            println!(
                "  [{mark}] {title}\n        saw: {saw}\n        netprobe should say: {expect}"
            );
            outcomes.push(Outcome { as_expected });
        };
        let (checkout, batch) = (&self.checkout, &self.batch);
        let to = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);

        // Healthy. The short name, as an application in namespace "production" would use:
        // the first search domain answers, so the lookup is one query per address family.
        alive()?;
        let (ok, out) = output(&mut curl(checkout, "http://payment-service/"));
        report(
            "healthy: checkout$ curl http://payment-service/",
            "DNS OK (payment-service.production.svc.cluster.local) + TCP OK to 10.96.0.20:80",
            out.clone(),
            ok && out == "HTTP 200",
        );

        alive()?;
        let url = format!("http://[{}]:8080/", self.payment.ipv6);
        let (ok, out) = output(&mut curl(checkout, &url));
        report(
            &format!("healthy over IPv6: checkout$ curl {url}"),
            "TCP OK (IPv6)",
            out.clone(),
            ok && out == "HTTP 200",
        );

        // NetworkPolicy default-deny between checkout and the database.
        alive()?;
        node.drop_traffic(
            Proto::Tcp,
            Some(IpAddr::V4(checkout.ipv4)),
            Some(IpAddr::V4(self.db.ipv4)),
            Some(5432),
        )?;
        let r = checkout.connect_tcp(
            to(IpAddr::V4(self.db.ipv4), 5432),
            SYN_TIMEOUT + Duration::from_secs(1),
        );
        report(
            &format!(
                "policy drop: checkout connects to db {}:5432 (nft drop in the node)",
                self.db.ipv4
            ),
            "TIMEOUT (SYNs, no answer)",
            describe(&r),
            matches!(&r, Err(e) if e.kind() == ErrorKind::TimedOut),
        );

        alive()?;
        let r = checkout.connect_tcp(
            to(IpAddr::V4(self.payment.ipv4), 9090),
            Duration::from_secs(3),
        );
        report(
            &format!(
                "nothing listens: checkout connects to payment {}:9090",
                self.payment.ipv4
            ),
            "REFUSED (SYN answered by RST)",
            describe(&r),
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        );

        alive()?;
        node.reject_service(Proto::Tcp, IpAddr::V4(ORDERS_VIP), 80)?;
        let r = checkout.connect_tcp(to(IpAddr::V4(ORDERS_VIP), 80), Duration::from_secs(3));
        report(
            &format!("Service without endpoints: checkout connects to orders {ORDERS_VIP}:80"),
            "UNREACHABLE (ICMP port unreachable from kube-proxy's reject)",
            describe(&r),
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        );

        alive()?;
        let (ok, out) = output(checkout.command("getent").args(["hosts", "paymnt-service"]));
        report(
            "wrong Service name: checkout$ getent hosts paymnt-service",
            "NXDOMAIN (for each search domain)",
            if ok { out.clone() } else { "not found".into() },
            !ok,
        );

        // CoreDNS unreachable from the batch pod: lookups hang. The libc resolver would
        // retry for more than a minute over the search list; stop it after the first tries.
        alive()?;
        node.drop_traffic(Proto::Udp, Some(IpAddr::V4(batch.ipv4)), None, Some(53))?;
        let give_up = DNS_TIMEOUT + Duration::from_secs(1);
        let mut getent = batch
            .command("getent")
            .args(["hosts", "payment-service"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        let status = loop {
            if let Some(s) = getent.try_wait()? {
                break Some(s);
            }
            if started.elapsed() > give_up {
                let _ = getent.kill();
                let _ = getent.wait();
                break None;
            }
            alive()?;
            std::thread::sleep(Duration::from_millis(100));
        };
        report(
            "DNS blocked: batch$ getent hosts payment-service (nft drops udp/53 from batch)",
            "DNS_TIMEOUT (queries, no response)",
            match status {
                None => format!("no answer after {} s (gave up)", give_up.as_secs()),
                Some(s) => format!("getent ended early ({s})"),
            },
            status.is_none(),
        );
        Ok(outcomes)
    }

    /// Looks for each incident's verdict in `/v1/verdicts`; prints the result and returns
    /// the incidents with no matching verdict.
    fn check_verdicts(&self, agent: &Agent) -> Result<Vec<String>> {
        let (status, body) = http_get(agent.listen, "/v1/verdicts?limit=10000")?;
        ensure!(status == 200, "GET /v1/verdicts: HTTP {status}: {body}");
        let json: Value = serde_json::from_str(&body).context("GET /v1/verdicts: not JSON")?;
        let verdicts = json["verdicts"]
            .as_array()
            .context("GET /v1/verdicts: no \"verdicts\" array")?;
        let (c4, c6) = (
            IpAddr::V4(self.checkout.ipv4),
            IpAddr::V6(self.checkout.ipv6),
        );
        let payment = IpAddr::V4(self.payment.ipv4);
        let expectations: Vec<(&str, String, Matcher)> = vec![
            (
                "OK",
                "checkout resolves payment-service".into(),
                Box::new(move |f: &Flow| {
                    f.src == Some(c4) && f.qname_starts("payment-service.production.")
                }),
            ),
            (
                "OK",
                "checkout -> payment-service".into(),
                Box::new(move |f: &Flow| {
                    f.src == Some(c4) && (f.to(IpAddr::V4(PAYMENT_VIP), 80) || f.to(payment, 8080))
                }),
            ),
            ("OK", "checkout -> payment over IPv6".into(), {
                let p6 = IpAddr::V6(self.payment.ipv6);
                Box::new(move |f: &Flow| f.src == Some(c6) && f.to(p6, 8080))
            }),
            ("TIMEOUT", "checkout -> db:5432".into(), {
                let db = IpAddr::V4(self.db.ipv4);
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(db, 5432))
            }),
            (
                "REFUSED",
                "checkout -> payment:9090".into(),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(payment, 9090)),
            ),
            (
                "UNREACHABLE",
                "checkout -> orders:80".into(),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(ORDERS_VIP), 80)),
            ),
            (
                "NXDOMAIN",
                "checkout resolves paymnt-service".into(),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_starts("paymnt-service.")),
            ),
            ("DNS_TIMEOUT", "batch resolves payment-service".into(), {
                let b = IpAddr::V4(self.batch.ipv4);
                Box::new(move |f: &Flow| f.src == Some(b))
            }),
        ];
        println!(
            "\n== Did every incident get its verdict? ({} verdicts tracked)\n",
            verdicts.len()
        );
        let flows: Vec<Flow> = verdicts.iter().map(Flow::from_json).collect();
        let mut missing = Vec::new();
        for (verdict, what, matches) in &expectations {
            let found = flows.iter().find(|f| f.verdict == *verdict && matches(f));
            let seen: Vec<&str> = flows
                .iter()
                .filter(|f| matches(f))
                .map(|f| f.verdict.as_str())
                .collect();
            // The agent names both ends from the (stand-in) Kubernetes API.
            let client = objects::pod_name(what.split(' ').next().unwrap_or_default());
            if let Some(found) = found {
                let names = format!("{} -> {}", found.src_name, found.dst_name);
                if found.src_name.ends_with(&format!("/{client}")) && !found.dst_name.is_empty() {
                    println!("  [ok ] {verdict:<12} {what}: {names}");
                } else {
                    println!(
                        "  [BAD] {verdict:<12} {what}: named {names:?}, expected {client} -> a pod or Service"
                    );
                    missing.push(format!("{verdict} {what} (names)"));
                }
            } else {
                println!("  [BAD] {verdict:<12} {what}: not found (verdicts for it: {seen:?})");
                missing.push(format!("{verdict} {what}"));
            }
        }
        Ok(missing)
    }
}

/// Whether a verdict belongs to an incident.
type Matcher = Box<dyn Fn(&Flow) -> bool>;

/// The parts of a Verdict (DESIGN.md, HTTP API) the demo checks.
struct Flow {
    verdict: String,
    /// `namespace/pod`, or empty.
    src_name: String,
    /// `namespace/service`, else `namespace/pod`, or empty.
    dst_name: String,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    dst_port: Option<u64>,
    qname: Option<String>,
}

impl Flow {
    fn from_json(v: &Value) -> Flow {
        let ip = |key: &str| v["flow"][key].as_str().and_then(|s| s.parse().ok());
        let name = |end: &Value, keys: &[&str]| {
            let namespace = end["namespace"].as_str().unwrap_or_default();
            keys.iter()
                .find_map(|key| end[key].as_str())
                .map(|name| format!("{namespace}/{name}"))
                .unwrap_or_default()
        };
        Flow {
            verdict: v["verdict"].as_str().unwrap_or_default().to_owned(),
            src_name: name(&v["src"], &["pod"]),
            dst_name: name(&v["dst"], &["service", "pod"]),
            src: ip("src_ip"),
            dst: ip("dst_ip"),
            dst_port: v["flow"]["dst_port"].as_u64(),
            qname: v["dns"]["qname"].as_str().map(str::to_owned),
        }
    }

    fn to(&self, ip: IpAddr, port: u16) -> bool {
        self.dst == Some(ip) && self.dst_port == Some(u64::from(port))
    }

    fn qname_starts(&self, prefix: &str) -> bool {
        self.qname.as_deref().is_some_and(|q| q.starts_with(prefix))
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

/// Runs a client program; (success, trimmed stdout, or stderr when it failed).
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

/// A lock on `target/netprobe-demo/demo.lock`, which the kernel releases when its holder
/// dies, even by SIGKILL: held, it proves no other demo is running.
fn hold_demo_lock() -> Result<File> {
    let dir = util::workspace_root().join("target").join("netprobe-demo");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `cargo xtask demo` is running (it holds {}): stop it first (Ctrl-C)",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// probe-agent, started as a child; stopped with SIGTERM on drop.
struct Agent {
    bin: PathBuf,
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

impl Agent {
    fn start(bin: &Path, node: &Node, listen: SocketAddr, kubeconfig: &Path) -> Result<Agent> {
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
            .arg("--kubeconfig")
            .arg(kubeconfig)
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

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Fails, with the end of its log, if the agent has exited.
    fn ensure_alive(&mut self) -> Result<()> {
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
    fn wait_ready(&mut self, interrupted: &AtomicBool) -> Result<()> {
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

impl Drop for Agent {
    fn drop(&mut self) {
        if !exec::terminate(&mut self.child, Duration::from_secs(10)) {
            eprintln!("the agent did not stop within 10 s of SIGTERM: killed it");
        }
    }
}

/// A plain HTTP/1.0 GET (the demo only talks to the agent on loopback): (status, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)
        .with_context(|| format!("reading GET {path}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: not an HTTP response: {head:?}"))?;
    Ok((status, body.to_owned()))
}
