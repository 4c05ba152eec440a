//! `cargo xtask demo`: a simulated node with a few pods, the agent watching it, and the
//! catalog's incidents (`lab::incidents`) played with real tools, then the verdicts the
//! agent gave them, checked against the catalog.

use std::{
    fs::File,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lab::{
    self, Node, exec,
    incidents::{self, Cluster},
    kube_stand_in::KubeStandIn,
};
use serde_json::Value;

use crate::{build, toolchain, util};

mod agent;
mod play;
mod verdicts;

use agent::Agent;
pub(crate) use agent::http_get;

/// Namespaces are `demo-node`, `demo-checkout`, ...: short enough to type by hand.
const PREFIX: &str = "demo";
const SYN_TIMEOUT: Duration = Duration::from_secs(3);
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
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
    print_cluster(&node);
    // The Kubernetes API the agent names flows from and diagnoses them with: a stand-in
    // serving the demo's Namespaces, Pods, Services, EndpointSlices and NetworkPolicies.
    let kube_api = KubeStandIn::start_in_netns(Some(node.netns()))?;
    let kube_objects = incidents::objects(&node);
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
    let outcomes = play::play(&node, &cluster, with_agent, &mut || alive(&mut agent))?;
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
    let missing = verdicts::check_verdicts(&agent, &cluster)?;
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

/// The node's pods and the Services in front of them.
fn print_cluster(node: &Node) {
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
    println!("\n  {}", Cluster::services_summary());
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
        checkout = cluster.pod("checkout").map_or("", |p| p.netns.as_str()),
    );
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
