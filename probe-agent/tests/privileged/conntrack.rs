//! `probe_agent::nat` against the kernel's own conntrack table: real connections through a
//! kube-proxy-style Service (DNAT), a hairpin one (DNAT and masquerade) and a direct one,
//! on a simulated node. The truth for each is what the two sockets see: the client's own
//! address and the peer address the server's `accept` returns.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lab::{self, Node, Pod, Proto};
use probe_agent::{
    model::{Flow, Protocol},
    nat::{Conntrack, LOOKUP_TIMEOUT, Translation},
};

use crate::e2e::{node, sock};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn tcp(src: SocketAddr, dst: SocketAddr) -> Flow {
    Flow {
        protocol: Protocol::Tcp,
        src_ip: src.ip(),
        src_port: src.port(),
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    }
}

/// A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; conntrack has them as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One open connection, as each end sees it.
struct Connection {
    /// The client's socket: its own address and what it asked for.
    client: Flow,
    /// The server's accepted socket: its peer (the client, after any SNAT) → itself.
    server: Flow,
    /// Open until the test ends, so the entries stay ESTABLISHED.
    _sockets: (TcpStream, TcpStream),
}

fn connect(client: &Pod, listener: &TcpListener, to: SocketAddr) -> Connection {
    let stream = client
        .in_netns(move || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{} → {to}: {e}", client.name));
    // The handshake is done: the connection waits in the listener's queue.
    let (accepted, peer) = listener.accept().expect("accept");
    let client_flow = tcp(canonical(stream.local_addr().unwrap()), to);
    let server_flow = tcp(canonical(peer), canonical(accepted.local_addr().unwrap()));
    Connection {
        client: client_flow,
        server: server_flow,
        _sockets: (stream, accepted),
    }
}

fn reversed(flow: &Flow) -> Flow {
    Flow {
        protocol: flow.protocol,
        src_ip: flow.dst_ip,
        src_port: flow.dst_port,
        dst_ip: flow.src_ip,
        dst_port: flow.src_port,
    }
}

/// The node's conntrack table: the socket is opened inside the node's namespace and stays
/// bound to it.
fn conntrack(node: &Node) -> Conntrack {
    node.in_netns(Conntrack::open)
        .expect("open conntrack in the node")
}

fn listen(pod: &Pod, port: u16) -> TcpListener {
    // One dual-stack socket: a new namespace has net.ipv6.bindv6only = 0.
    pod.in_netns(move || TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))
        .expect("listen in the server pod")
}

/// A Service (DNAT ClusterIP:80 → pod:8080), IPv4 and IPv6: the client's tuple finds the
/// server's and back; a tuple conntrack does not know is `None`; so is an entry's other side.
#[test]
fn service_dnat_pairs_the_client_and_server_views() {
    let mut node = node("ct");
    let client = node.add_pod("client", "default", 5).unwrap();
    let server = node.add_pod("server", "default", 9).unwrap();
    let listener = listen(&server, 8080);
    let vip4: IpAddr = "10.96.0.20".parse().unwrap();
    let vip6: IpAddr = "fd00:10:96::20".parse().unwrap();
    node.add_service(Proto::Tcp, vip4, 80, sock(server.ipv4, 8080))
        .unwrap();
    node.add_service(Proto::Tcp, vip6, 80, sock(server.ipv6, 8080))
        .unwrap();
    let conntrack = conntrack(&node);

    for (vip, backend) in [
        (vip4, IpAddr::from(server.ipv4)),
        (vip6, server.ipv6.into()),
    ] {
        let conn = connect(&client, &listener, sock(vip, 80));
        // DNAT only: the server sees the client's own address, at the backend's.
        assert_eq!(conn.server.src_ip, conn.client.src_ip);
        assert_eq!(conn.server.src_port, conn.client.src_port);
        assert_eq!((conn.server.dst_ip, conn.server.dst_port), (backend, 8080));
        // What the server sends back: pod:8080 → client.
        let reply = reversed(&conn.server);
        let expected = Translation {
            original: conn.client,
            reply,
        };

        let found = conntrack.by_original(&conn.client).unwrap();
        assert_eq!(found, Some(expected), "by_original({})", conn.client);
        assert!(expected.is_nat());
        assert_eq!(
            conntrack.by_reply(&reply).unwrap(),
            Some(expected),
            "by_reply({reply})"
        );

        // The kernel finds an entry by either of its tuples; the API names a direction.
        assert_eq!(conntrack.by_original(&reply).unwrap(), None);
        assert_eq!(conntrack.by_reply(&conn.client).unwrap(), None);
        // Tuples conntrack does not know.
        let other_port = Flow {
            dst_port: 81,
            ..conn.client
        };
        assert_eq!(conntrack.by_original(&other_port).unwrap(), None);
        let other_client = Flow {
            dst_port: reply.dst_port.wrapping_add(1),
            ..reply
        };
        assert_eq!(conntrack.by_reply(&other_client).unwrap(), None);
    }

    // Pod to pod without a Service: an entry all the same, with no NAT.
    let conn = connect(&client, &listener, sock(server.ipv4, 8080));
    let direct = conntrack.by_original(&conn.client).unwrap().expect("entry");
    assert_eq!(direct.reply, reversed(&conn.server));
    assert!(!direct.is_nat());

    lookup_latency(&conntrack, &conn.client, &direct);
}

/// 1000 lookups of one entry and 1000 of a tuple conntrack does not know: each is one
/// request and one answer on the open socket.
fn lookup_latency(conntrack: &Conntrack, known: &Flow, entry: &Translation) {
    let unknown = Flow {
        src_port: known.src_port.wrapping_add(1),
        ..*known
    };
    for (what, flow, expected) in [("hit", known, Some(*entry)), ("miss", &unknown, None)] {
        let mut times = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let start = Instant::now();
            let found = conntrack.by_original(flow).unwrap();
            times.push(start.elapsed());
            assert_eq!(found, expected);
        }
        times.sort();
        let (p50, p99, max) = (times[500], times[990], times[999]);
        eprintln!("conntrack lookup ({what}) over 1000: p50 {p50:?}, p99 {p99:?}, max {max:?}");
        // Loose on a busy machine: the kernel answers in microseconds.
        assert!(p50 < Duration::from_millis(1), "p50 {p50:?}");
        assert!(max < LOOKUP_TIMEOUT * 4, "max {max:?}");
    }
}

/// A pod reaching itself through its Service: DNAT to itself, then a masquerade (as
/// kube-proxy does for hairpin traffic, with random ports) so the answer comes back
/// through the node. The server's view (`pod:8080 ← node-address:port'`) finds the
/// client's (`pod:port → VIP:80`).
#[test]
fn hairpin_snat_pairs_the_server_view_with_the_client_view() {
    let mut node = node("ct");
    let pod = node.add_pod("web", "default", 7).unwrap();
    let listener = listen(&pod, 8080);
    let vip: IpAddr = "10.96.0.21".parse().unwrap();
    node.add_service(Proto::Tcp, vip, 80, sock(pod.ipv4, 8080))
        .unwrap();
    let table = lab::nft::TABLE;
    node.nft(&format!(
        "{}add chain inet {table} nat_postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         add rule inet {table} nat_postrouting ip saddr {ip} ip daddr {ip} masquerade fully-random\n",
        lab::nft::preamble(),
        ip = pod.ipv4,
    ))
    .unwrap();
    let conntrack = conntrack(&node);

    let conn = connect(&pod, &listener, sock(vip, 80));
    assert_eq!(conn.client.src_ip, IpAddr::from(pod.ipv4));
    // Masqueraded to the address of the veth it leaves by: the node's gateway address.
    assert_eq!(conn.server.src_ip, IpAddr::from(lab::GATEWAY_V4));
    let reply = reversed(&conn.server);

    let found = conntrack
        .by_reply(&reply)
        .unwrap()
        .unwrap_or_else(|| panic!("no entry for reply {reply}"));
    assert_eq!(
        found,
        Translation {
            original: conn.client,
            reply
        }
    );
    assert!(found.is_nat());
    assert_eq!(conntrack.by_original(&conn.client).unwrap(), Some(found));
    // The node-side port is conntrack's choice, not the client's: only it can pair them.
    eprintln!(
        "hairpin: client port {}, masqueraded to {}:{}",
        conn.client.src_port, conn.server.src_ip, conn.server.src_port
    );
    let unknown = Flow {
        dst_port: reply.dst_port.wrapping_add(1),
        ..reply
    };
    assert_eq!(conntrack.by_reply(&unknown).unwrap(), None);
}
