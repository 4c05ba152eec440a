//! A simulated Kubernetes node built from network namespaces, for `cargo xtask demo`, the
//! agent's privileged integration tests and xtask's checks; with [`exec`] (running the
//! tools it drives), [`kube_objects`] (the Kubernetes objects describing its pods),
//! [`kube_stand_in`] (a Kubernetes API server serving them), [`Agent`] (one
//! supervisor for `probe-agent run`) and [`craft`] (packets and kernel records built by
//! hand, for tests, benches and fuzz targets).
//!
//! ```text
//!  <prefix>-node  (the node's root namespace: ip_forward on, nftables like kube-proxy)
//!   ├─ uplink0           default routes (v4 + v6): unknown destinations are discarded here
//!   ├─ veth<prefix><ix>  10.244.0.1/32, fe80::1/64 ──── eth0 in <prefix>-<pod>
//!   │                                                    10.244.0.<ix>/32, fd00:10:244::<ix>/128
//!   └─ ...
//! ```
//!
//! Pods are wired like kindnet's ptp plugin: a /32 (/128) address on the pod's `eth0`,
//! a default route via 10.244.0.1 (fe80::1) "onlink", and a host route per pod in the
//! node. Nothing ever leaves the machine: the node has no link to the outside.
//!
//! Everything is done with `ip` and `nft`, so what a test builds can be inspected (and
//! reproduced) by hand. [`Node`]'s `Drop` removes what it created, even after a panic.

mod agent;
mod capture;
pub mod craft;
mod dns;
pub mod exec;
pub mod incidents;
pub mod kube_objects;
pub mod kube_stand_in;
pub mod nft;
mod node;
mod samples;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;

pub use agent::{Agent, AgentCommand, http_get};
pub use capture::Capture;
pub use dns::{DnsReply, DnsServer, QueryType, dnsmasq_args, start_dns};
pub use nft::Proto;
pub use node::{Listener, Node, Pod};
pub use samples::Samples;

/// Address of the pods' gateway (held by every host-side veth, kindnet style).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// IPv6 gateway of the pods: a link-local address on every host-side veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// kube-dns' ClusterIP in a default cluster; the nameserver written into pods' resolv.conf.
pub const DEFAULT_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Where `ip netns exec` finds per-namespace files (bind-mounted over /etc).
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// IPv4 address of the pod with `index`: 10.244.0.<index>.
pub fn pod_ipv4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, index)
}

/// IPv6 address of the pod with `index`: fd00:10:244::<index>, written with the same digits
/// as the IPv4 address (index 12 → fd00:10:244::12) so the two are easy to match by eye.
pub fn pod_ipv6(index: u8) -> Ipv6Addr {
    let digits = index.to_string();
    let last = u16::from_str_radix(&digits, 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, last)
}

/// Name of the host-side veth of pod `index` in node `prefix`. Linux caps interface names at
/// 15 bytes: "veth" + prefix (≤ 9) + 2 hex digits. The `veth` start matches the agent's
/// default interface glob (`veth*,lxc*,cali*`).
pub fn host_if_name(prefix: &str, index: u8) -> String {
    format!("veth{prefix}{index:02x}")
}

/// The resolv.conf of a pod in Kubernetes namespace `k8s_namespace` (what kubelet writes
/// for `dnsPolicy: ClusterFirst`).
pub fn resolv_conf(nameserver: Ipv4Addr, k8s_namespace: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "nameserver {nameserver}");
    let _ = writeln!(
        s,
        "search {k8s_namespace}.svc.cluster.local svc.cluster.local cluster.local"
    );
    s.push_str("options ndots:5\n");
    s
}

/// A name prefix no other live test shares: a tag (its first ≤ 2 letters or digits) and 6
/// base-36 characters encoding this process id and a per-process counter; ≤ 8 characters in
/// all. Each process id is < 2^22 (the kernel's PID_MAX_LIMIT) and the counter wraps after
/// 512 nodes, which `Node::new` reports as "already exists" if the old one is still alive.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format_prefix(tag, std::process::id(), n)
}

fn format_prefix(tag: &str, pid: u32, counter: u32) -> String {
    const PID_BITS: u32 = 22;
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(2)
        .collect();
    // 512 << 22 = 2^31 < 36^6: fixed width, so prefixes with different tags never collide.
    let value = (u64::from(counter % 512) << PID_BITS) | u64::from(pid & ((1 << PID_BITS) - 1));
    let mut tail = [b'0'; 6];
    let mut v = value;
    for slot in tail.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(v % 36) as usize];
        v /= 36;
    }
    format!("{tag}{}", std::str::from_utf8(&tail).expect("ASCII"))
}

/// `/var/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether this process runs as root (namespaces, eBPF and dnsmasq need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `f` on a new thread that has entered network namespace `netns` and returns its
/// result. Sockets created there stay in that namespace after the thread ends.
/// Inside, read `/proc/thread-self/net/...`: `/proc/net` is the main thread's namespace.
///
/// Panics if the namespace cannot be entered; a panic in `f` is resumed on the caller.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns_path(netns);
    let handle = std::thread::Builder::new()
        .name(format!("netns {netns}"))
        .spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            // A thread may switch its own network namespace; the rest of the process stays.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {}: {e}", path.display()));
            f()
        })
        .expect("cannot spawn a thread");
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS`), or `None` if it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Removes what a run using namespaces `<prefix>-*` left when it was killed before it could
/// clean up: the processes inside those namespaces or naming one on their command line (an
/// agent started with `--netns`), then the namespaces and their /etc/netns files. Only for
/// a caller that knows no live run uses the prefix (the demo holds a lock). Returns the
/// namespaces removed.
pub fn remove_orphans(prefix: &str) -> Result<Vec<String>> {
    let stale = node::namespaces_with_prefix(prefix)?;
    for ns in &stale {
        let path = netns_path(ns);
        for pid in pids_naming(&path.to_string_lossy()) {
            stop_orphan(pid);
        }
        node::kill_all_in(ns)?;
    }
    // Node first: deleting it destroys the host-side veths and so the pods' eth0.
    let mut ordered = stale.clone();
    ordered.sort_by_key(|ns| !ns.ends_with("-node"));
    for ns in &ordered {
        node::delete_netns(ns)?;
    }
    Ok(ordered)
}

/// SIGTERM, so that an agent detaches its programs, then SIGKILL after 5 s. Not our child:
/// whoever adopted it reaps it, so "gone" is its /proc entry going.
fn stop_orphan(pid: i32) {
    use nix::{sys::signal, unistd::Pid};
    // A zombie ("Z" after the command name) is gone too, only not yet reaped.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    for (signal, grace) in [
        (signal::Signal::SIGTERM, Duration::from_secs(5)),
        (signal::Signal::SIGKILL, Duration::from_secs(1)),
    ] {
        let _ = signal::kill(Pid::from_raw(pid), signal);
        let deadline = Instant::now() + grace;
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if gone() {
            return;
        }
    }
}

/// Pids of the other processes with `needle` as one of their command-line arguments.
fn pids_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == needle.as_bytes())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_unique_and_start_with_the_tag() {
        let a = unique_prefix("agent");
        let b = unique_prefix("agent");
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert!(p.len() <= 8, "{p}");
            assert!(p.starts_with("ag"), "{p}");
            assert!(p.chars().all(|c| c.is_ascii_alphanumeric()), "{p}");
        }
    }

    #[test]
    fn prefixes_fit_the_largest_pid_and_counter() {
        let p = format_prefix("xt", (1 << 22) - 1, 511);
        assert_eq!(p.len(), 8, "{p}");
        assert_ne!(p, format_prefix("xt", (1 << 22) - 1, 510));
        assert_ne!(p, format_prefix("xt", (1 << 22) - 2, 511));
        // A tag's length never lets two different (pid, counter) pairs collide.
        assert_ne!(format_prefix("a", 1, 0), format_prefix("", 1, 0));
        assert_eq!(format_prefix("", 0, 0), "000000");
        assert_eq!(format_prefix("-_!", 35, 0), "00000z");
    }

    #[test]
    fn host_interface_names_fit_linux_limit() {
        let name = host_if_name(&unique_prefix("zz"), 254);
        assert!(name.len() <= 15, "{name}");
        assert!(name.starts_with("veth"));
        assert_eq!(host_if_name("demo", 10), "vethdemo0a");
    }

    #[test]
    fn pod_addresses() {
        assert_eq!(pod_ipv4(7), Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(pod_ipv6(7).to_string(), "fd00:10:244::7");
        assert_eq!(pod_ipv6(12).to_string(), "fd00:10:244::12");
        assert_eq!(pod_ipv6(254).to_string(), "fd00:10:244::254");
    }

    #[test]
    fn resolv_conf_is_what_kubelet_writes() {
        assert_eq!(
            resolv_conf(DEFAULT_DNS, "production"),
            "nameserver 10.96.0.10\n\
             search production.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5\n"
        );
    }
}
