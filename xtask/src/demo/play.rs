//! Playing the incidents: the traffic each one makes, and what its client saw.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lab::{Node, Pod, Proto, exec};

use super::{
    CORP_NAME, DNS_TIMEOUT, EXTERNAL_IP, EXTERNAL_NAME, INVENTORY_VIP, LEDGER_VIP, LEGACY_DNS_VIP,
    ORDERS_VIP, OUTAGE_QUIET, REJECTED_PORT, RESET_PORT, SYN_TIMEOUT, cluster::Cluster, objects,
};

/// What a client saw in one incident, and whether that is what the incident should cause.
pub(super) struct Outcome {
    pub(super) as_expected: bool,
}

/// The incidents' outcomes, printed as they come.
#[derive(Default)]
struct Plays {
    outcomes: Vec<Outcome>,
}

impl Plays {
    fn report(&mut self, title: &str, expect: &str, saw: String, as_expected: bool) {
        let mark = if as_expected { "ok " } else { "BAD" };
        println!("  [{mark}] {title}\n        saw: {saw}\n        netprobe should say: {expect}");
        self.outcomes.push(Outcome { as_expected });
    }
}

/// A child process killed (and reaped) when dropped, however the incident ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The node-wide outage: every forwarded TCP packet dropped, in a table of its own so
/// that removing it leaves the incidents' rules alone.
const DATAPATH_TABLE: &str = "netprobe_demo_datapath";

impl Cluster {
    /// Plays every incident; `alive` is called between them (agent still up, no Ctrl-C).
    /// `with_agent`: wait before the node-wide outage so that the agent does not mix it up
    /// with the incidents before it (it compares the pod pairs of the last 10 s).
    pub(super) fn play(
        &self,
        node: &Node,
        with_agent: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Outcome>> {
        let mut plays = Plays::default();
        let (checkout, batch) = (&self.checkout, &self.batch);
        let to = |pod: &Pod, port: u16| SocketAddr::new(IpAddr::V4(pod.ipv4), port);
        let hang = SYN_TIMEOUT + Duration::from_secs(1);
        let timed_out =
            |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::TimedOut);

        // The incidents that hang are played at once, in the background, while the quick
        // ones run: the demo waits for the timeouts once.
        alive()?;
        println!(
            "  (in the background, at once: checkout -> db, cache, worker and ledger; the lookups of batch and worker)\n"
        );
        // NetworkPolicy production/db-allow-api, enforced by the node: checkout may not
        // reach the database.
        node.drop_traffic(
            Proto::Tcp,
            Some(IpAddr::V4(checkout.ipv4)),
            Some(IpAddr::V4(self.db.ipv4)),
            Some(5432),
        )?;
        // A node firewall rule between checkout and cache, no policy at all.
        node.drop_traffic(
            Proto::Tcp,
            Some(IpAddr::V4(checkout.ipv4)),
            Some(IpAddr::V4(self.cache.ipv4)),
            Some(6379),
        )?;
        // worker's own firewall drops what reaches its port: its server never sees a SYN.
        drop_in_pod(&self.worker, 7000)?;
        // jobs/default-deny-egress, enforced by the node: batch's DNS queries are dropped.
        node.drop_traffic(Proto::Udp, Some(IpAddr::V4(batch.ipv4)), None, Some(53))?;
        // A node firewall rule, no policy: worker's DNS queries are dropped too.
        node.drop_traffic(
            Proto::Udp,
            Some(IpAddr::V4(self.worker.ipv4)),
            None,
            Some(53),
        )?;
        std::thread::scope(|scope| -> Result<()> {
            let policy = scope.spawn(|| checkout.connect_tcp(to(&self.db, 5432), hang));
            let between = scope.spawn(|| checkout.connect_tcp(to(&self.cache, 6379), hang));
            let silent = scope.spawn(|| checkout.connect_tcp(to(&self.worker, 7000), hang));
            let remote = scope
                .spawn(|| checkout.connect_tcp(SocketAddr::new(IpAddr::V4(LEDGER_VIP), 80), hang));
            // The libc resolver would retry for more than a minute; stop it after its
            // first tries.
            let give_up = DNS_TIMEOUT + Duration::from_secs(1);
            let lookup = |pod: &Pod, name: &str| -> Result<KillOnDrop> {
                let child = pod
                    .command("getent")
                    .args(["hosts", name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("running getent in pod {}", pod.name))?;
                Ok(KillOnDrop(child))
            };
            let mut lookups = [
                lookup(batch, "payment-service")?,
                lookup(&self.worker, "ledger")?,
            ];
            let started = Instant::now();

            self.play_quick(node, &mut plays, alive)?;

            let mut ended = [None, None];
            while started.elapsed() <= give_up && ended.iter().any(Option::is_none) {
                for (lookup, ended) in lookups.iter_mut().zip(ended.iter_mut()) {
                    if ended.is_none() {
                        *ended = lookup.0.try_wait()?;
                    }
                }
                alive()?;
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(lookups);
            let hung = |status: Option<std::process::ExitStatus>| match status {
                None => format!("no answer after {} s (gave up)", give_up.as_secs()),
                Some(s) => format!("getent ended early ({s})"),
            };
            let joined = |handle: std::thread::ScopedJoinHandle<'_, std::io::Result<()>>| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the client thread panicked")))
            };
            let r = joined(policy);
            plays.report(
                &format!(
                    "policy drop: checkout connects to db {}:5432 (NetworkPolicy production/db-allow-api; nft drop in the node)",
                    self.db.ipv4
                ),
                "TIMEOUT [network_policy] naming production/db-allow-api",
                describe(&r),
                timed_out(&r),
            );
            let r = joined(between);
            plays.report(
                &format!(
                    "dropped between: checkout connects to cache {}:6379 (nft drop in the node, no policy)",
                    self.cache.ipv4
                ),
                "TIMEOUT [dropped_between] (both pods on this node)",
                describe(&r),
                timed_out(&r),
            );
            let r = joined(silent);
            plays.report(
                &format!(
                    "server silent: checkout connects to worker {}:7000 (worker's own nft drops port 7000)",
                    self.worker.ipv4
                ),
                "TIMEOUT [server_silent] (the SYN reached worker's veth)",
                describe(&r),
                timed_out(&r),
            );
            let r = joined(remote);
            plays.report(
                &format!(
                    "no answer: checkout connects to ledger {LEDGER_VIP}:80 (its pod is on node {})",
                    objects::OTHER_NODE
                ),
                "TIMEOUT [no_answer] (only the client's side is on this node)",
                describe(&r),
                timed_out(&r),
            );
            plays.report(
                "DNS blocked by policy: batch$ getent hosts payment-service (jobs/default-deny-egress; nft drops udp/53 from batch)",
                "DNS_TIMEOUT [network_policy] naming jobs/default-deny-egress",
                hung(ended[0]),
                ended[0].is_none(),
            );
            plays.report(
                "DNS not answered: worker$ getent hosts ledger (nft drops udp/53 from worker, no policy)",
                "DNS_TIMEOUT [dns_no_answer]",
                hung(ended[1]),
                ended[1].is_none(),
            );
            Ok(())
        })?;

        // Healthy. The short name, as an application in namespace "production" would use:
        // the first search domain answers, so the lookup is one query per address family.
        alive()?;
        let (ok, out) = output(&mut curl(checkout, "http://payment-service/"));
        plays.report(
            "healthy: checkout$ curl http://payment-service/",
            "DNS OK (payment-service.production.svc.cluster.local) + TCP OK to 10.96.0.20:80, no cause",
            out.clone(),
            ok && out == "HTTP 200",
        );
        alive()?;
        let url = format!("http://[{}]:8080/", self.payment.ipv6);
        let (ok, out) = output(&mut curl(checkout, &url));
        plays.report(
            &format!("healthy over IPv6: checkout$ curl {url}"),
            "TCP OK (IPv6), no cause",
            out.clone(),
            ok && out == "HTTP 200",
        );

        if with_agent {
            // The agent weighs the pod pairs of the last 10 s: the pairs above must have
            // aged out by the time the outage's SYNs time out (3 s after they are sent).
            let quiet = OUTAGE_QUIET;
            println!(
                "\n  (waiting {} s: the node-wide outage comes after the pairs above have left the agent's 10 s window)\n",
                quiet.as_secs()
            );
            let until = Instant::now() + quiet;
            while Instant::now() < until {
                alive()?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }

        // The node's datapath down: every forwarded TCP packet dropped while fresh pod
        // pairs connect, from several clients to several servers.
        alive()?;
        node.nft(&format!(
            "add table inet {DATAPATH_TABLE}\n\
             add chain inet {DATAPATH_TABLE} forward {{ type filter hook forward priority -10; policy accept; }}\n\
             add rule inet {DATAPATH_TABLE} forward meta l4proto tcp drop\n"
        ))?;
        let pairs = self.outage_pairs();
        let results: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pairs
                .iter()
                .map(|(client, server, port)| {
                    scope.spawn(move || client.connect_tcp(to(server, *port), hang))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("the client thread panicked"))
                    })
                })
                .collect()
        });
        // Back up, so that the API stays explorable.
        node.nft(&format!(
            "add table inet {DATAPATH_TABLE}\ndelete table inet {DATAPATH_TABLE}\n"
        ))?;
        let failed = results.iter().filter(|r| timed_out(r)).count();
        let names: Vec<String> = pairs
            .iter()
            .map(|(c, s, port)| format!("{} -> {}:{port}", c.name, s.name))
            .collect();
        plays.report(
            &format!(
                "node datapath down: nft drops all forwarded TCP while {} connect at once",
                names.join(", ")
            ),
            "one node-level TIMEOUT [node_datapath]; the flows folded under it",
            format!("{failed} of {} connections timed out", pairs.len()),
            failed == pairs.len(),
        );
        Ok(plays.outcomes)
    }

    /// The incidents that end at once: refused, rejected, not found, found late.
    fn play_quick(
        &self,
        node: &Node,
        plays: &mut Plays,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let checkout = &self.checkout;
        let refused = |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::ConnectionRefused);

        alive()?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(self.payment.ipv4), 9090),
            Duration::from_secs(3),
        );
        plays.report(
            &format!(
                "nothing listens: checkout connects to payment {}:9090",
                self.payment.ipv4
            ),
            "REFUSED [nothing_listening] naming the pod and the ports it declares",
            describe(&r),
            refused(&r),
        );

        alive()?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(ORDERS_VIP), 80),
            Duration::from_secs(3),
        );
        plays.report(
            &format!("Service without endpoints: checkout connects to orders {ORDERS_VIP}:80"),
            "UNREACHABLE [no_ready_endpoints] (ICMP port unreachable from kube-proxy's reject)",
            describe(&r),
            refused(&r),
        );

        alive()?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(INVENTORY_VIP), 80),
            Duration::from_secs(3),
        );
        plays.report(
            &format!(
                "port mismatch: checkout connects to inventory {INVENTORY_VIP}:80 (targetPort 9091, payment listens on 8080)"
            ),
            "REFUSED [target_port_mismatch]",
            describe(&r),
            refused(&r),
        );

        // The node's firewall rejects payment's metrics port.
        alive()?;
        node.reject_service(Proto::Tcp, IpAddr::V4(self.payment.ipv4), REJECTED_PORT)?;
        let r = checkout.connect_tcp(
            SocketAddr::new(IpAddr::V4(self.payment.ipv4), REJECTED_PORT),
            Duration::from_secs(3),
        );
        plays.report(
            &format!(
                "firewall reject: checkout connects to payment {}:{REJECTED_PORT} (the node rejects it, ICMP port unreachable)",
                self.payment.ipv4
            ),
            "UNREACHABLE [destination_unreachable] naming the pod",
            describe(&r),
            refused(&r),
        );

        alive()?;
        let url = format!("http://{}:{RESET_PORT}/", self.payment.ipv4);
        let (ok, out) = output(&mut curl(checkout, &url));
        plays.report(
            &format!(
                "connection reset: checkout$ curl {url} (payment's server there closes the connection without reading it)"
            ),
            "RESET [connection_reset]",
            out.clone(),
            !ok && out.contains("reset"),
        );

        alive()?;
        let (ok, out) = output(checkout.command("dig").args([
            "+tries=1",
            "+time=3",
            &format!("@{LEGACY_DNS_VIP}"),
            CORP_NAME,
        ]));
        let status = out
            .lines()
            .find_map(|line| line.split("status: ").nth(1))
            .map(|rest| rest.split(',').next().unwrap_or(rest).to_owned());
        plays.report(
            &format!(
                "DNS server failing: checkout$ dig @{LEGACY_DNS_VIP} {CORP_NAME} (infra/legacy-dns answers SERVFAIL)"
            ),
            "SERVFAIL [dns_server_error]",
            match &status {
                Some(status) => format!("status: {status}"),
                None => out.clone(),
            },
            ok && status.as_deref() == Some("SERVFAIL"),
        );

        alive()?;
        let (ok, out) = output(checkout.command("getent").args(["hosts", "paymnt-service"]));
        plays.report(
            "wrong Service name: checkout$ getent hosts paymnt-service",
            "NXDOMAIN [name_not_found] ... did you mean payment-service?; the search path's names OK [search_path_expansion]",
            if ok { out.clone() } else { "not found".into() },
            !ok,
        );

        alive()?;
        let (ok, out) = output(checkout.command("getent").args(["hosts", EXTERNAL_NAME]));
        plays.report(
            &format!(
                "search path: checkout$ getent hosts {EXTERNAL_NAME} (found after 3 search domains)"
            ),
            "OK; the search path's names OK [search_path_expansion], no failure",
            out.split_whitespace().collect::<Vec<_>>().join(" "),
            ok && out.starts_with(&EXTERNAL_IP.to_string()),
        );
        Ok(())
    }
}

/// Drops TCP to `port` inside `pod` (its own firewall), before its server sees the SYN.
fn drop_in_pod(pod: &Pod, port: u16) -> Result<()> {
    let rules = format!(
        "add table inet pod_firewall\n\
         add chain inet pod_firewall input {{ type filter hook input priority 0; policy accept; }}\n\
         add rule inet pod_firewall input tcp dport {port} drop\n"
    );
    exec::run_with_stdin(
        pod.command(&exec::tool("nft").to_string_lossy())
            .args(["-f", "-"]),
        &rules,
    )
    .with_context(|| format!("loading nftables rules in pod {}", pod.name))?;
    Ok(())
}

/// How a connect ended, in the words a user would see.
fn describe(r: &std::io::Result<()>) -> String {
    match r {
        Ok(()) => "connected".into(),
        Err(e) if e.kind() == ErrorKind::TimedOut => "Connection timed out".into(),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "Connection refused".into(),
        Err(e) => e.to_string(),
    }
}

/// `curl` in `pod`, printing only "HTTP <status>"; `-g` lets IPv6 literals through.
fn curl(pod: &Pod, url: &str) -> Command {
    let mut cmd = pod.command("curl");
    cmd.args([
        "-sS",
        "-g",
        "-o",
        "/dev/null",
        "-w",
        "HTTP %{http_code}",
        "--max-time",
        "5",
        url,
    ]);
    cmd
}

/// Runs a client program; (success, trimmed stdout, or stderr when it failed).
fn output(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => (true, String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            (false, if err.is_empty() { out } else { err })
        }
        Err(e) => (false, format!("cannot run {}: {e}", exec::describe(cmd))),
    }
}
