//! `cargo xtask check-runtime` (root): the project's own image, run by a real container
//! runtime (podman with runc) as the DaemonSet says, watching real container networks.
//!
//! 1. `cargo xtask image` builds target/netprobe-image.tar; `podman load` loads it.
//! 2. The rendered DaemonSet's pod spec becomes `podman run` flags, field by field
//!    ([`pod_spec`]): host network, capabilities (drop ALL, add the three), read-only
//!    root, uid 0, no_new_privs, memory limit, CPU shares, env, args.
//! 3. Under the manifest's `RuntimeDefault`, which is podman's default profile here (as
//!    CRI-O's: bpf() only with CAP_SYS_ADMIN), the agent must fail, and say that
//!    seccomp refused bpf() and what to do.
//! 4. With deploy/components/seccomp rendered over the base (its `Localhost` profile,
//!    from a stand-in of the kubelet's seccomp directory), it must get ready and judge
//!    the traffic of busybox containers on a netavark bridge network and on a CNI `ptp`
//!    network (routed veths, as kindnet makes them): healthy, refused, dropped by a
//!    firewall in the server's namespace, NXDOMAIN, DNS blocked ([`plays`]), each with
//!    the counts a capture on the client's veth has ([`capture`]); its readiness and
//!    liveness probes must answer as the DaemonSet declares them.
//! 5. `podman stop`: the agent exits within the grace period and leaves no program
//!    loaded or attached ([`attached`]).
//!
//! Everything it makes (containers, networks, images, dnsmasq) is removed on every exit
//! path; a run that is killed leaves its containers to the next run, which removes them
//! first (every name carries the process id). Each wait polls for its condition within a
//! bound.

mod attached;
mod capture;
mod plays;
mod pod_spec;
mod podman;

use std::{
    net::{Ipv4Addr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use self::{
    plays::{API, wait_for},
    podman::{Backend, Podman},
};
use crate::{demo, image, manifests, toolchain, util};

/// Every name this task gives starts with it, then the process id.
const STALE_TAG: &str = "netprobe-rt";

/// What the agent must say when seccomp refuses bpf() (probe-agent's
/// `loader::seccomp::REFUSED`, in part).
const SECCOMP_MESSAGE: &[&str] = &[
    "bpf() was refused (EPERM) although the agent holds CAP_BPF",
    "seccomp profile forbids it",
    "deploy/components/seccomp",
];

#[derive(clap::Args, Debug)]
pub struct RuntimeArgs {
    /// Use target/netprobe-image.tar as `cargo xtask image` last wrote it instead of
    /// building it again.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(args: RuntimeArgs) -> Result<()> {
    util::require_root(
        "check-runtime",
        "podman runs containers and the agent loads eBPF programs",
    )?;
    let started = Instant::now();
    toolchain::ensure_task_packages("check-runtime", toolchain::RUNTIME_PACKAGES)?;

    let dir = util::workspace_root()
        .join("target")
        .join("netprobe-runtime");
    // One run per process: the process id in every name tells a later run what was left
    // by one that is gone.
    let podman = Podman::new(&dir, &format!("{STALE_TAG}{}", std::process::id()))?;
    podman.remove_stale(STALE_TAG);
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, API.port())).with_context(|| {
        format!(
            "port {} of this machine is taken (another agent, a demo?): the DaemonSet's agent \
             listens there",
            API.port()
        )
    })?;
    let archive = util::workspace_root()
        .join("target")
        .join("netprobe-image.tar");
    if args.no_build {
        ensure!(
            archive.is_file(),
            "--no-build: no {} (run `cargo xtask image`)",
            archive.display()
        );
        println!("== The image: {} (--no-build)", archive.display());
    } else {
        println!("== The image: cargo xtask image");
        image::run()?;
    }
    let agent_image = podman.load(&archive)?;
    let busybox = podman.busybox_image()?;
    println!("   loaded {agent_image}; busybox image {busybox}");
    // What the downward API's spec.nodeName gives: the node's name, its host name here.
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_owned();
    let built = started.elapsed();
    let agent_image = agent_image.as_str();

    println!("\n== Under podman's default seccomp profile (the base's RuntimeDefault)");
    let base = manifests::parse_objects(&manifests::render()?)?;
    let ds = manifests::find(&base, "DaemonSet", "netprobe")?;
    refused_by_default_profile(&podman, ds, &node, agent_image)?;

    println!("\n== With deploy/components/seccomp (Localhost profile)");
    let with = manifests::parse_objects(&manifests::seccomp::render()?)?;
    let ds = manifests::find(&with, "DaemonSet", "netprobe")?;
    // The kubelet's seccomp directory: profiles/netprobe.json, as deploy/README.md says
    // to place it on each node.
    let seccomp_root = dir.join("kubelet-seccomp");
    std::fs::create_dir_all(seccomp_root.join("profiles"))?;
    std::fs::copy(
        manifests::seccomp::profile_path(),
        seccomp_root
            .join("profiles")
            .join(manifests::seccomp::PROFILE),
    )?;
    let t = pod_spec::translate(ds, &node, &seccomp_root)?;
    ensure!(
        t.seccomp == "Localhost",
        "the component's DaemonSet: {}",
        t.seccomp
    );
    let agent = podman.start(Backend::Netavark, "agent", &t.flags, &t.image, &t.args)?;
    let agent_pid = podman.pid(Backend::Netavark, &agent)?;
    wait_ready(&podman, &agent, &t.probes)?;
    let programs = attached::held_by(agent_pid)?;
    ensure!(
        !programs.is_empty(),
        "the ready agent (pid {agent_pid}) holds no BPF program"
    );
    println!("   programs held by the agent: {programs:?}");

    let mut all_veths = Vec::new();
    let mut nets = Vec::new();
    for (backend, label, subnet) in [
        (Backend::Netavark, "bridge", "10.89.71.0/24"),
        (Backend::Cni, "ptp", "10.89.72.0/24"),
    ] {
        println!("\n== Containers on a {label} network ({backend:?}, {subnet})");
        let network = match backend {
            Backend::Netavark => podman.bridge_network(label, subnet)?,
            Backend::Cni => podman.ptp_network(label, subnet)?,
        };
        let pods = plays::start_pods(&podman, backend, label, &network, &busybox)?;
        println!(
            "   client {} server {} dns {}; host veths {}",
            pods.client_ip,
            pods.server_ip,
            pods.dns_ip,
            pods.veths.join(" ")
        );
        all_veths.extend(pods.veths.iter().cloned());
        nets.push(pods);
    }
    wait_attached(&all_veths)?;
    let plays_started = Instant::now();
    for pods in &nets {
        println!("\n== Plays on the {} network", pods.label);
        let _dns = plays::start_dns(&podman, pods)?;
        plays::play(&podman, pods, &dir)?;
    }
    let played = plays_started.elapsed();
    for (what, port, path) in &t.probes {
        let (status, _) = demo::http_get(API, path)?;
        ensure!(
            status == 200,
            "{what} GET {path} on :{port} after the plays: {status}"
        );
    }
    ensure!(
        podman.running(Backend::Netavark, &agent),
        "the agent died during the plays:\n{}",
        podman.logs(Backend::Netavark, &agent)
    );

    println!("\n== podman stop: the agent detaches and exits");
    let stopping = Instant::now();
    podman.stop(Backend::Netavark, &agent, 10)?;
    let exit = podman.inspect(Backend::Netavark, &agent, "{{.State.ExitCode}}")?;
    let stopped = stopping.elapsed();
    ensure!(
        stopped < Duration::from_secs(10),
        "the agent took {stopped:?} to stop: killed after its grace period"
    );
    ensure!(
        exit == "0",
        "the agent exited with {exit} on SIGTERM:\n{}",
        podman.logs(Backend::Netavark, &agent)
    );
    let left = attached::still_loaded(&programs)?;
    ensure!(
        left.is_empty(),
        "programs of the stopped agent still loaded (attached): {left:?}"
    );
    for veth in &all_veths {
        let filters = attached::tc_filters(veth)?;
        ensure!(filters.is_empty(), "tc filters left: {filters}");
    }
    println!(
        "   exit 0 after {stopped:.1?}; none of its {} programs is loaded; no tc filter on the {} veths",
        programs.len(),
        all_veths.len()
    );
    println!(
        "\nruntime: the DaemonSet's container under podman + runc: refused under the default \
         seccomp profile with the clear error, ready under netprobe's; {} plays on 2 networks \
         judged as expected ({played:.1?}); image built and loaded in {built:.1?}, total {:.1?}",
        5 * nets.len(),
        started.elapsed()
    );
    Ok(())
}

/// The base DaemonSet (RuntimeDefault) under podman's default profile: the agent must exit
/// and say that seccomp refused bpf().
fn refused_by_default_profile(podman: &Podman, ds: &Value, node: &str, loaded: &str) -> Result<()> {
    let t = pod_spec::translate(ds, node, Path::new("/nonexistent"))?;
    ensure!(
        t.seccomp == "RuntimeDefault",
        "the base's seccompProfile: {}",
        t.seccomp
    );
    // The manifest's image, as written: the one just loaded (docker.io/ is where a short
    // name resolves), never another one that happens to be there.
    ensure!(
        loaded == t.image || loaded == format!("docker.io/{}", t.image),
        "the DaemonSet runs {}, `cargo xtask image` built {loaded}",
        t.image
    );
    let name = podman.start(
        Backend::Netavark,
        "agent-default",
        &t.flags,
        &t.image,
        &t.args,
    )?;
    wait_for("the agent to exit", Duration::from_secs(30), || {
        Ok(!podman.running(Backend::Netavark, &name))
    })?;
    let logs = podman.logs(Backend::Netavark, &name);
    let code = podman.inspect(Backend::Netavark, &name, "{{.State.ExitCode}}")?;
    ensure!(
        code != "0",
        "the agent exited 0 under podman's default profile:\n{logs}"
    );
    let missing: Vec<&&str> = SECCOMP_MESSAGE
        .iter()
        .filter(|m| !logs.contains(**m))
        .collect();
    if !missing.is_empty() {
        bail!("the agent under podman's default profile did not say {missing:?}; it said:\n{logs}");
    }
    let said = logs
        .lines()
        .find(|l| l.contains(SECCOMP_MESSAGE[0]))
        .unwrap_or_default();
    println!("   exited, saying: {}", said.trim());
    Ok(())
}

/// Waits for the readiness probe (200 within 30 s, as long as the container runs), then
/// checks the liveness probe.
fn wait_ready(podman: &Podman, agent: &str, probes: &[(String, u16, String)]) -> Result<()> {
    ensure!(
        probes.iter().all(|(_, port, _)| *port == API.port()),
        "the probes' port is not the API's: {probes:?}"
    );
    let ready = probes
        .iter()
        .find(|(what, ..)| what == "readinessProbe")
        .context("the DaemonSet declares no readiness probe")?;
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(30);
    loop {
        // A kubelet would restart it; here its exit fails the check at once.
        if !podman.running(Backend::Netavark, agent) {
            bail!(
                "the agent exited:\n{}",
                podman.logs(Backend::Netavark, agent)
            );
        }
        if demo::http_get(API, &ready.2).is_ok_and(|(status, _)| status == 200) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent is not ready after 30 s (GET {}: {:?})",
            ready.2,
            demo::http_get(API, &ready.2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (what, _, path) in probes {
        let (status, body) = demo::http_get(API, path)?;
        ensure!(status == 200, "{what} GET {path}: {status} {body}");
        println!("   {what} GET {path}: {status} {}", body.trim());
    }
    println!("   ready after {:.1?}", waited.elapsed());
    Ok(())
}

/// Waits until the agent lists every one of `veths` as attached (GET /v1/interfaces).
fn wait_attached(veths: &[String]) -> Result<()> {
    let waited = Instant::now();
    let mut not_yet = String::new();
    let attached = wait_for(
        "the agent to attach to every container veth",
        Duration::from_secs(10),
        || {
            let (_, body) = demo::http_get(API, "/v1/interfaces")?;
            let listed: Value = serde_json::from_str(&body)?;
            let names: Vec<&str> = listed["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["name"].as_str())
                .collect();
            let missing: Vec<&String> = veths
                .iter()
                .filter(|v| !names.contains(&v.as_str()))
                .collect();
            not_yet = format!("not attached: {missing:?} (attached: {names:?})");
            Ok(missing.is_empty())
        },
    );
    attached.with_context(|| not_yet.clone())?;
    println!(
        "\n   the agent attached to all {} container veths within {:.1?}",
        veths.len(),
        waited.elapsed()
    );
    Ok(())
}
