//! The lab against the real kernel: namespaces, veths, routes, nftables, dnsmasq.
//! Root only: built with `--features privileged` (`cargo xtask test` does it as root).

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use lab::{Node, Proto, QueryType};

const T: Duration = Duration::from_secs(2);

fn root_or_fail() {
    // Never skip silently: this target is only built on purpose (--features privileged).
    assert!(
        lab::is_root(),
        "the privileged lab tests need root: run `sudo -E cargo xtask test`"
    );
}

fn netns_exists(name: &str) -> bool {
    lab::netns_path(name).exists()
}

fn output(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn two_pods_talk_tcp_v4_and_v6_and_resolve_names() {
    root_or_fail();
    let prefix = lab::unique_prefix("xt");
    let mut node = Node::new(&prefix).unwrap();
    let dns = node.add_pod("dns", "kube-system", 2).unwrap();
    let server = node.add_pod("server", "production", 3).unwrap();
    let client = node.add_pod("client", "production", 4).unwrap();
    assert!(client.host_if.starts_with("veth") && client.host_if.len() <= 15);

    let listener = server.listen_tcp(8080).unwrap();
    client
        .connect_tcp(SocketAddr::new(IpAddr::V4(server.ipv4), 8080), T)
        .expect("IPv4 connect");
    client
        .connect_tcp(SocketAddr::new(IpAddr::V6(server.ipv6), 8080), T)
        .expect("IPv6 connect");
    let status = client
        .http_get(SocketAddr::new(IpAddr::V6(server.ipv6), 8080), T)
        .expect("HTTP over IPv6");
    assert_eq!(status, 200);
    assert_eq!(listener.accepted(), 3);

    // Nothing listens: RST → refused, at once.
    let err = client
        .connect_tcp(SocketAddr::new(IpAddr::V4(server.ipv4), 9090), T)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // DNS: dnsmasq in a pod, reached through the kube-dns ClusterIP (DNAT in the node).
    let server_name = "server.production.svc.cluster.local";
    let _dnsmasq = lab::start_dns(
        &dns,
        &[
            (server_name, IpAddr::V4(server.ipv4)),
            (server_name, IpAddr::V6(server.ipv6)),
        ],
    )
    .unwrap();
    let dns_vip = IpAddr::V4(lab::DEFAULT_DNS);
    for proto in [Proto::Udp, Proto::Tcp] {
        node.add_service(
            proto,
            dns_vip,
            53,
            SocketAddr::new(IpAddr::V4(dns.ipv4), 53),
        )
        .unwrap();
    }
    // The pod's resolver: search path and ndots like a pod in namespace "production".
    let (ok, out) = output(client.command("getent").args(["hosts", "server"]));
    assert!(ok, "getent hosts server: {out}");
    assert!(out.contains(&server.ipv6.to_string()), "{out}");
    let (ok, out) = output(client.command("getent").args(["ahostsv4", "server"]));
    assert!(ok && out.contains(&server.ipv4.to_string()), "{out}");
    // curl resolves and connects like an application would.
    let (ok, out) =
        output(
            client
                .command("curl")
                .args(["-sS", "--max-time", "5", "http://server:8080/"]),
        );
    assert!(ok && out == "ok\n", "curl: {out}");
    // dig: unknown names are NXDOMAIN inside and outside cluster.local, never REFUSED.
    for (name, status) in [
        (server_name, "NOERROR"),
        ("nope.production.svc.cluster.local", "NXDOMAIN"),
        ("example.com", "NXDOMAIN"),
        ("bare", "NXDOMAIN"),
    ] {
        let (ok, out) = output(client.command("dig").args([
            "+tries=1",
            "+time=2",
            &format!("@{}", lab::DEFAULT_DNS),
            name,
        ]));
        assert!(ok, "dig {name}: {out}");
        assert!(
            out.contains(&format!("status: {status}")),
            "dig {name}: {out}"
        );
    }
    let (ok, _) = output(client.command("getent").args(["hosts", "nope"]));
    assert!(!ok, "unknown name resolved");
    // The lab's own one-shot client, v4 and v6 transport.
    let reply = client
        .dns_query(
            SocketAddr::new(dns_vip, 53),
            server_name,
            QueryType::Aaaa,
            T,
        )
        .unwrap();
    assert_eq!((reply.rcode, reply.answers), (0, 1));
    let reply = client
        .dns_query(
            SocketAddr::new(IpAddr::V6(dns.ipv6), 53),
            "nope.cluster.local",
            QueryType::A,
            T,
        )
        .unwrap();
    assert_eq!(reply.rcode, 3);

    // Policy drop of DNS → queries time out.
    node.drop_traffic(Proto::Udp, Some(IpAddr::V4(client.ipv4)), None, Some(53))
        .unwrap();
    let err = client
        .dns_query(
            SocketAddr::new(dns_vip, 53),
            server_name,
            QueryType::A,
            Duration::from_millis(500),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");

    // Cleanup removes everything, processes included.
    let names = [
        node.netns().to_owned(),
        dns.netns,
        server.netns,
        client.netns,
    ];
    drop(listener);
    drop(_dnsmasq);
    drop(node);
    for n in &names {
        assert!(!netns_exists(n), "{n} left behind");
        assert!(
            !Path::new("/etc/netns").join(n).exists(),
            "/etc/netns/{n} left"
        );
    }
}

#[test]
fn drops_time_out_rejects_refuse_and_unknown_destinations_vanish() {
    root_or_fail();
    let mut node = Node::new(&lab::unique_prefix("xt")).unwrap();
    let a = node.add_pod("a", "default", 10).unwrap();
    let b = node.add_pod("b", "default", 11).unwrap();
    let _l = b.listen_tcp(5432).unwrap();
    let to_b = SocketAddr::new(IpAddr::V4(b.ipv4), 5432);
    a.connect_tcp(to_b, T).unwrap();

    // A Service (ClusterIP DNAT'ed to b).
    let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
    node.add_service(Proto::Tcp, vip, 80, to_b).unwrap();
    a.connect_tcp(SocketAddr::new(vip, 80), T)
        .expect("Service DNAT");

    // NetworkPolicy-style drop → connect times out.
    node.drop_traffic(
        Proto::Tcp,
        Some(IpAddr::V4(a.ipv4)),
        Some(IpAddr::V4(b.ipv4)),
        Some(5432),
    )
    .unwrap();
    let started = Instant::now();
    let err = a
        .connect_tcp(to_b, Duration::from_millis(1500))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // IPv6 to b is not dropped.
    a.connect_tcp(SocketAddr::new(IpAddr::V6(b.ipv6), 5432), T)
        .expect("IPv6 unaffected");

    // Service without endpoints → ICMP port unreachable → refused at once.
    let orders = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 30));
    node.reject_service(Proto::Tcp, orders, 80).unwrap();
    let started = Instant::now();
    let err = a.connect_tcp(SocketAddr::new(orders, 80), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Unknown destinations are discarded in the node (no ICMP, nothing leaves): time out.
    for to in ["10.1.2.3:80", "[2001:db8::1]:80"] {
        let err = a
            .connect_tcp(to.parse().unwrap(), Duration::from_millis(1200))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{to}: {err}");
    }

    // clear_rules undoes all of it.
    node.clear_rules().unwrap();
    a.connect_tcp(to_b, T).expect("drop removed");
    let err = a
        .connect_tcp(SocketAddr::new(orders, 80), Duration::from_millis(1200))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "reject removed: {err}");
}

/// Polls `done` until it holds; fails after 10 s, naming `what` it waited for.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn remove_pod_and_leftovers() {
    root_or_fail();
    let prefix = lab::unique_prefix("xt");
    let mut node = Node::new(&prefix).unwrap();
    let a = node.add_pod("a", "default", 2).unwrap();
    // A process living in the pod (e.g. a leaked server) must not keep it alive.
    let mut sleeper = a.command("sleep").arg("60").spawn().unwrap();
    // In the pod once `ip netns exec` has become `sleep`: only then is it the pod's.
    let comm = format!("/proc/{}/comm", sleeper.id());
    wait_until("the sleeper to exec in the pod", || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
    });
    node.remove_pod(&a).unwrap();
    assert!(!netns_exists(&a.netns));
    wait_until("the process in the pod to be killed", || {
        sleeper.try_wait().unwrap().is_some()
    });
    let (_, links) = output(node.command("ip").args(["-o", "link"]));
    assert!(!links.contains(&a.host_if), "{links}");
    assert!(node.pods().is_empty());

    // Clashes and bad names are refused before anything is created.
    node.add_pod("b", "default", 3).unwrap();
    assert!(node.add_pod("c", "default", 3).is_err());
    assert!(node.add_pod("b", "default", 4).is_err());
    assert!(node.add_pod("Bad_Name", "default", 5).is_err());
    assert!(node.add_pod("d", "default", 1).is_err());
    assert_eq!(node.pods().len(), 1);
    // Two nodes with one prefix cannot exist at once.
    assert!(Node::new(&prefix).is_err());

    // A panic unwinds through Drop, which still cleans up.
    let ns = node.netns().to_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _node = node;
        panic!("test panic");
    }));
    assert!(result.is_err());
    assert!(!netns_exists(&ns));
    assert!(!netns_exists(&format!("{prefix}-b")));

    // remove_orphans clears what a killed run left (simulated with plain `ip netns add`): a
    // process inside a namespace, one naming it on its command line (as an agent started
    // with `--netns` does), then the namespaces.
    let stale = lab::unique_prefix("xt");
    for n in ["node", "x"] {
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &format!("{stale}-{n}")])
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::create_dir_all(format!("/etc/netns/{stale}-x")).unwrap();
    let mut inside = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("{stale}-x"), "sleep", "600"])
        .spawn()
        .unwrap();
    let node_path = lab::netns_path(&format!("{stale}-node"));
    // dash blocked in its builtin `read` on a pipe: one process, its command line as given.
    let mut naming = std::process::Command::new("sh")
        .args(["-c", "read line", "orphan", "--netns"])
        .arg(&node_path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until `ip netns exec` has entered the namespace and exec'd sleep.
    let cmdline = format!("/proc/{}/cmdline", inside.id());
    wait_until("ip netns exec to run sleep", || {
        std::fs::read_to_string(&cmdline)
            .unwrap_or_default()
            .starts_with("sleep")
    });
    let removed = lab::remove_orphans(&stale).unwrap();
    assert_eq!(removed, [format!("{stale}-node"), format!("{stale}-x")]);
    wait_until("the process inside to be gone", || {
        inside.try_wait().unwrap().is_some()
    });
    wait_until("the process naming the node to be gone", || {
        naming.try_wait().unwrap().is_some()
    });
    assert!(!netns_exists(&format!("{stale}-x")));
    assert!(!Path::new(&format!("/etc/netns/{stale}-x")).exists());
}

#[test]
fn in_netns_sees_the_pod_interfaces() {
    root_or_fail();
    let mut node = Node::new(&lab::unique_prefix("xt")).unwrap();
    let a = node.add_pod("a", "default", 2).unwrap();
    // /proc/net is the main thread's namespace; /proc/thread-self/net is this thread's.
    let ifaces = a.in_netns(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(ifaces.contains("eth0:"), "{ifaces}");
    let node_ifaces =
        node.in_netns(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(
        node_ifaces.contains(&format!("{}:", a.host_if)),
        "{node_ifaces}"
    );
    assert!(node_ifaces.contains("uplink0:"), "{node_ifaces}");
    // Forwarding is on in the node.
    let fwd = node.in_netns(|| {
        (
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap(),
        )
    });
    assert_eq!((fwd.0.trim(), fwd.1.trim()), ("1", "1"));
    let (_, rules) = output(node.command("nft").args(["list", "ruleset"]));
    assert_eq!(rules.trim(), "", "a new node has an empty ruleset");
    let resolv = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", a.netns)).unwrap();
    assert_eq!(resolv, lab::resolv_conf(lab::DEFAULT_DNS, "default"));
    // A panic inside comes back to the caller.
    let r = std::panic::catch_unwind(|| a.in_netns(|| panic!("inside")));
    assert!(r.is_err());
}
