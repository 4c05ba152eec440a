//! What the running agent holds and what its API lets in: capabilities dropped once the
//! programs are loaded (attaching new veths still works), and a live API that refuses
//! oversized requests and bodies and survives thousands of `follow` streams.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::e2e::{Agent, node};

const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;

/// A capability set line of /proc/PID/task/TID/status (e.g. `CapEff:`), as a bit mask.
fn cap_mask(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn capabilities_are_dropped_to_bpf_and_net_admin_on_every_thread() {
    let mut node = node("caps");
    let agent = Agent::start(&node, &[]);
    let pid = agent.child.id();
    let kept = (1u64 << CAP_BPF) | (1u64 << CAP_NET_ADMIN);
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(tasks.len() > 1, "the runtime's threads are there too");
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(cap_mask(&status, field), kept, "{} {field}", task.display());
        }
        assert_eq!(cap_mask(&status, "CapInh:"), 0);
        assert_eq!(cap_mask(&status, "CapAmb:"), 0);
    }
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        log.contains(
            "capabilities kept for attaching new veths capabilities=\"CAP_BPF,CAP_NET_ADMIN\""
        ),
        "{log}"
    );
    // What is kept is enough for a pod that comes later.
    let pod = node.add_pod("late", "default", 7).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !agent.interfaces().iter().any(|i| i.name == pod.host_if) {
        assert!(Instant::now() < deadline, "a new veth was not attached");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One raw HTTP/1.1 exchange: the status code of the answer.
fn raw_status(addr: &str, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

#[test]
fn the_live_api_refuses_oversized_requests_and_holds_many_followers() {
    let node = node("limits");
    let agent = Agent::start(&node, &[]);
    let addr = agent.base.trim_start_matches("http://").to_string();
    // Over the agent's 8 KiB URI limit, and over what http's Uri type takes at all.
    for size in [20_000, 100_000] {
        let request = format!(
            "GET /v1/verdicts?pod={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        );
        assert_eq!(raw_status(&addr, request.as_bytes()), 414, "{size}");
    }
    let body = "x".repeat(1 << 20);
    let request = format!(
        "GET /v1/verdicts HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw_status(&addr, request.as_bytes()), 413);
    assert_eq!(
        raw_status(
            &addr,
            b"GET /v1/verdicts?limit=99999999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
        400
    );

    // 2,000 clients ask to follow at once: 256 streams are served, the rest are told
    // to come back (503); the agent keeps answering, and every slot comes back when the
    // clients go.
    let rss = |pid: u32| lab::rss_kib(pid).expect("VmRSS");
    let before = rss(agent.child.id());
    let mut streams = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..2000 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"GET /v1/flows?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        streams.push(stream);
    }
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        match &head[9..12] {
            b"200" => served += 1,
            b"503" => refused += 1,
            other => panic!("unexpected {}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!((served, refused), (256, 2000 - 256));
    let during = rss(agent.child.id());
    let health: serde_json::Value = agent.get("/healthz");
    assert_eq!(health["status"], "ok");
    drop(streams);
    // Slots come back: a new follower is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"GET /v1/flows?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        if &head[9..12] == b"200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower slots were not released"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "2000 follow requests: {served} served, {refused} refused; RSS {} → {} KiB",
        before, during
    );
    assert!(during < before + 64 * 1024, "RSS grew by over 64 MiB");
}
