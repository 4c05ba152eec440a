//! `cargo xtask check-capabilities` (root): the agent runs with exactly the capabilities
//! deploy/daemonset.yaml gives it, and with none fewer.
//!
//! The agent is started in a simulated node (a network namespace with one pod veth) the
//! way a container runtime starts the DaemonSet's container: uid 0, bounding, permitted
//! and effective sets reduced to the manifest's `capabilities.add`, nothing inheritable,
//! no_new_privs (`allowPrivilegeEscalation: false`), via util-linux's `setpriv`. With the
//! full set it must load, attach and report ready (GET /readyz 200, attached interfaces
//! ≥ 1); without any one of them it must fail, which shows each is needed.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lab::{self, Node, exec};

use crate::{build, demo, manifests, toolchain, util};

const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9810);

pub fn run() -> Result<()> {
    util::require_root(
        "check-capabilities",
        "it creates a network namespace and loads eBPF programs",
    )?;
    toolchain::bootstrap()?;
    let setpriv = exec::find_tool("setpriv")
        .context("setpriv not found (util-linux): it starts the agent with reduced capabilities")?;
    let caps = daemonset_capabilities()?;
    let agent = build::build_agent()?;

    let mut node = Node::new(&lab::unique_prefix("cp"))?;
    node.add_pod("client", "default", 2)?;
    let log = util::workspace_root()
        .join("target")
        .join("netprobe-capabilities.log");

    println!(
        "\n== The agent with the DaemonSet's capabilities: {}",
        caps.join(", ")
    );
    match try_agent(&node, &setpriv, &agent, &caps, &log)? {
        Ok(detail) => println!("   ready: {detail}"),
        Err(why) => bail!(
            "the agent did not get ready with exactly {caps:?} (what the DaemonSet gives \
             it): {why}"
        ),
    }
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        println!("\n== Without {missing}: {}", fewer.join(", "));
        match try_agent(&node, &setpriv, &agent, &fewer, &log)? {
            Ok(detail) => bail!(
                "the agent got ready without {missing} ({detail}): drop it from \
                 deploy/daemonset.yaml's capabilities"
            ),
            Err(why) => println!("   fails, as it should: {why}"),
        }
    }
    println!(
        "\ncapabilities: the agent needs exactly {} (and gets no more)",
        caps.join(", ")
    );
    Ok(())
}

/// `capabilities.add` of the DaemonSet's container, as written in deploy/.
fn daemonset_capabilities() -> Result<Vec<String>> {
    let path = manifests::deploy_dir().join("daemonset.yaml");
    let objects = manifests::parse_objects(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    let ds = manifests::find(&objects, "DaemonSet", "netprobe")?;
    let caps: Vec<String> = ds
        .pointer("/spec/template/spec/containers/0/securityContext/capabilities/add")
        .and_then(|v| v.as_array())
        .context("the DaemonSet's container adds no capabilities")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    ensure!(
        !caps.is_empty(),
        "the DaemonSet's container adds no capabilities"
    );
    Ok(caps)
}

/// Starts the agent in `node` with only `caps`; Ok(what it reported) once it is ready,
/// Err(why) if it exits or is not ready within 20 s. Stops it either way.
fn try_agent(
    node: &Node,
    setpriv: &Path,
    agent: &Path,
    caps: &[String],
    log: &Path,
) -> Result<std::result::Result<String, String>> {
    let bounding: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    let log_file = File::create(log)?;
    let mut cmd = node.command(&setpriv.to_string_lossy());
    cmd.args([
        "--bounding-set",
        &format!("-all,{}", bounding.join(",")),
        "--inh-caps",
        "-all",
        "--no-new-privs",
    ])
    .arg(agent)
    .args(["run", "--kube", "off", "--listen", &LISTEN.to_string()])
    .stdin(Stdio::null())
    .stdout(log_file.try_clone()?)
    .stderr(log_file);
    println!("   {}", exec::describe(&cmd));
    let mut child = cmd.spawn().context("starting the agent")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let error = text
                .lines()
                .find(|l| l.starts_with("Error:") || l.contains("ERROR"))
                .unwrap_or("no error logged")
                .trim()
                .to_owned();
            break Err(format!("exited ({status}): {error}"));
        }
        let ready = node.in_netns(|| {
            let ready = demo::http_get(LISTEN, "/readyz").ok()?;
            let metrics = demo::http_get(LISTEN, "/metrics").ok()?;
            Some((ready, metrics))
        });
        if let Some(((200, _), (_, metrics))) = ready {
            let attached = metrics
                .lines()
                .find(|l| l.starts_with("netprobe_attached_interfaces "))
                .unwrap_or("netprobe_attached_interfaces ?")
                .to_owned();
            break if attached.ends_with(" 0") || attached.ends_with('?') {
                Err(format!("ready but {attached}"))
            } else {
                Ok(format!("GET /readyz 200, {attached}"))
            };
        }
        if Instant::now() > deadline {
            break Err("not ready after 20 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop(&mut child);
    Ok(outcome)
}

/// SIGTERM (the agent detaches and exits), then SIGKILL after 10 s. `ip netns exec`
/// execs setpriv, which execs the agent: the child's pid is the agent's.
fn stop(child: &mut std::process::Child) {
    exec::terminate(child, Duration::from_secs(10));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemonset_adds_bpf_net_admin_and_perfmon() {
        assert_eq!(
            daemonset_capabilities().unwrap(),
            ["BPF", "NET_ADMIN", "PERFMON"]
        );
    }
}
