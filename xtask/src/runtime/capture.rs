//! A capture on a container's host-side veth, read back with tshark: what the veth
//! really carried, to hold the agent's counts against.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use xtask::exec;

/// The discard port (RFC 863): markers go there, and the agent tracks nothing on it.
const DISCARD_PORT: u16 = 9;

pub struct Capture {
    child: Child,
    file: PathBuf,
    seen: mpsc::Receiver<String>,
    /// A container address routed through the veth: markers are sent there from the host.
    marker: SocketAddr,
}

impl Capture {
    /// Captures on `veth` (the host side of the container at `ip`), and returns once it
    /// sees packets: tshark says it captures before it does.
    pub fn on(veth: &str, ip: IpAddr, dir: &std::path::Path) -> Result<Capture> {
        let file = dir.join(format!("{veth}.pcapng"));
        let _ = std::fs::remove_file(&file);
        let mut child = exec::command("tshark", ["-n", "-l", "-P", "-i", veth, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tshark")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let capture = Capture {
            child,
            file,
            seen,
            marker: SocketAddr::new(ip, DISCARD_PORT),
        };
        capture.mark()?;
        Ok(capture)
    }

    /// Sends markers until tshark has read one: everything before it was read too.
    fn mark(&self) -> Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        // As tshark -n prints it: "… UDP 65 41234 → 9 Len=23".
        let tag = format!(" {} → {DISCARD_PORT} ", socket.local_addr()?.port());
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

    /// Stops the capture and counts the packets matching each display filter.
    pub fn finish(mut self, filters: &[String]) -> Result<Vec<usize>> {
        self.mark()?;
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
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

/// The display filter for what the agent counts as `count` on a flow from the client to
/// `server:port` (`qname` for DNS, without the trailing dot as tshark shows it).
pub fn filter(count: &str, server: IpAddr, port: u16, qname: Option<&str>) -> String {
    let dns = qname
        .map(|q| format!(" && dns.qry.name == \"{}\"", q.trim_end_matches('.')))
        .unwrap_or_default();
    match count {
        "syn" => format!(
            "ip.dst == {server} && tcp.dstport == {port} && tcp.flags.syn == 1 && tcp.flags.ack == 0"
        ),
        "syn_ack" => format!(
            "ip.src == {server} && tcp.srcport == {port} && tcp.flags.syn == 1 && tcp.flags.ack == 1"
        ),
        "rst" => format!("ip.addr == {server} && tcp.port == {port} && tcp.flags.reset == 1"),
        "icmp_unreachable" => format!("ip.src == {server} && icmp.type == 3"),
        "dns_queries" => {
            format!("ip.dst == {server} && udp.dstport == {port} && dns.flags.response == 0{dns}")
        }
        "dns_responses" => {
            format!("ip.src == {server} && udp.srcport == {port} && dns.flags.response == 1{dns}")
        }
        other => panic!("no capture filter for count {other}"),
    }
}
