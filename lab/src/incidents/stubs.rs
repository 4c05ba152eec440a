//! Misbehaving servers the incidents need: one that resets, one that answers SERVFAIL.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::Pod;
use anyhow::{Context, Result};

/// A misbehaving server inside a pod, on a thread of its own until dropped.
pub(crate) struct Stub {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    fn spawn(name: String, serve: impl FnOnce(&AtomicBool) + Send + 'static) -> Result<Stub> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || serve(&stop))?
        };
        Ok(Stub {
            stop,
            thread: Some(thread),
        })
    }

    /// Accepts on `port` of `pod` and closes each connection once its request arrived,
    /// without reading it: the kernel answers with a RST ("Connection reset by peer").
    pub(crate) fn reset_tcp(pod: &Pod, port: u16) -> Result<Stub> {
        let socket = pod
            .in_netns(move || TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))
            .with_context(|| format!("listening on port {port} in pod {}", pod.name))?;
        // Polled so that drop can stop it without a wake-up connection.
        socket.set_nonblocking(true)?;
        Stub::spawn(format!("reset :{port}"), move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match socket.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = conn.peek(&mut [0; 1]);
                        drop(conn);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
    }

    /// A DNS server on port 53 of `pod` answering SERVFAIL to every query, as one whose
    /// upstream is gone does.
    pub(crate) fn servfail_dns(pod: &Pod) -> Result<Stub> {
        let socket = pod
            .in_netns(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53)))
            .with_context(|| format!("listening on udp/53 in pod {}", pod.name))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Stub::spawn("servfail :53".into(), move |stop| {
            let mut buf = [0; 1500];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = servfail(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        })
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The SERVFAIL response to a DNS query: its header (answer, authority and additional
/// sections empty) and question; `None` for what is not a query.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question's name: labels up to the root, then type and class.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        end += len;
    }
    end += 4;
    let mut reply = query.get(..end)?.to_vec();
    // QR, the query's opcode and RD; RA, rcode 2 (SERVFAIL); one question, nothing else.
    reply[2] = 0x80 | (query[2] & 0x79);
    reply[3] = 0x80 | 2;
    reply[4..6].copy_from_slice(&[0, 1]);
    reply[6..12].fill(0);
    Some(reply)
}
