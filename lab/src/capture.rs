//! A packet capture on one of the node's interfaces, read back with tshark: the oracle
//! for what a veth carried, written by nobody here.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use super::{Node, Pod};
use crate::exec;

/// The discard port (RFC 863): the capture's markers go there, and nothing tracks it.
const DISCARD_PORT: u16 = 9;

/// `tshark` capturing on one interface until [`Capture::finish`].
pub struct Capture {
    child: Child,
    file: PathBuf,
    /// tshark's line for each packet it has read.
    seen: mpsc::Receiver<String>,
    /// The namespace the interface is in (markers are sent from it); `None`: this
    /// process's own.
    netns: Option<String>,
    /// An address routed through the interface: markers are sent there.
    marker: SocketAddr,
}

impl Capture {
    /// Starts capturing on `pod`'s host-side veth and returns once packets are seen
    /// there: tshark says it captures before it does, so UDP datagrams to the pod's
    /// discard port (9, which nothing tracks) are sent until one shows up.
    pub fn on_pod_veth(node: &Node, pod: &Pod) -> Result<Capture> {
        let interface = pod.host_if.as_str();
        let file = std::env::temp_dir().join(format!("netprobe-{interface}.pcapng"));
        Self::start(Some(node.netns()), interface, IpAddr::V4(pod.ipv4), file)
    }

    /// The same on `interface` of this process's own namespace (a container's veth on
    /// the host), with markers sent to `target` (the container's address) and the
    /// capture written to `file`.
    pub fn on_interface(interface: &str, target: IpAddr, file: PathBuf) -> Result<Capture> {
        Self::start(None, interface, target, file)
    }

    fn start(
        netns: Option<&str>,
        interface: &str,
        target: IpAddr,
        file: PathBuf,
    ) -> Result<Capture> {
        let _ = std::fs::remove_file(&file);
        let tshark = exec::tool("tshark");
        let mut command = match netns {
            Some(netns) => super::node::netns_command(netns, &tshark.to_string_lossy()),
            None => Command::new(tshark),
        };
        let mut child = command
            // -P -l: print each packet as it is captured, as well as writing the file.
            .args(["-n", "-l", "-P", "-i", interface, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tshark (Debian's tshark package)")?;
        let stdout = child.stdout.take().expect("piped");
        let (seen_tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = seen_tx.send(line);
            }
        });
        let capture = Capture {
            child,
            file,
            seen,
            netns: netns.map(str::to_owned),
            marker: SocketAddr::new(target, DISCARD_PORT),
        };
        capture.mark()?;
        Ok(capture)
    }

    /// Sends markers, from a port of their own, until tshark has read one: every packet
    /// before it was read too.
    fn mark(&self) -> Result<()> {
        let bind = || UdpSocket::bind("0.0.0.0:0");
        let socket = match &self.netns {
            Some(netns) => super::in_netns(netns, bind)?,
            None => bind()?,
        };
        // As tshark -n prints it: "… UDP 65 41234 → 9 Len=23".
        let tag = format!(" {} → {} ", socket.local_addr()?.port(), DISCARD_PORT);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            socket.send_to(b"netprobe capture marker", self.marker)?;
            let wait = Instant::now() + Duration::from_millis(100);
            while let Ok(line) = self
                .seen
                .recv_timeout(wait.saturating_duration_since(Instant::now()))
            {
                if line.contains(&tag) {
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "tshark does not capture the packets to {}",
                self.marker
            );
        }
    }

    /// Stops the capture; the packets matching each display filter are counted.
    pub fn finish(mut self, filters: &[&str]) -> Result<Vec<usize>> {
        // Caught up first: tshark drops what it has not read yet when interrupted.
        self.mark()?;
        // SIGINT: tshark writes out what it has and exits.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        // Its exit status after SIGINT varies (255 through `ip netns exec`): the file is
        // what counts, and reading it fails if it is not whole.
        self.child.wait()?;
        // All at once: each read is mostly tshark starting up.
        let reads: Vec<_> = filters
            .iter()
            .map(|filter| {
                Command::new(exec::tool("tshark"))
                    .args(["-n", "-r"])
                    .arg(&self.file)
                    .args(["-Y", filter])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("reading the capture with tshark")
            })
            .collect::<Result<_>>()?;
        let mut counts = Vec::new();
        for (read, filter) in reads.into_iter().zip(filters) {
            let out = read.wait_with_output()?;
            ensure!(
                out.status.success(),
                "tshark -Y {filter:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            counts.push(String::from_utf8_lossy(&out.stdout).lines().count());
        }
        Ok(counts)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}
