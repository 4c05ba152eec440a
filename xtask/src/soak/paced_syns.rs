//! SYNs at a set rate from a pod, for the soak's ramp: trafgen writes a trace of SYNs
//! (one per source port) and tcpreplay replays it at the rate asked, from the pod's `eth0`.
//!
//! Why not hping3 `-i u<N>`: it re-arms an itimer per packet and tops out at ~12–17 k/s
//! whatever is asked; eight of them at once reach ~40 k/s, both cores busy. tcpreplay
//! keeps to its schedule (catching up after a late wake-up); what it costs is mostly each
//! SYN's way through the veth and the node, which runs on its core.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use lab::{Node, Pod, exec};
use nix::sys::resource::{UsageWho, getrusage};

/// One SYN per source port: the trace loops, the ports recycle as hping3's do.
const SOURCE_PORTS: (u16, u16) = (1024, 65535);
/// The most one tcpreplay is asked for: each SYN's way through the veth and the node (the
/// probe's program included) runs on its sender's core, ~75 k/s filling one here.
pub(crate) const SENDER_MAX_RATE: u32 = 50_000;

/// A pcap of SYNs from `from` to `to:port`, addressed to the node's end of `from`'s veth
/// (so the node routes them, as it would a pod's own), written into `dir`.
pub(crate) fn write_trace(
    node: &Node,
    from: &Pod,
    to: Ipv4Addr,
    port: u16,
    dir: &Path,
) -> Result<PathBuf> {
    let mac = |cmd: &mut std::process::Command, path: String| -> Result<String> {
        Ok(exec::run(cmd.arg(path))?.trim().to_owned())
    };
    let gateway = mac(
        &mut node.command("cat"),
        format!("/sys/class/net/{}/address", from.host_if),
    )?;
    let own = mac(
        &mut from.command("cat"),
        "/sys/class/net/eth0/address".into(),
    )?;
    let (first, last) = SOURCE_PORTS;
    let packet = format!(
        "{{ eth(da={gateway}, sa={own}), ipv4(sa={}, da={to}), \
         tcp(sp=dinc({first}, {last}), dp={port}, seq=drnd(), win=512, syn) }}",
        from.ipv4
    );
    let trace = dir.join(format!("syns-{}.pcap", from.name));
    let count = u32::from(last - first) + 1;
    // -P 1: one writer (trafgen forks one per CPU otherwise); --no-sock-mem, -Q: leave the
    // machine's socket buffers and IRQ affinities alone.
    exec::run(
        exec::command("trafgen", ["-P", "1", "--no-sock-mem", "-Q", "-C"])
            .arg("-o")
            .arg(&trace)
            .args(["-n", &count.to_string(), &packet]),
    )
    .context("writing the SYN trace with trafgen")?;
    Ok(trace)
}

/// tcpreplay sending a trace's SYNs at a set rate from a pod, for a set time.
pub(crate) struct PacedSyns {
    child: Child,
    out: PathBuf,
    seconds: Duration,
}

/// What tcpreplay says it sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub packets: u64,
    pub seconds: f64,
}

impl PacedSyns {
    /// `trace` replayed in a loop at `rate` packets/s from `from`'s `eth0` for `seconds`;
    /// its output in `dir`, named after `name`.
    pub(crate) fn start(
        from: &Pod,
        trace: &Path,
        rate: u32,
        seconds: Duration,
        dir: &Path,
        name: &str,
    ) -> Result<PacedSyns> {
        let out = dir.join(format!("tcpreplay-{name}.out"));
        let log = File::create(&out)?;
        // nano: sleeps between sends (gtod spins a core); -K: the trace is read once.
        let child = from
            .command("tcpreplay")
            .args([
                "-i",
                "eth0",
                "-K",
                "--loop=0",
                "--timer=nano",
                "--no-flow-stats",
            ])
            .arg(format!("--pps={rate}"))
            .arg(format!("--duration={}", seconds.as_secs()))
            .arg(trace)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tcpreplay")?;
        Ok(PacedSyns {
            child,
            out,
            seconds,
        })
    }

    /// Waits until it is done (its `--duration`, and a grace for a starved machine); what
    /// it sent.
    pub(crate) fn wait(mut self) -> Result<Sent> {
        let deadline = Instant::now() + self.seconds + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "tcpreplay did not stop after its {} s",
                self.seconds.as_secs()
            );
            thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        ensure!(status.success(), "tcpreplay failed ({status}):\n{text}");
        let (packets, seconds) = parse_sent(&text)
            .with_context(|| format!("no \"Actual:\" line from tcpreplay:\n{text}"))?;
        Ok(Sent { packets, seconds })
    }
}

impl Drop for PacedSyns {
    fn drop(&mut self) {
        // Not waited for (an error on the way): it must not outlive the task.
        exec::terminate(&mut self.child, Duration::from_secs(2));
    }
}

/// User and system CPU seconds of this process's reaped children: around senders started
/// and waited for while nothing else runs, theirs.
pub(crate) fn children_cpu() -> Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// Packets and seconds of tcpreplay's "Actual: N packets (B bytes) sent in S seconds" line.
fn parse_sent(text: &str) -> Option<(u64, f64)> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Actual:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let packets = words.first()?.parse().ok()?;
    let at = words.iter().position(|w| *w == "in")?;
    let seconds = words.get(at + 1)?.parse().ok()?;
    Some((packets, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpreplay_statistics_are_read() {
        let text = "File Cache is enabled\n\
                    Actual: 125000 packets (6750000 bytes) sent in 5.00 seconds\n\
                    Rated: 1349962.8 Bps, 10.79 Mbps, 24999.31 pps\n\
                    Statistics for network device: eth0\n\
                    \tSuccessful packets:        125000\n";
        assert_eq!(parse_sent(text), Some((125_000, 5.0)));
        assert_eq!(parse_sent("garbage"), None);
    }
}
