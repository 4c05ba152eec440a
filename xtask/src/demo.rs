//! `cargo xtask demo`: a simulated node with a few pods, the agent watching it, and the
//! incidents of docs/verdicts.md played with real tools, then the verdicts the agent gave them.

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
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
const INVENTORY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const LEDGER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const LEGACY_DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
/// payment's port whose server closes each connection without reading it (reset).
const RESET_PORT: u16 = 8081;
/// payment's port that the node's firewall rejects (ICMP port unreachable).
const REJECTED_PORT: u16 = 9100;
/// A name the SERVFAIL server is asked for.
const CORP_NAME: &str = "ledger.corp.example";
/// A name outside the cluster (the lab's DNS server knows it): a pod finds it after its
/// three search domains answered NXDOMAIN.
const EXTERNAL_NAME: &str = "api.example.com";
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// How long nothing happens before the node-wide outage, so that the agent, which weighs
/// the pod pairs of the last 10 s, does not mix it up with the incidents before it: their
/// pairs must have left that window when the outage's SYNs time out (3 s after sending).
const OUTAGE_QUIET: Duration = Duration::from_secs(8);

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
    // The Kubernetes API the agent names flows from and diagnoses them with: a stand-in
    // serving the demo's Namespaces, Pods, Services, EndpointSlices and NetworkPolicies.
    let kube_api = KubeStandIn::start_in_netns(Some(node.netns()))?;
    let kube_objects = objects::objects(&node);
    for object in &kube_objects {
        kube_api.apply(object.clone())?;
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
            agent.wait_synced(&kube_objects, &interrupted)?;
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
    let played = Instant::now();
    let with_agent = agent.is_some();
    let outcomes = cluster.play(&node, with_agent, &mut || alive(&mut agent))?;
    let lab_ok = outcomes.iter().all(|o| o.as_expected);

    let Some(mut agent) = agent else {
        println!();
        ensure!(lab_ok, "the lab did not behave as expected (see above)");
        println!("The lab behaves as expected (no agent was started: --no-agent).");
        return Ok(());
    };

    // Every incident waited for its client to give up, past the agent's SYN and DNS
    // timeouts: what is left is the agent's sweep (every 100 ms) and its node evaluation.
    let wait = Duration::from_secs(1);
    println!(
        "\nThe incidents took {:.0} s; waiting {} s for the agent's last verdicts...",
        played.elapsed().as_secs_f64(),
        wait.as_secs(),
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
    let events = kube_api.events();
    print_events(&events);

    if args.no_wait {
        ensure!(
            !events.is_empty(),
            "the agent wrote no Kubernetes Event (--events) for the failures"
        );
    }

    if args.no_wait {
        observe?;
        ensure!(lab_ok, "the lab did not behave as expected (see above)");
        ensure!(
            missing.is_empty(),
            "the agent gave no verdict or the wrong cause for: {}",
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

/// The Events the agent wrote, as `kubectl describe pod` lists them.
fn print_events(events: &[Value]) {
    println!(
        "\n== Kubernetes Events the agent wrote (`--events`; `kubectl describe pod` shows them)\n"
    );
    for event in events {
        let field = |path: &[&str]| {
            path.iter()
                .fold(event, |value, key| &value[*key])
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        println!(
            "{}/{}  {}  {}  {}, {}  {}",
            field(&["regarding", "namespace"]),
            field(&["regarding", "name"]),
            field(&["type"]),
            field(&["reason"]),
            field(&["reportingController"]),
            field(&["reportingInstance"]),
            field(&["note"]),
        );
    }
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
         curl -s 'localhost:{port}/v1/verdicts?cause=network_policy,no_ready_endpoints'{pretty}\n  \
         curl -s 'localhost:{port}/v1/verdicts?cause=node_datapath'{pretty}   # the rows the node verdict folds\n  \
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
    cache: Pod,
    worker: Pod,
    // Kept alive for the demo's lifetime (they stop when dropped).
    _dns: DnsServer,
    _servers: Vec<Listener>,
    _stubs: Vec<Stub>,
}

/// What a client saw in one incident, and whether that is what the incident should cause.
struct Outcome {
    as_expected: bool,
}

/// The incidents' outcomes, printed as they come.
#[derive(Default)]
struct Plays {
    outcomes: Vec<Outcome>,
}

impl Plays {
    fn report(&mut self, title: &str, expect: &str, saw: String, as_expected: bool) {
        let mark = if as_expected { "ok " } else { "BAD" };
        println!("  [{mark}] {title}\n        saw: {saw}\n        netprobe should say: {expect}");
        self.outcomes.push(Outcome { as_expected });
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

/// A misbehaving server inside a pod, on a thread of its own until dropped.
struct Stub {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    fn spawn(name: String, serve: impl FnOnce(&AtomicBool) + Send + 'static) -> Result<Stub> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || serve(&stop))?
        };
        Ok(Stub {
            stop,
            thread: Some(thread),
        })
    }

    /// Accepts on `port` of `pod` and closes each connection once its request arrived,
    /// without reading it: the kernel answers with a RST ("Connection reset by peer").
    fn reset_tcp(pod: &Pod, port: u16) -> Result<Stub> {
        let socket = pod
            .in_netns(move || TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))
            .with_context(|| format!("listening on port {port} in pod {}", pod.name))?;
        // Polled so that drop can stop it without a wake-up connection.
        socket.set_nonblocking(true)?;
        Stub::spawn(format!("reset :{port}"), move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match socket.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = conn.peek(&mut [0; 1]);
                        drop(conn);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
    }

    /// A DNS server on port 53 of `pod` answering SERVFAIL to every query, as one whose
    /// upstream is gone does.
    fn servfail_dns(pod: &Pod) -> Result<Stub> {
        let socket = pod
            .in_netns(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53)))
            .with_context(|| format!("listening on udp/53 in pod {}", pod.name))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Stub::spawn("servfail :53".into(), move |stop| {
            let mut buf = [0; 1500];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = servfail(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        })
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The SERVFAIL response to a DNS query: its header (answer, authority and additional
/// sections empty) and question; `None` for what is not a query.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question's name: labels up to the root, then type and class.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        end += len;
    }
    end += 4;
    let mut reply = query.get(..end)?.to_vec();
    // QR, the query's opcode and RD; RA, rcode 2 (SERVFAIL); one question, nothing else.
    reply[2] = 0x80 | (query[2] & 0x79);
    reply[3] = 0x80 | 2;
    reply[4..6].copy_from_slice(&[0, 1]);
    reply[6..12].fill(0);
    Some(reply)
}

/// The node-wide outage: every forwarded TCP packet dropped, in a table of its own so
/// that removing it leaves the incidents' rules alone.
const DATAPATH_TABLE: &str = "netprobe_demo_datapath";

impl Cluster {
    fn create(node: &mut Node) -> Result<Cluster> {
        let kube_dns = node.add_pod("kube-dns", "kube-system", 2)?;
        let payment = node.add_pod("payment", "production", 3)?;
        let db = node.add_pod("db", "production", 4)?;
        let checkout = node.add_pod("checkout", "production", 5)?;
        let batch = node.add_pod("batch", "jobs", 6)?;
        let cache = node.add_pod("cache", "production", 7)?;
        let worker = node.add_pod("worker", "production", 8)?;
        let legacy_dns = node.add_pod("legacy-dns", "infra", 9)?;

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
                // A Service with no ready endpoints: it resolves, but nothing answers behind it.
                (
                    "orders.production.svc.cluster.local",
                    IpAddr::V4(ORDERS_VIP),
                ),
                (
                    "inventory.production.svc.cluster.local",
                    IpAddr::V4(INVENTORY_VIP),
                ),
                ("postgres.production.svc.cluster.local", IpAddr::V4(db.ipv4)),
                ("redis.production.svc.cluster.local", IpAddr::V4(cache.ipv4)),
                (
                    "ledger.production.svc.cluster.local",
                    IpAddr::V4(LEDGER_VIP),
                ),
                // A name outside the cluster: found only after the search path.
                (EXTERNAL_NAME, IpAddr::V4(EXTERNAL_IP)),
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
        let servers = vec![
            payment.listen_tcp(8080)?,
            db.listen_tcp(5432)?,
            cache.listen_tcp(6379)?,
            worker.listen_tcp(7000)?,
        ];
        let stubs = vec![
            Stub::reset_tcp(&payment, RESET_PORT)?,
            Stub::servfail_dns(&legacy_dns)?,
        ];
        node.add_service(
            Proto::Udp,
            IpAddr::V4(LEGACY_DNS_VIP),
            53,
            SocketAddr::new(IpAddr::V4(legacy_dns.ipv4), 53),
        )?;
        // ledger's pod is on another node: from here, the uplink (which discards all).
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(LEDGER_VIP),
            80,
            SocketAddr::new(IpAddr::V4(objects::LEDGER_POD_IP), 8080),
        )?;
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(PAYMENT_VIP),
            80,
            SocketAddr::new(IpAddr::V4(payment.ipv4), 8080),
        )?;
        // inventory's targetPort is 9091, where payment does not listen.
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(INVENTORY_VIP),
            80,
            SocketAddr::new(IpAddr::V4(payment.ipv4), 9091),
        )?;
        // orders has no ready endpoint: kube-proxy rejects its SYNs.
        node.reject_service(Proto::Tcp, IpAddr::V4(ORDERS_VIP), 80)?;

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
             orders {ORDERS_VIP}:80 (its one pod {orders} not ready: rejected),\n            \
             inventory {INVENTORY_VIP}:80 -> payment:9091 (targetPort 9091), postgres -> db :5432, redis -> cache :6379,\n            \
             ledger {LEDGER_VIP}:80 -> {ledger} {ledger_ip}:8080 on node {other} (not simulated: discarded),\n            \
             infra/legacy-dns {LEGACY_DNS_VIP}:53 -> legacy-dns pod (answers SERVFAIL)\n  \
             NetworkPolicies: production/db-allow-api (db admits app=api on 5432), jobs/default-deny-egress",
            dns = lab::DEFAULT_DNS,
            orders = objects::ORDERS_POD,
            ledger = objects::LEDGER_POD,
            ledger_ip = objects::LEDGER_POD_IP,
            other = objects::OTHER_NODE,
        );
        Ok(Cluster {
            payment,
            db,
            checkout,
            batch,
            cache,
            worker,
            _dns: dns,
            _servers: servers,
            _stubs: stubs,
        })
    }

    /// The node-wide outage's connections: (client, server, port), fresh pod pairs that
    /// no other incident uses.
    fn outage_pairs(&self) -> [(&Pod, &Pod, u16); 5] {
        [
            (&self.checkout, &self.payment, 8080),
            (&self.worker, &self.payment, 8080),
            (&self.worker, &self.cache, 6379),
            (&self.db, &self.payment, 8080),
            (&self.db, &self.cache, 6379),
        ]
    }

    /// Plays every incident; `alive` is called between them (agent still up, no Ctrl-C).
    /// `with_agent`: wait before the node-wide outage so that the agent does not mix it up
    /// with the incidents before it (it compares the pod pairs of the last 10 s).
    fn play(
        &self,
        node: &Node,
        with_agent: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Outcome>> {
        let mut plays = Plays::default();
        let (checkout, batch) = (&self.checkout, &self.batch);
        let to = |pod: &Pod, port: u16| SocketAddr::new(IpAddr::V4(pod.ipv4), port);
        let hang = SYN_TIMEOUT + Duration::from_secs(1);
        let timed_out =
            |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::TimedOut);

        // The incidents that hang are played at once, in the background, while the quick
        // ones run: the demo waits for the timeouts once.
        alive()?;
        println!(
            "  (in the background, at once: checkout -> db, cache, worker and ledger; the lookups of batch and worker)\n"
        );
        // NetworkPolicy production/db-allow-api, enforced by the node: checkout may not
        // reach the database.
        node.drop_traffic(
            Proto::Tcp,
            Some(IpAddr::V4(checkout.ipv4)),
            Some(IpAddr::V4(self.db.ipv4)),
            Some(5432),
        )?;
        // A node firewall rule between checkout and cache, no policy at all.
        node.drop_traffic(
            Proto::Tcp,
            Some(IpAddr::V4(checkout.ipv4)),
            Some(IpAddr::V4(self.cache.ipv4)),
            Some(6379),
        )?;
        // worker's own firewall drops what reaches its port: its server never sees a SYN.
        drop_in_pod(&self.worker, 7000)?;
        // jobs/default-deny-egress, enforced by the node: batch's DNS queries are dropped.
        node.drop_traffic(Proto::Udp, Some(IpAddr::V4(batch.ipv4)), None, Some(53))?;
        // A node firewall rule, no policy: worker's DNS queries are dropped too.
        node.drop_traffic(
            Proto::Udp,
            Some(IpAddr::V4(self.worker.ipv4)),
            None,
            Some(53),
        )?;
        std::thread::scope(|scope| -> Result<()> {
            let policy = scope.spawn(|| checkout.connect_tcp(to(&self.db, 5432), hang));
            let between = scope.spawn(|| checkout.connect_tcp(to(&self.cache, 6379), hang));
            let silent = scope.spawn(|| checkout.connect_tcp(to(&self.worker, 7000), hang));
            let remote = scope
                .spawn(|| checkout.connect_tcp(SocketAddr::new(IpAddr::V4(LEDGER_VIP), 80), hang));
            // The libc resolver would retry for more than a minute; stop it after its
            // first tries.
            let give_up = DNS_TIMEOUT + Duration::from_secs(1);
            let lookup = |pod: &Pod, name: &str| -> Result<KillOnDrop> {
                let child = pod
                    .command("getent")
                    .args(["hosts", name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("running getent in pod {}", pod.name))?;
                Ok(KillOnDrop(child))
            };
            let mut lookups = [
                lookup(batch, "payment-service")?,
                lookup(&self.worker, "ledger")?,
            ];
            let started = Instant::now();

            self.play_quick(node, &mut plays, alive)?;

            let mut ended = [None, None];
            while started.elapsed() <= give_up && ended.iter().any(Option::is_none) {
                for (lookup, ended) in lookups.iter_mut().zip(ended.iter_mut()) {
                    if ended.is_none() {
                        *ended = lookup.0.try_wait()?;
                    }
                }
                alive()?;
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(lookups);
            let hung = |status: Option<std::process::ExitStatus>| match status {
                None => format!("no answer after {} s (gave up)", give_up.as_secs()),
                Some(s) => format!("getent ended early ({s})"),
            };
            let joined = |handle: std::thread::ScopedJoinHandle<'_, std::io::Result<()>>| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the client thread panicked")))
            };
            let r = joined(policy);
            plays.report(
                &format!(
                    "policy drop: checkout connects to db {}:5432 (NetworkPolicy production/db-allow-api; nft drop in the node)",
                    self.db.ipv4
                ),
                "TIMEOUT [network_policy] naming production/db-allow-api",
                describe(&r),
                timed_out(&r),
            );
            let r = joined(between);
            plays.report(
                &format!(
                    "dropped between: checkout connects to cache {}:6379 (nft drop in the node, no policy)",
                    self.cache.ipv4
                ),
                "TIMEOUT [dropped_between] (both pods on this node)",
                describe(&r),
                timed_out(&r),
            );
            let r = joined(silent);
            plays.report(
                &format!(
                    "server silent: checkout connects to worker {}:7000 (worker's own nft drops port 7000)",
                    self.worker.ipv4
                ),
                "TIMEOUT [server_silent] (the SYN reached worker's veth)",
                describe(&r),
                timed_out(&r),
            );
            let r = joined(remote);
            plays.report(
                &format!(
                    "no answer: checkout connects to ledger {LEDGER_VIP}:80 (its pod is on node {})",
                    objects::OTHER_NODE
                ),
                "TIMEOUT [no_answer] (only the client's side is on this node)",
                describe(&r),
                timed_out(&r),
            );
            plays.report(
                "DNS blocked by policy: batch$ getent hosts payment-service (jobs/default-deny-egress; nft drops udp/53 from batch)",
                "DNS_TIMEOUT [network_policy] naming jobs/default-deny-egress",
                hung(ended[0]),
                ended[0].is_none(),
            );
            plays.report(
                "DNS not answered: worker$ getent hosts ledger (nft drops udp/53 from worker, no policy)",
                "DNS_TIMEOUT [dns_no_answer]",
                hung(ended[1]),
                ended[1].is_none(),
            );
            Ok(())
        })?;

        // Healthy. The short name, as an application in namespace "production" would use:
        // the first search domain answers, so the lookup is one query per address family.
        alive()?;
        let (ok, out) = output(&mut curl(checkout, "http://payment-service/"));
        plays.report(
            "healthy: checkout$ curl http://payment-service/",
            "DNS OK (payment-service.production.svc.cluster.local) + TCP OK to 10.96.0.20:80, no cause",
            out.clone(),
            ok && out == "HTTP 200",
        );
        alive()?;
        let url = format!("http://[{}]:8080/", self.payment.ipv6);
        let (ok, out) = output(&mut curl(checkout, &url));
        plays.report(
            &format!("healthy over IPv6: checkout$ curl {url}"),
            "TCP OK (IPv6), no cause",
            out.clone(),
            ok && out == "HTTP 200",
        );

        if with_agent {
            // The agent weighs the pod pairs of the last 10 s: the pairs above must have
            // aged out by the time the outage's SYNs time out (3 s after they are sent).
            let quiet = OUTAGE_QUIET;
            println!(
                "\n  (waiting {} s: the node-wide outage comes after the pairs above have left the agent's 10 s window)\n",
                quiet.as_secs()
            );
            let until = Instant::now() + quiet;
            while Instant::now() < until {
                alive()?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }

        // The node's datapath down: every forwarded TCP packet dropped while fresh pod
        // pairs connect, from several clients to several servers.
        alive()?;
        node.nft(&format!(
            "add table inet {DATAPATH_TABLE}\n\
             add chain inet {DATAPATH_TABLE} forward {{ type filter hook forward priority -10; policy accept; }}\n\
             add rule inet {DATAPATH_TABLE} forward meta l4proto tcp drop\n"
        ))?;
        let pairs = self.outage_pairs();
        let results: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pairs
                .iter()
                .map(|(client, server, port)| {
                    scope.spawn(move || client.connect_tcp(to(server, *port), hang))
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
        // Back up, so that the API stays explorable.
        node.nft(&format!(
            "add table inet {DATAPATH_TABLE}\ndelete table inet {DATAPATH_TABLE}\n"
        ))?;
        let failed = results.iter().filter(|r| timed_out(r)).count();
        let names: Vec<String> = pairs
            .iter()
            .map(|(c, s, port)| format!("{} -> {}:{port}", c.name, s.name))
            .collect();
        plays.report(
            &format!(
                "node datapath down: nft drops all forwarded TCP while {} connect at once",
                names.join(", ")
            ),
            "one node-level TIMEOUT [node_datapath]; the flows folded under it",
            format!("{failed} of {} connections timed out", pairs.len()),
            failed == pairs.len(),
        );
        Ok(plays.outcomes)
    }

    /// The incidents that end at once: refused, rejected, not found, found late.
    fn play_quick(
        &self,
        node: &Node,
        plays: &mut Plays,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let checkout = &self.checkout;
        let refused = |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::ConnectionRefused);

        alive()?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(self.payment.ipv4), 9090),
            Duration::from_secs(3),
        );
        plays.report(
            &format!(
                "nothing listens: checkout connects to payment {}:9090",
                self.payment.ipv4
            ),
            "REFUSED [nothing_listening] naming the pod and the ports it declares",
            describe(&r),
            refused(&r),
        );

        alive()?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(ORDERS_VIP), 80),
            Duration::from_secs(3),
        );
        plays.report(
            &format!("Service without endpoints: checkout connects to orders {ORDERS_VIP}:80"),
            "UNREACHABLE [no_ready_endpoints] (ICMP port unreachable from kube-proxy's reject)",
            describe(&r),
            refused(&r),
        );

        alive()?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(INVENTORY_VIP), 80),
            Duration::from_secs(3),
        );
        plays.report(
            &format!(
                "port mismatch: checkout connects to inventory {INVENTORY_VIP}:80 (targetPort 9091, payment listens on 8080)"
            ),
            "REFUSED [target_port_mismatch]",
            describe(&r),
            refused(&r),
        );

        // The node's firewall rejects payment's metrics port.
        alive()?;
        node.reject_service(Proto::Tcp, IpAddr::V4(self.payment.ipv4), REJECTED_PORT)?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(self.payment.ipv4), REJECTED_PORT),
            Duration::from_secs(3),
        );
        plays.report(
            &format!(
                "firewall reject: checkout connects to payment {}:{REJECTED_PORT} (the node rejects it, ICMP port unreachable)",
                self.payment.ipv4
            ),
            "UNREACHABLE [destination_unreachable] naming the pod",
            describe(&r),
            refused(&r),
        );

        alive()?;
        let url = format!("http://{}:{RESET_PORT}/", self.payment.ipv4);
        let (ok, out) = output(&mut curl(checkout, &url));
        plays.report(
            &format!(
                "connection reset: checkout$ curl {url} (payment's server there closes the connection without reading it)"
            ),
            "RESET [connection_reset]",
            out.clone(),
            !ok && out.contains("reset"),
        );

        alive()?;
        let (ok, out) = output(checkout.command("dig").args([
            "+tries=1",
            "+time=3",
            &format!("@{LEGACY_DNS_VIP}"),
            CORP_NAME,
        ]));
        let status = out
            .lines()
            .find_map(|line| line.split("status: ").nth(1))
            .map(|rest| rest.split(',').next().unwrap_or(rest).to_owned());
        plays.report(
            &format!(
                "DNS server failing: checkout$ dig @{LEGACY_DNS_VIP} {CORP_NAME} (infra/legacy-dns answers SERVFAIL)"
            ),
            "SERVFAIL [dns_server_error]",
            match &status {
                Some(status) => format!("status: {status}"),
                None => out.clone(),
            },
            ok && status.as_deref() == Some("SERVFAIL"),
        );

        alive()?;
        let (ok, out) = output(checkout.command("getent").args(["hosts", "paymnt-service"]));
        plays.report(
            "wrong Service name: checkout$ getent hosts paymnt-service",
            "NXDOMAIN [name_not_found] ... did you mean payment-service?; the search path's names OK [search_path_expansion]",
            if ok { out.clone() } else { "not found".into() },
            !ok,
        );

        alive()?;
        let (ok, out) = output(checkout.command("getent").args(["hosts", EXTERNAL_NAME]));
        plays.report(
            &format!(
                "search path: checkout$ getent hosts {EXTERNAL_NAME} (found after 3 search domains)"
            ),
            "OK; the search path's names OK [search_path_expansion], no failure",
            out.split_whitespace().collect::<Vec<_>>().join(" "),
            ok && out.starts_with(&EXTERNAL_IP.to_string()),
        );
        Ok(())
    }

    /// Looks for each incident's verdict and cause in `/v1/verdicts`; prints the result
    /// and returns what is missing or wrong.
    fn check_verdicts(&self, agent: &Agent) -> Result<Vec<String>> {
        let get = |query: &str| -> Result<Value> {
            let path = format!("/v1/verdicts?limit=10000{query}");
            let (status, body) = http_get(agent.listen, &path)?;
            ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
            serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
        };
        let flows_of = |json: &Value| -> Result<Vec<Flow>> {
            Ok(json["verdicts"]
                .as_array()
                .context("GET /v1/verdicts: no \"verdicts\" array")?
                .iter()
                .map(Flow::from_json)
                .collect())
        };
        // Every flow, the ones folded under a node-level verdict included.
        let expanded = get("&expand=true")?;
        let flows = flows_of(&expanded)?;
        let listed = get("")?;
        let node_verdicts = listed["node"].as_array().cloned().unwrap_or_default();

        let c4 = IpAddr::V4(self.checkout.ipv4);
        let c6 = IpAddr::V6(self.checkout.ipv6);
        let v4 = |pod: &Pod| IpAddr::V4(pod.ipv4);
        let from = |pod: &Pod| IpAddr::V4(pod.ipv4);
        let payment_name = objects::pod_name("payment");
        let mut expectations: Vec<Expect> = vec![
            Expect::new("OK", None, "checkout resolves payment-service", {
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_is("payment-service.production.svc.cluster.local."))
            }),
            Expect::new("OK", None, "checkout -> payment-service:80", {
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(PAYMENT_VIP), 80))
            }),
            Expect::new("OK", None, "checkout -> payment over IPv6", {
                let p6 = IpAddr::V6(self.payment.ipv6);
                Box::new(move |f: &Flow| f.src == Some(c6) && f.to(p6, 8080))
            }),
            Expect::new(
                "TIMEOUT",
                Some("network_policy"),
                "checkout -> db:5432",
                {
                    let db = v4(&self.db);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(db, 5432))
                },
            )
            .reason_has("NetworkPolicy production/db-allow-api"),
            Expect::new(
                "REFUSED",
                Some("nothing_listening"),
                "checkout -> payment:9090",
                {
                    let p = v4(&self.payment);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(p, 9090))
                },
            )
            .reason_has(&format!("nothing listens on port 9090 of pod production/{payment_name}"))
            .reason_has("8080/TCP (http)"),
            Expect::new(
                "UNREACHABLE",
                Some("no_ready_endpoints"),
                "checkout -> orders:80",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(ORDERS_VIP), 80)),
            )
            .reason_has(&format!(
                "Service production/orders has no ready endpoints: its selector app=orders matches 1 pod, 1 not ready ({})",
                objects::ORDERS_POD
            )),
            Expect::new(
                "REFUSED",
                Some("target_port_mismatch"),
                "checkout -> inventory:80",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(INVENTORY_VIP), 80)),
            )
            .reason_has(&format!(
                "Service production/inventory port 80 sends to targetPort 9091, but pod {payment_name} declares 8080/TCP (http)"
            )),
            Expect::new(
                "NXDOMAIN",
                Some("name_not_found"),
                "checkout resolves paymnt-service",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_starts("paymnt-service.")),
            )
            .reason_has("did you mean payment-service?"),
            Expect::new(
                "OK",
                Some("search_path_expansion"),
                "checkout resolves paymnt-service (search path)",
                Box::new(move |f: &Flow| {
                    f.src == Some(c4) && f.qname_starts("paymnt-service.production.svc.cluster.local.")
                }),
            ),
            Expect::new(
                "OK",
                None,
                &format!("checkout resolves {EXTERNAL_NAME}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_is(&format!("{EXTERNAL_NAME}."))),
            ),
            Expect::new(
                "OK",
                Some("search_path_expansion"),
                &format!("checkout resolves {EXTERNAL_NAME} (search path)"),
                Box::new(move |f: &Flow| {
                    f.src == Some(c4)
                        && f.qname_starts(&format!("{EXTERNAL_NAME}.production.svc.cluster.local."))
                }),
            ),
            Expect::new(
                "DNS_TIMEOUT",
                Some("network_policy"),
                "batch resolves payment-service",
                {
                    let b = from(&self.batch);
                    Box::new(move |f: &Flow| f.src == Some(b))
                },
            )
            .reason_has("NetworkPolicy jobs/default-deny-egress"),
            Expect::new(
                "TIMEOUT",
                Some("dropped_between"),
                "checkout -> cache:6379",
                {
                    let cache = v4(&self.cache);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(cache, 6379))
                },
            )
            .reason_has(&format!("both ends are on node {}", objects::NODE)),
            Expect::new(
                "TIMEOUT",
                Some("server_silent"),
                "checkout -> worker:7000",
                {
                    let worker = v4(&self.worker);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(worker, 7000))
                },
            )
            .reason_has(&format!(
                "the SYN reached pod production/{}",
                objects::pod_name("worker")
            )),
        ];
        let payment = v4(&self.payment);
        expectations.extend([
            Expect::new(
                "TIMEOUT",
                Some("no_answer"),
                "checkout -> ledger:80",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(LEDGER_VIP), 80)),
            )
            .reason_has("only the client side was seen"),
            Expect::new(
                "DNS_TIMEOUT",
                Some("dns_no_answer"),
                "worker resolves ledger",
                {
                    let w = from(&self.worker);
                    Box::new(move |f: &Flow| f.src == Some(w) && f.qname.is_some())
                },
            )
            .reason_has("kube-system/kube-dns (10.96.0.10) never answered"),
            Expect::new(
                "UNREACHABLE",
                Some("destination_unreachable"),
                &format!("checkout -> payment:{REJECTED_PORT}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(payment, REJECTED_PORT)),
            )
            .reason_has(&format!(
                "pod production/{payment_name} is unreachable on port {REJECTED_PORT}"
            )),
            Expect::new(
                "RESET",
                Some("connection_reset"),
                &format!("checkout -> payment:{RESET_PORT}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(payment, RESET_PORT)),
            ),
            Expect::new(
                "SERVFAIL",
                Some("dns_server_error"),
                &format!("checkout resolves {CORP_NAME}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_starts(CORP_NAME)),
            )
            .reason_has(&format!("infra/legacy-dns ({LEGACY_DNS_VIP})")),
        ]);
        for (client, server, port) in self.outage_pairs() {
            let (c, s) = (from(client), v4(server));
            expectations.push(Expect::new(
                "TIMEOUT",
                Some("node_datapath"),
                &format!("{} -> {}:{port} (outage)", client.name, server.name),
                Box::new(move |f: &Flow| f.src == Some(c) && f.to(s, port)),
            ));
        }

        println!(
            "\n== Did every incident get its verdict and cause? ({} verdicts tracked)\n",
            flows.len()
        );
        let mut missing = Vec::new();
        for expect in &expectations {
            if let Err(problem) = expect.check(&flows) {
                missing.push(problem);
            }
        }

        // The node-level verdict, and the rows folded under it.
        let node = node_verdicts.iter().find(|n| n["cause"] == "node_datapath");
        match node {
            Some(n) => println!(
                "  [ok ] {} node_datapath: {}\n        node {}: {} failing pairs of {}, from {} pods, {} flows; next: {}",
                n["verdict"].as_str().unwrap_or_default(),
                n["reason"].as_str().unwrap_or_default(),
                objects::NODE,
                n["failing_pairs"],
                n["pairs"],
                n["sources"],
                n["flows"],
                n["next"].as_str().unwrap_or("-"),
            ),
            None => {
                println!(
                    "  [BAD] no node-level verdict node_datapath: \"node\" is {node_verdicts:?}"
                );
                missing.push("node-level node_datapath verdict".into());
            }
        }
        let listed_flows = flows_of(&listed)?;
        let unfolded = listed_flows
            .iter()
            .filter(|f| f.cause.as_deref() == Some("node_datapath"))
            .count();
        if unfolded > 0 {
            println!("  [BAD] {unfolded} node_datapath rows listed without expand=true");
            missing.push("node_datapath rows not folded".into());
        }

        // Nothing that worked has a failure cause; every failure has one.
        for f in &flows {
            let cause = f.cause.as_deref();
            let problem = match (f.verdict.as_str(), cause) {
                ("OK" | "PENDING", None | Some("search_path_expansion")) => None,
                ("OK" | "PENDING", Some(c)) => Some(format!("a healthy flow with cause {c}")),
                (_, Some("search_path_expansion")) => {
                    Some("a search-path expansion counted as a failure".to_string())
                }
                (_, None) => Some("a failure without a cause".to_string()),
                _ => None,
            };
            if let Some(problem) = problem {
                println!(
                    "  [BAD] {problem}: {} {} -> {} {:?}: {}",
                    f.verdict, f.src_name, f.dst_name, f.qname, f.reason
                );
                missing.push(problem);
            }
        }
        let external_failures = flows
            .iter()
            .filter(|f| f.qname_starts(EXTERNAL_NAME) && f.verdict != "OK")
            .count();
        if external_failures > 0 {
            println!(
                "  [BAD] {EXTERNAL_NAME}: {external_failures} failures (its search path is no failure)"
            );
            missing.push(format!("{EXTERNAL_NAME} counted as failing"));
        }
        Ok(missing)
    }
}

/// Drops TCP to `port` inside `pod` (its own firewall), before its server sees the SYN.
fn drop_in_pod(pod: &Pod, port: u16) -> Result<()> {
    let rules = format!(
        "add table inet pod_firewall\n\
         add chain inet pod_firewall input {{ type filter hook input priority 0; policy accept; }}\n\
         add rule inet pod_firewall input tcp dport {port} drop\n"
    );
    exec::run_with_stdin(
        pod.command(&exec::tool("nft").to_string_lossy())
            .args(["-f", "-"]),
        &rules,
    )
    .with_context(|| format!("loading nftables rules in pod {}", pod.name))?;
    Ok(())
}

/// Whether a verdict belongs to an incident.
type Matcher = Box<dyn Fn(&Flow) -> bool>;

/// The verdict and cause an incident must get.
struct Expect {
    verdict: &'static str,
    cause: Option<&'static str>,
    what: String,
    /// Text the reason must contain.
    reason_has: Vec<String>,
    matches: Matcher,
}

impl Expect {
    fn new(
        verdict: &'static str,
        cause: Option<&'static str>,
        what: &str,
        matches: Matcher,
    ) -> Expect {
        Expect {
            verdict,
            cause,
            what: what.to_owned(),
            reason_has: Vec::new(),
            matches,
        }
    }

    fn reason_has(mut self, text: &str) -> Expect {
        self.reason_has.push(text.to_owned());
        self
    }

    /// Every flow of the incident with the expected verdict must have the cause and its
    /// words, and name its client (the `what`'s first word, a lab pod) and destination.
    fn check(&self, flows: &[Flow]) -> Result<(), String> {
        let verdict = self.verdict;
        let cause = self.cause.unwrap_or("-");
        let mine: Vec<&Flow> = flows.iter().filter(|f| (self.matches)(f)).collect();
        let found: Vec<&&Flow> = mine.iter().filter(|f| f.verdict == verdict).collect();
        let Some(first) = found.first() else {
            let seen: Vec<String> = mine
                .iter()
                .map(|f| format!("{} {}", f.verdict, f.cause.as_deref().unwrap_or("-")))
                .collect();
            println!(
                "  [BAD] {verdict} {cause}: {}: not found (verdicts for it: {seen:?})",
                self.what
            );
            return Err(format!("{verdict} {}", self.what));
        };
        let wrong = found.iter().find(|f| {
            f.cause.as_deref() != self.cause
                || !self.reason_has.iter().all(|text| f.reason.contains(text))
        });
        let client = objects::pod_name(self.what.split(' ').next().unwrap_or_default());
        let names = format!("{} -> {}", first.src_name, first.dst_name);
        let named = first.src_name.ends_with(&format!("/{client}")) && !first.dst_name.is_empty();
        let shown = |f: &Flow| match f.cause.as_deref() {
            Some(c) => format!("{} {c}: {}", f.verdict, f.reason),
            None => format!("{} (no cause): {}", f.verdict, f.reason),
        };
        if let Some(wrong) = wrong {
            println!(
                "  [BAD] {}\n        expected cause {cause}{}\n        {} ({names})",
                shown(wrong),
                if self.reason_has.is_empty() {
                    String::new()
                } else {
                    format!(" with {:?}", self.reason_has)
                },
                self.what
            );
            return Err(format!("{verdict} {cause} {}", self.what));
        }
        if !named {
            println!(
                "  [BAD] {}\n        {}: named {names:?}, expected {client} -> a pod or Service",
                shown(first),
                self.what
            );
            return Err(format!("{verdict} {} (names)", self.what));
        }
        let next = first
            .next
            .as_deref()
            .map(|n| format!("; next: {n}"))
            .unwrap_or_default();
        println!(
            "  [ok ] {}\n        {} ({names}){}{next}",
            shown(first),
            self.what,
            if found.len() > 1 {
                format!(", {} flows", found.len())
            } else {
                String::new()
            }
        );
        Ok(())
    }
}

/// The parts of a Verdict (docs/api.md, "JSON shapes") the demo checks.
struct Flow {
    verdict: String,
    cause: Option<String>,
    reason: String,
    next: Option<String>,
    /// `namespace/pod`, or empty.
    src_name: String,
    /// `namespace/pod`, else `namespace/service`, or empty.
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
        let text = |key: &str| v[key].as_str().map(str::to_owned);
        Flow {
            verdict: text("verdict").unwrap_or_default(),
            cause: text("cause"),
            reason: text("reason").unwrap_or_default(),
            next: text("next"),
            src_name: name(&v["src"], &["pod"]),
            dst_name: name(&v["dst"], &["pod", "service"]),
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

    fn qname_is(&self, name: &str) -> bool {
        self.qname.as_deref() == Some(name)
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

impl Agent {
    /// Waits until the agent knows every object the stand-in serves (its
    /// `netprobe_kube_objects{kind}` gauges): a cause is diagnosed once, when the flow
    /// fails, from what the agent knows then.
    fn wait_synced(&mut self, objects: &[Value], interrupted: &AtomicBool) -> Result<()> {
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
