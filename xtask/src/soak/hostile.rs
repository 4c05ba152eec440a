//! Hostile clients against the agent's API, one scenario at a time: 2,000 idle
//! connections, 50 clients asking for `limit=10000` that never read, a slowloris dripping
//! its headers. During each: the agent's RSS, the p99 of a well-behaved client
//! (`/v1/verdicts?limit=100`, a fresh connection each time) and the tracker's lag (how
//! long after its SYN timeout a TIMEOUT verdict is on the API). Then: whether the agent
//! cut the hostile connections at its deadlines.
//!
//! The flow table is filled first (a SYN flood into a dropped port), so that each
//! `limit=10000` answer is a full one.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::OwnedFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lab::{self, Agent, Node, Pod, Proto, http_get};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
};
use serde_json::Value;

use super::{Figure, RSS_BUDGET_MIB, SYN_TIMEOUT, SynFlood, start_agent};
use crate::util;

/// What hostile clients may add to the agent's RSS, over the same agent (its table full)
/// with no hostile client; the soak's absolute budget holds too.
const RSS_GROWTH_BUDGET_MIB: f64 = 32.0;
/// A well-behaved client's answers: p99 while the API is under attack.
const P99_BUDGET: Duration = Duration::from_millis(250);
/// docs/budgets.md: a verdict is on the API ≤ 250 ms after its timeout expires.
const LAG_BUDGET: Duration = Duration::from_millis(250);
/// The agent's defaults (`--header-timeout`, `--write-timeout`): hostile connections
/// must be gone this long after them.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CUT_SLACK: Duration = Duration::from_secs(2);
/// How long the well-behaved client and the lag probes run during each scenario.
const MEASURE: Duration = Duration::from_secs(6);

const IDLE: usize = 2_000;
const NEVER_READERS: usize = 50;
const SLOWLORIS: usize = 500;

pub(super) fn run(bin: &Path) -> Result<Vec<Figure>> {
    let mut node = Node::new(&lab::unique_prefix("hostile"))?;
    let flooder = node.add_pod("flooder", "load", 2)?;
    let victim = node.add_pod("victim", "load", 3)?;
    let client = node.add_pod("client", "app", 4)?;
    let silent = node.add_pod("silent", "app", 6)?;
    node.drop_traffic(
        Proto::Tcp,
        Some(IpAddr::V4(flooder.ipv4)),
        Some(IpAddr::V4(victim.ipv4)),
        Some(5432),
    )?;
    // The lag probes' SYNs go unanswered: each is a TIMEOUT at --syn-timeout.
    node.drop_traffic(
        Proto::Tcp,
        Some(IpAddr::V4(client.ipv4)),
        Some(IpAddr::V4(silent.ipv4)),
        None,
    )?;
    let dir = util::workspace_root()
        .join("target")
        .join("netprobe-soak-hostile");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("agent.log");
    let agent = start_agent(bin, &node, &log, &[])?;
    println!(
        "\n== Hostile API clients ({IDLE} idle, {NEVER_READERS} never reading limit=10000, \
         {SLOWLORIS}-connection slowloris); agent log {}",
        log.display()
    );

    // A full table: every limit=10000 answer is 10,000 verdicts.
    let flood = SynFlood::start(&flooder, victim.ipv4, 5432, &dir)?;
    thread::sleep(Duration::from_secs(3));
    flood.stop()?;
    thread::sleep(SYN_TIMEOUT + Duration::from_secs(2));
    let (status, body) = http_get(agent.listen, "/v1/verdicts?limit=10000&verdict=TIMEOUT")?;
    anyhow::ensure!(status == 200, "GET /v1/verdicts: HTTP {status}");
    let table: Value = serde_json::from_str(&body)?;
    let verdicts = table["verdicts"].as_array().map_or(0, Vec::len);
    println!(
        "table filled: a limit=10000 answer holds {verdicts} verdicts ({} KiB)",
        body.len() / 1024
    );

    let mut probes = Probes::new(client, silent.ipv4);
    let mut figures = Vec::new();
    let quiet = measure(&agent, &mut probes)?;
    let baseline = quiet.rss_max;
    figures.extend(quiet.figures("no hostile client", baseline));

    // 2,000 connections that never send a byte.
    let connecting = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(agent.listen).context("an idle connection")?);
    }
    // Each deadline runs from its accept; the last connect returned once it was queued.
    let opened = Instant::now();
    println!(
        "{IDLE} idle connections opened in {:.1} s",
        connecting.elapsed().as_secs_f64()
    );
    thread::sleep(Duration::from_millis(500));
    let during = measure(&agent, &mut probes)?;
    figures.extend(during.figures("2,000 idle connections", baseline));
    let cut = cut_by(&mut idle, opened + HEADER_TIMEOUT + CUT_SLACK);
    figures.push(Figure {
        what: "idle connections cut at the header deadline",
        figure: format!("{cut}/{IDLE}"),
        budget: format!("all by {}s", (HEADER_TIMEOUT + CUT_SLACK).as_secs()),
        met: cut == IDLE,
    });
    drop(idle);

    // 50 clients asking for 10,000 verdicts each, reading nothing, with a small window.
    let opened = Instant::now();
    let mut never = Vec::with_capacity(NEVER_READERS);
    for _ in 0..NEVER_READERS {
        let mut stream = small_window(agent.listen)?;
        stream.write_all(b"GET /v1/verdicts?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")?;
        never.push(stream);
    }
    thread::sleep(Duration::from_millis(500));
    let during = measure(&agent, &mut probes)?;
    figures.extend(during.figures("50 clients that never read", baseline));
    let (full, refused) = first_lines(&mut never);
    let cut = cut_by(
        &mut never,
        opened + WRITE_TIMEOUT + HEADER_TIMEOUT + CUT_SLACK,
    );
    figures.push(Figure {
        what: "never-readers: served / refused (503)",
        figure: format!("{full} / {refused}"),
        budget: "≤ 3 served at once (answer budget)".into(),
        met: full + refused == NEVER_READERS && full <= 3,
    });
    figures.push(Figure {
        what: "never-readers cut (write, then header deadline)",
        figure: format!("{cut}/{NEVER_READERS}"),
        budget: format!(
            "all by {}s",
            (WRITE_TIMEOUT + HEADER_TIMEOUT + CUT_SLACK).as_secs()
        ),
        met: cut == NEVER_READERS,
    });
    drop(never);

    // A slowloris: 500 connections sending a header byte every 500 ms, forever.
    let dripper = {
        let listen = agent.listen;
        thread::spawn(move || slowloris(listen))
    };
    thread::sleep(Duration::from_millis(500));
    let during = measure(&agent, &mut probes)?;
    figures.extend(during.figures("a 500-connection slowloris", baseline));
    let cut_after = dripper.join().expect("the slowloris thread")?;
    let cut = cut_after.iter().flatten().count();
    let slowest = cut_after
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    figures.push(Figure {
        what: "slowloris connections cut at the header deadline",
        figure: format!(
            "{cut}/{SLOWLORIS}, slowest {:.1} s after its connect",
            slowest.as_secs_f64()
        ),
        budget: format!("all, each by {}s", (HEADER_TIMEOUT + CUT_SLACK).as_secs()),
        met: cut == SLOWLORIS && slowest <= HEADER_TIMEOUT + CUT_SLACK,
    });
    Ok(figures)
}

/// What one scenario did to the agent.
struct During {
    rss_max: f64,
    p99: Duration,
    requests: usize,
    failures: usize,
    lag_max: Option<Duration>,
    lags: usize,
    missed: usize,
}

impl During {
    fn figures(&self, scenario: &'static str, baseline: f64) -> Vec<Figure> {
        let what = |figure: &str| -> &'static str {
            Box::leak(format!("{scenario}: {figure}").into_boxed_str())
        };
        vec![
            Figure {
                what: what("RSS (growth)"),
                figure: format!("{:.1} MiB ({:+.1})", self.rss_max, self.rss_max - baseline),
                budget: format!("≤ {RSS_BUDGET_MIB} MiB, ≤ +{RSS_GROWTH_BUDGET_MIB}"),
                met: self.rss_max <= RSS_BUDGET_MIB
                    && self.rss_max - baseline <= RSS_GROWTH_BUDGET_MIB,
            },
            Figure {
                what: what("API p99 (well-behaved)"),
                figure: format!(
                    "{:.1} ms, {} requests, {} failed",
                    self.p99.as_secs_f64() * 1000.0,
                    self.requests,
                    self.failures
                ),
                budget: format!("≤ {} ms, none failed", P99_BUDGET.as_millis()),
                met: self.requests > 0 && self.failures == 0 && self.p99 <= P99_BUDGET,
            },
            Figure {
                what: what("tracker lag after timeout"),
                figure: match self.lag_max {
                    Some(lag) => format!(
                        "worst {:.0} ms of {} verdicts, {} missing",
                        lag.as_secs_f64() * 1000.0,
                        self.lags,
                        self.missed
                    ),
                    None => format!("no verdict, {} missing", self.missed),
                },
                budget: format!("≤ {} ms", LAG_BUDGET.as_millis()),
                met: self.missed == 0 && self.lag_max.is_some_and(|lag| lag <= LAG_BUDGET),
            },
        ]
    }
}

/// Runs the well-behaved client and the lag probes for [`MEASURE`], sampling RSS.
fn measure(agent: &Agent, probes: &mut Probes) -> Result<During> {
    let stop = Arc::new(AtomicBool::new(false));
    let listen = agent.listen;
    let client = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut took = Vec::new();
            let mut failures = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match http_get(listen, "/v1/verdicts?limit=100") {
                    Ok((200, _)) => took.push(started.elapsed()),
                    _ => failures += 1,
                }
                thread::sleep(Duration::from_millis(20));
            }
            (took, failures)
        })
    };
    let lags = {
        let (stop, mut probes) = (Arc::clone(&stop), probes.take());
        thread::spawn(move || {
            let mut lags = Vec::new();
            let mut missed = 0;
            while !stop.load(Ordering::SeqCst) {
                match probes.one(listen) {
                    Some(lag) => lags.push(lag),
                    None => missed += 1,
                }
            }
            (lags, missed, probes)
        })
    };
    let started = Instant::now();
    let mut rss_max: f64 = 0.0;
    while started.elapsed() < MEASURE {
        rss_max = rss_max.max(agent.rss_mib()?);
        thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    let (mut took, failures) = client.join().expect("the well-behaved client");
    let (lags, missed, back) = lags.join().expect("the lag probes");
    *probes = back;
    took.sort();
    let p99 = took
        .get((took.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    Ok(During {
        rss_max,
        p99,
        requests: took.len(),
        failures,
        lag_max: lags.iter().max().copied(),
        lags: lags.len(),
        missed,
    })
}

/// Connection attempts from a pod into a dropped port, each on its own port so that its
/// verdict is found by port.
struct Probes {
    client: Option<Pod>,
    silent: Ipv4Addr,
    next_port: u16,
}

impl Probes {
    fn new(client: Pod, silent: Ipv4Addr) -> Self {
        Self {
            client: Some(client),
            silent,
            next_port: 20_000,
        }
    }

    fn take(&mut self) -> Self {
        Self {
            client: self.client.take(),
            silent: self.silent,
            next_port: self.next_port,
        }
    }

    /// One SYN, then how long after its timeout (--syn-timeout + 100 ms) the TIMEOUT
    /// verdict was on the API; `None` if it was not within 3 s.
    fn one(&mut self, api: SocketAddr) -> Option<Duration> {
        let port = self.next_port;
        self.next_port += 1;
        let client = self.client.as_ref().expect("the probe's pod");
        let to = SocketAddr::new(IpAddr::V4(self.silent), port);
        let sent = Instant::now();
        // Gives up before the first retransmission: one SYN.
        let _ = client.connect_tcp(to, Duration::from_millis(300));
        let due = sent + SYN_TIMEOUT + Duration::from_millis(100);
        let path = format!("/v1/verdicts?verdict=TIMEOUT&port={port}&limit=10");
        while sent.elapsed() < Duration::from_secs(4) {
            if let Ok((200, body)) = http_get(api, &path)
                && body.contains("\"TIMEOUT\"")
            {
                return Some(Instant::now().saturating_duration_since(due));
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// A connection whose receive window is 4 KiB (set before connecting): an answer cannot
/// hide in the client's socket buffer.
fn small_window(to: SocketAddr) -> Result<TcpStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::RcvBuf, &4096)?;
    let SocketAddr::V4(v4) = to else {
        anyhow::bail!("the API listens on IPv4 here")
    };
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(*v4.ip(), v4.port())),
    )?;
    Ok(TcpStream::from(fd))
}

/// How many answers began with 200 and with 503 (a peek at the first bytes).
fn first_lines(streams: &mut [TcpStream]) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for stream in streams {
        let mut head = [0u8; 12];
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.read_exact(&mut head).is_ok() {
            match &head[9..12] {
                b"200" => ok += 1,
                b"503" => refused += 1,
                _ => {}
            }
        }
    }
    (ok, refused)
}

/// How many of `streams` the agent closed by `deadline` (reading what is left).
fn cut_by(streams: &mut [TcpStream], deadline: Instant) -> usize {
    let mut cut = 0;
    let mut sink = vec![0u8; 1 << 16];
    for stream in streams {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = stream.set_read_timeout(Some(left));
            match stream.read(&mut sink) {
                Ok(0) => {
                    cut += 1;
                    break;
                }
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                    cut += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    cut
}

/// Opens [`SLOWLORIS`] connections and drips one header byte on each every 500 ms; returns,
/// for each, how long after its connect the agent cut it (`None`: still open long after
/// the header deadline). Each is timed from its own connect, so a slow connect on a busy
/// machine does not count against the agent.
fn slowloris(to: SocketAddr) -> Result<Vec<Option<Duration>>> {
    const DRIP: Duration = Duration::from_millis(500);
    const LOOK: Duration = Duration::from_millis(50);
    let header = b"GET /v1/verdicts HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut streams = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        let stream = TcpStream::connect(to)?;
        stream.set_nonblocking(true)?;
        streams.push((stream, Instant::now(), None));
    }
    let give_up = Instant::now() + HEADER_TIMEOUT + CUT_SLACK + Duration::from_secs(10);
    let (mut sent, mut next_drip) = (0, Instant::now());
    while Instant::now() < give_up {
        let drip = Instant::now() >= next_drip;
        let byte = header.get(sent).copied().unwrap_or(b'a');
        if drip {
            sent += 1;
            next_drip += DRIP;
        }
        for (stream, connected, cut_after) in streams.iter_mut().filter(|(.., c)| c.is_none()) {
            let mut peek = [0u8; 256];
            // EOF, a reset, or the agent's 408: the agent gave up on this request.
            let cut = match stream.read(&mut peek) {
                Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
                Ok(_) => true,
            };
            if cut || (drip && stream.write_all(&[byte]).is_err()) {
                *cut_after = Some(connected.elapsed());
            }
        }
        if streams.iter().all(|(.., cut_after)| cut_after.is_some()) {
            break;
        }
        thread::sleep(LOOK);
    }
    Ok(streams
        .into_iter()
        .map(|(.., cut_after)| cut_after)
        .collect())
}
