//! Steady traffic between two pods of the sick agents' node while the dashboard is
//! evaluated: a TCP connection and a DNS query every 200 ms, so that the latency panels
//! (rates over the last minute) have fresh handshakes and DNS exchanges, timed by a real
//! agent (the lossy node's, `node` lossy-node) from real packets.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;
use lab::{self, DnsServer, Listener, Pod, QueryType};

/// The server pod's TCP port and the name its DNS server answers.
pub const TCP_PORT: u16 = 8080;
const NAME: &str = "steady.lab.example";
/// Between two rounds (a connection and a query).
const PACE: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(1);

pub struct SteadyTraffic {
    stop: Arc<AtomicBool>,
    /// Connections and answered queries so far.
    done: Arc<[AtomicU64; 2]>,
    thread: Option<JoinHandle<()>>,
    // Stopped after the thread (fields drop in order).
    _listener: Listener,
    _dns: DnsServer,
}

impl SteadyTraffic {
    pub fn start(client: &Pod, server: &Pod) -> Result<SteadyTraffic> {
        let listener = server.listen_tcp(TCP_PORT)?;
        let dns = lab::start_dns(server, &[(NAME, server.ipv4.into())])?;
        let tcp = SocketAddr::from((server.ipv4, TCP_PORT));
        let udp = SocketAddr::from((server.ipv4, 53));
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let thread = {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if client.connect_tcp(tcp, TIMEOUT).is_ok() {
                        done[0].fetch_add(1, Ordering::SeqCst);
                    }
                    if client.dns_query(udp, NAME, QueryType::A, TIMEOUT).is_ok() {
                        done[1].fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(PACE);
                }
            })
        };
        Ok(SteadyTraffic {
            stop,
            done,
            thread: Some(thread),
            _listener: listener,
            _dns: dns,
        })
    }

    /// Connections made and DNS queries answered so far.
    pub fn done(&self) -> (u64, u64) {
        (
            self.done[0].load(Ordering::SeqCst),
            self.done[1].load(Ordering::SeqCst),
        )
    }
}

impl Drop for SteadyTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
