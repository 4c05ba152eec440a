//! Hostile clients over real sockets (no root): the connection cap, a slowloris and an
//! idle keep-alive connection cut at the header deadline, a client that never reads
//! cut at the write deadline with what its answer held given back.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{TimeZone, Utc};
use probe_agent::{
    metrics::Metrics,
    model::{Counts, Flow, FlowEvent, InterfaceStatus, Protocol, Verdict, VerdictKind},
    serve::{self, AppState, FlowSource, HeadFilter, ServeOptions},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{broadcast, oneshot},
};

mod common;

use common::dechunk;

/// A node with `n` TIMEOUT verdicts.
struct Many {
    verdicts: Vec<Verdict>,
    live: broadcast::Sender<FlowEvent>,
}

impl Many {
    fn new(n: u32) -> Self {
        let verdicts = (0..n)
            .map(|i| Verdict {
                flow: Flow {
                    protocol: Protocol::Tcp,
                    src_ip: IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i)),
                    src_port: 40_000,
                    dst_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)),
                    dst_port: 80,
                },
                verdict: VerdictKind::Timeout,
                // ~1 KiB of JSON each: a full answer (~10 MB) is more than socket
                // buffers on both ends can take.
                reason: "3 SYNs in 3.0s and no answer: packets are dropped on the path. "
                    .repeat(10)
                    .into(),
                cause: None,
                next: None,
                counts: Counts::default(),
                first_seen: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                last_seen: Utc.timestamp_opt(1_800_000_000 + i64::from(i), 0).unwrap(),
                interface: "veth0".into(),
                src: None,
                dst: None,
                dns: None,
                backend: None,
            })
            .collect();
        Self {
            verdicts,
            live: broadcast::channel(4).0,
        }
    }
}

impl FlowSource for Many {
    fn verdicts(
        &self,
        head: &HeadFilter,
        keep: &dyn Fn(&Verdict) -> bool,
        limit: usize,
    ) -> Vec<Verdict> {
        let kept: Vec<Verdict> = self
            .verdicts
            .iter()
            .filter(|v| head(&v.flow, v.verdict, v.cause) && keep(v))
            .cloned()
            .collect();
        kept[kept.len().saturating_sub(limit)..].to_vec()
    }
    fn events(&self, _: &dyn Fn(&FlowEvent) -> bool, _: usize) -> Vec<FlowEvent> {
        Vec::new()
    }
    fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.live.subscribe()
    }
    fn interfaces(&self) -> Vec<InterfaceStatus> {
        Vec::new()
    }
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

async fn server(source: Many, options: ServeOptions) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState::new(Arc::new(source), Arc::new(Metrics::default()));
    tokio::spawn(serve::serve_with(listener, state, options, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn options(max_connections: usize, header: Duration, write: Duration) -> ServeOptions {
    ServeOptions {
        max_connections,
        header_timeout: header,
        write_timeout: write,
        tls: None,
    }
}

/// Whether the server closed `stream` within `within` (EOF or reset on read).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head[9..12].parse().unwrap(), dechunk(body))
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let (addr, _stop) = server(
        Many::new(1),
        options(4, Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server take the four before the fifth comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut fifth, Duration::from_secs(2)).await);
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "a freed slot takes a new connection");
}

#[tokio::test]
async fn a_slowloris_and_an_idle_connection_are_cut_at_the_header_deadline() {
    let (addr, _stop) = server(
        Many::new(1),
        options(64, Duration::from_millis(500), Duration::from_secs(30)),
    )
    .await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let header = b"GET /v1/verdicts HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let dripping = async {
        for byte in header
            .iter()
            .chain(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), dripping)
        .await
        .expect("the drip ends when the server closes");
    assert!(closed_within(&mut slow, Duration::from_secs(1)).await);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(closed_within(&mut idle, Duration::from_millis(200)).await);

    // A keep-alive connection gets the same deadline between its requests.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    assert!(closed_within(&mut kept, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn clients_that_never_read_hold_a_bounded_share_until_the_write_deadline() {
    let (addr, _stop) = server(
        Many::new(10_000),
        options(64, Duration::from_secs(10), Duration::from_millis(800)),
    )
    .await;
    // Each asks for 10,000 verdicts (~10 MB of JSON) and reads nothing.
    let mut never = Vec::new();
    for _ in 0..3 {
        // A small window, set before connecting: the answer cannot hide in socket buffers.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /v1/verdicts?limit=10000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        never.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The budget holds three full answers: a fourth is refused, a small one still served.
    let (status, body) = get(addr, "/v1/verdicts?limit=10000").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many large answers"), "{body}");
    let (status, body) = get(addr, "/v1/verdicts?limit=100").await;
    assert_eq!(status, 200);
    let small: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(small["verdicts"].as_array().unwrap().len(), 100);

    // At the write deadline the silent clients are dropped, and their shares come back.
    let mut received = Vec::new();
    for stream in &mut never {
        let started = Instant::now();
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0;
        // Draining now would unblock the server: wait past the deadline first.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        received.push(total);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let (status, body) = get(addr, "/v1/verdicts?limit=10000").await;
    assert_eq!(status, 200);
    let full: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(full["verdicts"].as_array().unwrap().len(), 10_000);
    assert_eq!(full["node"], serde_json::json!([]));
    // What the kernel's socket buffers took before the deadline, never the whole answer.
    for total in received {
        assert!(
            total < body.len(),
            "cut short: {total} of {} bytes",
            body.len()
        );
    }
    assert_eq!(
        full["verdicts"][9_999]["flow"]["src_ip"], "10.244.39.15",
        "the newest last"
    );
}
