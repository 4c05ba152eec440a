//! The node (root namespace of the simulated node) and its pods.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    DEFAULT_DNS, ETC_NETNS_DIR, GATEWAY_V4, GATEWAY_V6, NETNS_DIR, QueryType, nft, pod_ipv4,
    pod_ipv6,
};
use crate::exec::{self, run, run_with_stdin};

/// The simulated node: namespace `<prefix>-node` and the pods plugged into it.
///
/// `Drop` kills every process still inside its namespaces (dnsmasq, an agent, a stray
/// `ip netns exec`), then deletes the host-side veths, the namespaces and the
/// `/etc/netns/<pod>` directories. Errors during `Drop` are printed, never panic.
#[derive(Debug)]
/// How a pod is connected to the node.
#[derive(Clone, Copy)]
enum Wiring {
    /// A host route per pod through its veth (kindnet, Calico, Cilium).
    Routed,
    /// A port of the node's bridge.
    Bridged,
}

pub struct Node {
    prefix: String,
    netns: String,
    dns_server: Ipv4Addr,
    pods: Vec<Pod>,
}

/// A pod: a namespace with an `eth0` whose peer (`host_if`) sits in the node.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    /// Kubernetes namespace (used for its resolv.conf search path).
    pub k8s_namespace: String,
    pub netns: String,
    /// Host-side veth in the node's namespace (where the probe attaches).
    pub host_if: String,
    pub index: u8,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

fn ip(args: &[&str]) -> Result<String> {
    run(&mut exec::command("ip", args))
}

impl Node {
    /// Creates netns `<prefix>-node` (the simulated node's root namespace): lo up, forwarding
    /// on (v4 and v6), an `uplink0` interface carrying the default routes (v4 + v6) so traffic
    /// to unknown destinations is silently discarded inside the namespace and never leaves
    /// the machine, and an empty nftables ruleset.
    ///
    /// `prefix` is 1–9 characters of `[a-z0-9-]` (see [`super::unique_prefix`]) so that
    /// host-side interface names fit Linux's 15 characters.
    pub fn new(prefix: &str) -> Result<Node> {
        ensure!(
            super::is_root(),
            "the lab needs root (network namespaces): run as root or with sudo"
        );
        ensure!(
            (1..=9).contains(&prefix.len())
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "node prefix {prefix:?} must be 1-9 characters of [a-z0-9-]"
        );
        let netns = format!("{prefix}-node");
        // Until this succeeds nothing is ours to clean up (it may be another run's namespace).
        ip(&["netns", "add", &netns])
            .with_context(|| format!("creating node namespace {netns}"))?;
        let node = Node {
            prefix: prefix.to_owned(),
            netns,
            dns_server: DEFAULT_DNS,
            pods: Vec::new(),
        };
        // From here on, an early return drops `node`, which removes the namespace.
        node.setup()
            .with_context(|| format!("setting up {}", node.netns))?;
        Ok(node)
    }

    fn setup(&self) -> Result<()> {
        let ns = self.netns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // /proc/sys/net belongs to the namespace of the thread that opens it.
        super::in_netns(ns, || -> io::Result<()> {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        })
        .context("enabling forwarding")?;
        // The uplink is a sink. A `dummy` device would do, but this machine's kernel has no
        // dummy driver, so: a veth whose peer stays down (transmit drops everything) with ARP
        // off (no neighbour resolution, so no ICMP host-unreachable ever comes back).
        ip(&[
            "-n", ns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
        ])?;
        ip(&["-n", ns, "link", "set", "uplink0", "arp", "off", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "dev", "uplink0"])?;
        ip(&["-n", ns, "-6", "route", "add", "default", "dev", "uplink0"])?;
        self.nft("flush ruleset\n")?;
        Ok(())
    }

    /// The node's namespace name (`<prefix>-node`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `/var/run/netns/<name>`: what `probe-agent run --netns` takes.
    pub fn netns_path(&self) -> PathBuf {
        super::netns_path(&self.netns)
    }

    /// The prefix every name of this node starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pods currently plugged in.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The nameserver written into the resolv.conf of pods added from now on.
    pub fn dns_server(&self) -> Ipv4Addr {
        self.dns_server
    }

    /// Sets the nameserver written into later pods' resolv.conf (default 10.96.0.10).
    pub fn set_dns_server(&mut self, ip: Ipv4Addr) {
        self.dns_server = ip;
    }

    /// Adds pod `name` (netns `<prefix>-<name>`) with addresses 10.244.0.`index`/32 and
    /// fd00:10:244::`index`/128, routed kindnet-ptp style, and its resolv.conf in
    /// `/etc/netns/<netns>/` so programs started with `ip netns exec` resolve like a pod in
    /// `k8s_namespace`. `index` is 2–254 (1 is the gateway) and unique in the node.
    pub fn add_pod(&mut self, name: &str, k8s_namespace: &str, index: u8) -> Result<Pod> {
        let mut pod = self.add_pod_checks(name, index)?;
        pod.k8s_namespace = k8s_namespace.to_owned();
        self.plug_new(pod, Wiring::Routed)
    }

    /// Adds pod `name` behind the node's bridge (flannel's `cni0`, podman's and Docker's
    /// bridges): its host veth is a port of bridge `br<prefix>` (10.245.0.1/24,
    /// fd00:10:245::1/64), and the pod has 10.245.0.`index`/24 and fd00:10:245::`index`/64
    /// with the bridge as its gateway. The node has no route to the pod's own address:
    /// pods of one bridge reach each other without the node routing.
    pub fn add_bridged_pod(&mut self, name: &str, k8s_namespace: &str, index: u8) -> Result<Pod> {
        let mut pod = self.add_pod_checks(name, index)?;
        pod.k8s_namespace = k8s_namespace.to_owned();
        pod.ipv4 = Ipv4Addr::new(10, 245, 0, index);
        pod.ipv6 = Ipv6Addr::new(0xfd00, 0x10, 0x245, 0, 0, 0, 0, u16::from(index));
        self.plug_new(pod, Wiring::Bridged)
    }

    /// The bridge of [`Node::add_bridged_pod`]'s pods.
    pub fn bridge(&self) -> String {
        format!("br{}", self.prefix)
    }

    /// Adds a host standing for a pod on another node: namespace `<prefix>-<name>` with
    /// addresses 10.244.`index`.9/32 and fd00:10:244:`index`::9/128, reached through an
    /// interface `rn<prefix><index>` that is no pod veth (the agent's globs do not take it),
    /// the way another node's pods arrive over the node's uplink. `index` is 1–254 and
    /// unique among the node's pods and hosts.
    pub fn add_remote_host(&mut self, name: &str, index: u8) -> Result<Pod> {
        ensure!(
            index >= 1 && !self.pods.iter().any(|p| p.index == index || p.name == name),
            "remote host {name} (index {index}) clashes with a pod or host of the node"
        );
        let pod = Pod {
            name: name.to_owned(),
            k8s_namespace: "default".to_owned(),
            netns: format!("{}-{name}", self.prefix),
            host_if: format!("rn{}{index:02x}", self.prefix),
            index,
            ipv4: Ipv4Addr::new(10, 244, index, 9),
            ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(index), 0, 0, 0, 9),
        };
        self.plug_new(pod, Wiring::Routed)
    }

    /// A new pod's name and index checked, and its routed addresses.
    fn add_pod_checks(&self, name: &str, index: u8) -> Result<Pod> {
        ensure!(
            !name.is_empty()
                && name != "node"
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "pod name {name:?} must be [a-z0-9-] and not \"node\""
        );
        ensure!(
            (2..=254).contains(&index),
            "pod index {index} is not in 2..=254"
        );
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| p.index == index || p.name == name)
        {
            bail!(
                "pod {name} (index {index}) clashes with pod {} (index {})",
                p.name,
                p.index
            );
        }
        let pod = Pod {
            name: name.to_owned(),
            k8s_namespace: String::new(),
            netns: format!("{}-{name}", self.prefix),
            host_if: super::host_if_name(&self.prefix, index),
            index,
            ipv4: pod_ipv4(index),
            ipv6: pod_ipv6(index),
        };
        Ok(pod)
    }

    /// Creates `pod`'s namespace and plugs it in; half-made, it is removed again.
    fn plug_new(&mut self, pod: Pod, wiring: Wiring) -> Result<Pod> {
        let name = pod.name.clone();
        ip(&["netns", "add", &pod.netns])
            .with_context(|| format!("creating pod namespace {}", pod.netns))?;
        self.pods.push(pod.clone());
        let plugged = match wiring {
            Wiring::Routed => self.plug(&pod),
            Wiring::Bridged => self.plug_bridged(&pod),
        };
        if let Err(e) = plugged {
            if let Err(e2) = self.remove_pod(&pod) {
                eprintln!("lab: cleaning up half-made pod {}: {e2:#}", pod.name);
            }
            return Err(e.context(format!("adding pod {name}")));
        }
        Ok(pod)
    }

    fn plug_bridged(&self, pod: &Pod) -> Result<()> {
        let (node, p, host_if) = (self.netns.as_str(), pod.netns.as_str(), &*pod.host_if);
        let bridge = self.bridge();
        if ip(&["-n", node, "link", "show", "dev", &bridge]).is_err() {
            ip(&["-n", node, "link", "add", &bridge, "type", "bridge"])?;
            ip(&["-n", node, "addr", "add", "10.245.0.1/24", "dev", &bridge])?;
            ip(&[
                "-n",
                node,
                "-6",
                "addr",
                "add",
                "fd00:10:245::1/64",
                "dev",
                &bridge,
                "nodad",
            ])?;
            ip(&["-n", node, "link", "set", &bridge, "up"])?;
        }
        ip(&[
            "-n", node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", p,
        ])?;
        ip(&["-n", p, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{}/24", pod.ipv4),
            "dev",
            "eth0",
        ])?;
        let v6 = format!("{}/64", pod.ipv6);
        ip(&["-n", p, "-6", "addr", "add", &v6, "dev", "eth0", "nodad"])?;
        ip(&["-n", p, "link", "set", "eth0", "up"])?;
        ip(&["-n", node, "link", "set", host_if, "master", &bridge, "up"])?;
        ip(&["-n", p, "route", "add", "default", "via", "10.245.0.1"])?;
        ip(&[
            "-n",
            p,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:10:245::1",
        ])?;
        self.write_resolv_conf(pod)
    }

    fn plug(&self, pod: &Pod) -> Result<()> {
        let (node, p, host_if) = (self.netns.as_str(), pod.netns.as_str(), &*pod.host_if);
        let (v4, v6) = (format!("{}/32", pod.ipv4), format!("{}/128", pod.ipv6));
        let (gw4, gw6) = (GATEWAY_V4.to_string(), GATEWAY_V6.to_string());
        // Created inside the node namespace, so host-side names only need to be unique there.
        ip(&[
            "-n", node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", p,
        ])?;
        // Pod side. `nodad`: the address is usable at once (no 1-2 s of duplicate detection).
        ip(&["-n", p, "link", "set", "lo", "up"])?;
        ip(&["-n", p, "addr", "add", &v4, "dev", "eth0"])?;
        ip(&["-n", p, "-6", "addr", "add", &v6, "dev", "eth0", "nodad"])?;
        ip(&["-n", p, "link", "set", "eth0", "up"])?;
        // Node side: every host veth holds the same gateway addresses (kindnet ptp).
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{gw4}/32"),
            "dev",
            host_if,
        ])?;
        ip(&[
            "-n",
            node,
            "-6",
            "addr",
            "add",
            &format!("{gw6}/64"),
            "dev",
            host_if,
            "nodad",
        ])?;
        ip(&["-n", node, "link", "set", host_if, "up"])?;
        ip(&["-n", node, "route", "add", &v4, "dev", host_if])?;
        ip(&["-n", node, "-6", "route", "add", &v6, "dev", host_if])?;
        ip(&[
            "-n", p, "route", "add", "default", "via", &gw4, "dev", "eth0", "onlink",
        ])?;
        ip(&[
            "-n", p, "-6", "route", "add", "default", "via", &gw6, "dev", "eth0",
        ])?;
        self.write_resolv_conf(pod)
    }

    /// `/etc/netns/<pod>/resolv.conf`, which `ip netns exec` mounts over the pod's.
    fn write_resolv_conf(&self, pod: &Pod) -> Result<()> {
        let dir = Path::new(ETC_NETNS_DIR).join(&pod.netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            super::resolv_conf(self.dns_server, &pod.k8s_namespace),
        )
        .with_context(|| format!("writing {}", resolv.display()))?;
        Ok(())
    }

    /// Unplugs and deletes a pod: kills what runs in it, deletes its veth pair, namespace and
    /// /etc/netns directory. Tolerates parts already gone.
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = kill_all_in(&pod.netns) {
            errors.push(e);
        }
        // Deleting the host side takes eth0 with it, even if something holds the pod netns.
        if let Err(e) = ip(&["-n", &self.netns, "link", "del", &pod.host_if])
            && !format!("{e:#}").contains("Cannot find device")
        {
            errors.push(e);
        }
        if let Err(e) = delete_netns(&pod.netns) {
            errors.push(e);
        }
        self.pods.retain(|p| p.netns != pod.netns);
        match errors.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e.context(format!("removing pod {}", pod.name))),
        }
    }

    /// Loads nftables rules (`nft -f -`) inside the node's namespace. See [`nft`] for the
    /// rule text of Services, rejects and drops.
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        let mut cmd = self.command(&exec::tool("nft").to_string_lossy());
        cmd.args(["-f", "-"]);
        run_with_stdin(&mut cmd, ruleset)
            .with_context(|| format!("loading nftables rules in {}:\n{ruleset}", self.netns))?;
        Ok(())
    }

    /// A ClusterIP Service `vip:port` DNAT'ed to `backend` (kube-proxy style).
    pub fn add_service(
        &self,
        proto: nft::Proto,
        vip: IpAddr,
        port: u16,
        backend: SocketAddr,
    ) -> Result<()> {
        self.nft(&nft::service_dnat(proto, vip, port, backend)?)
    }

    /// A Service without endpoints: `vip:port` answered with ICMP port-unreachable.
    pub fn reject_service(&self, proto: nft::Proto, vip: IpAddr, port: u16) -> Result<()> {
        self.nft(&nft::reject_unreachable(proto, vip, port))
    }

    /// Silently drops matching forwarded traffic (NetworkPolicy style). `None` = any.
    pub fn drop_traffic(
        &self,
        proto: nft::Proto,
        src: Option<IpAddr>,
        dst: Option<IpAddr>,
        dport: Option<u16>,
    ) -> Result<()> {
        self.nft(&nft::drop_forwarded(proto, src, dst, dport)?)
    }

    /// Removes every Service/reject/drop rule added through the lab.
    pub fn clear_rules(&self) -> Result<()> {
        self.nft(&nft::delete_all())
    }

    /// `ip netns exec <node> <program>`.
    pub fn command(&self, program: &str) -> Command {
        netns_command(&self.netns, program)
    }

    /// Runs `f` on a thread inside the node's namespace (see [`super::in_netns`]).
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::in_netns(&self.netns, f)
    }

    fn cleanup(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for pod in self.pods.clone().iter().rev() {
            if let Err(e) = self.remove_pod(pod) {
                errors.push(e);
            }
        }
        if let Err(e) = kill_all_in(&self.netns) {
            errors.push(e);
        }
        if let Err(e) = delete_netns(&self.netns) {
            errors.push(e);
        }
        errors
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for e in self.cleanup() {
            eprintln!("lab: cleaning up node {}: {e:#}", self.netns);
        }
    }
}

pub(super) fn netns_command(netns: &str, program: &str) -> Command {
    let mut cmd = exec::command("ip", ["netns", "exec", netns]);
    cmd.arg(program);
    cmd
}

/// Pids of the processes whose network namespace is `netns`.
pub(super) fn netns_pids(netns: &str) -> Result<Vec<i32>> {
    if !super::netns_path(netns).exists() {
        return Ok(Vec::new());
    }
    let out = ip(&["netns", "pids", netns])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs every process in `netns` except this one, and waits (≤ 2 s) until they are gone.
pub(super) fn kill_all_in(netns: &str) -> Result<()> {
    use nix::{sys::signal, unistd::Pid};
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<i32> = netns_pids(netns)?
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} are still in {netns}");
        }
        for pid in pids {
            // ESRCH (already gone) is fine.
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes namespace `netns` and its /etc/netns directory if they exist.
pub(super) fn delete_netns(netns: &str) -> Result<()> {
    if super::netns_path(netns).exists() {
        ip(&["netns", "del", netns])?;
    }
    let dir = Path::new(ETC_NETNS_DIR).join(netns);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Namespaces named `<prefix>-*`, and /etc/netns directories with no namespace left.
pub(super) fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let start = format!("{prefix}-");
    let mut names = Vec::new();
    for dir in [NETNS_DIR, ETC_NETNS_DIR] {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&start) && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

impl Pod {
    /// `ip netns exec <pod netns> <program>`: programs resolve names with the pod's
    /// resolv.conf.
    pub fn command(&self, program: &str) -> Command {
        netns_command(&self.netns, program)
    }

    /// Runs `f` on a new thread that has entered the pod's namespace and returns its result.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::in_netns(&self.netns, f)
    }

    /// A firewall inside the pod (its own netns, table `inet pod`, chain `input`) that
    /// drops TCP to `port` and counts what it drops: a server that hangs or a pod's own
    /// policy, as seen from outside.
    pub fn drop_tcp_in(&self, port: u16) -> Result<()> {
        let mut nft = self.command(&exec::tool("nft").to_string_lossy());
        exec::run_with_stdin(
            nft.args(["-f", "-"]),
            &format!(
                "table inet pod {{\n chain input {{\n  type filter hook input priority 0;\n  \
                 tcp dport {port} counter drop\n }}\n}}\n"
            ),
        )
        .with_context(|| format!("the firewall of pod {}", self.name))?;
        Ok(())
    }

    /// A TCP listener inside the pod (the kernel's TCP stack) on `port` (0: any free port,
    /// see [`Listener::port`]) for IPv4 and IPv6, answering each HTTP request with a tiny
    /// HTTP/1.0 200 response. Stops when dropped.
    pub fn listen_tcp(&self, port: u16) -> Result<Listener> {
        // One dual-stack socket: a new namespace has net.ipv6.bindv6only = 0.
        let socket = self
            .in_netns(move || TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))
            .with_context(|| format!("listening on port {port} in pod {}", self.name))?;
        Listener::start(socket)
    }

    /// `connect()` from inside the pod, then a clean close. Returns the io result so tests
    /// can assert `ConnectionRefused` (RST or ICMP unreachable) or `TimedOut`.
    pub fn connect_tcp(&self, to: SocketAddr, timeout: Duration) -> io::Result<()> {
        self.in_netns(move || TcpStream::connect_timeout(&to, timeout).map(drop))
    }

    /// An HTTP/1.0 `GET /` from inside the pod; returns the response's status code.
    pub fn http_get(&self, to: SocketAddr, timeout: Duration) -> io::Result<u16> {
        self.in_netns(move || {
            let mut s = TcpStream::connect_timeout(&to, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            write!(s, "GET / HTTP/1.0\r\nHost: {to}\r\n\r\n")?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            parse_status(&response).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad response {response:?}"),
                )
            })
        })
    }

    /// Sends one DNS query over UDP from inside the pod and waits for its answer: exact
    /// control over what goes on the wire (one query, no search list, no retries), unlike
    /// the libc resolver. `Err(TimedOut)` when nothing answers within `timeout`.
    pub fn dns_query(
        &self,
        server: SocketAddr,
        name: &str,
        qtype: QueryType,
        timeout: Duration,
    ) -> io::Result<super::DnsReply> {
        let name = name.to_owned();
        self.in_netns(move || super::dns::query(server, &name, qtype, timeout))
    }
}

/// Parses the status code of an HTTP response.
pub(crate) fn parse_status(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// A TCP server in a pod, see [`Pod::listen_tcp`].
#[derive(Debug)]
pub struct Listener {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

impl Listener {
    fn start(socket: TcpListener) -> Result<Listener> {
        let port = socket.local_addr()?.port();
        // Polled so that drop can stop it without a wake-up connection.
        socket.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::Builder::new()
                .name(format!("listener :{port}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match socket.accept() {
                            Ok((conn, _)) => {
                                accepted.fetch_add(1, Ordering::Relaxed);
                                std::thread::spawn(move || serve(conn));
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(e) => {
                                eprintln!("lab: listener on port {port}: accept: {e}");
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                })?
        };
        Ok(Listener {
            port,
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one connection. Only a client that sent a request gets a response: writing to a
/// client that already closed (a bare connect) would draw an RST, and tests count RSTs.
fn serve(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if !request.is_empty() {
        let _ = conn.write_all(HTTP_RESPONSE);
    }
    // Half-close, then wait for the client's FIN so the close is orderly on both sides.
    let _ = conn.shutdown(Shutdown::Write);
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.0 200 OK\r\n\r\nok"), Some(200));
        assert_eq!(
            parse_status("HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status("garbage"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn listener_answers_http_and_bare_connects_on_loopback() {
        // The server logic needs no namespace: exercise it in this process's own one.
        let socket = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let listener = Listener::start(socket).unwrap();
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, listener.port()));
        drop(TcpStream::connect(addr).unwrap());
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert_eq!(parse_status(&response), Some(200));
        assert!(response.ends_with("ok\n"));
        let deadline = Instant::now() + Duration::from_secs(2);
        while listener.accepted() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(listener.accepted(), 2);
    }
}
