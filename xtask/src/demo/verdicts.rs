//! Checking the agent's verdicts: each incident's verdict, cause and reason, as
//! `/v1/verdicts` lists them.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use lab::Pod;
use serde_json::Value;

use super::{
    CORP_NAME, EXTERNAL_NAME, INVENTORY_VIP, LEDGER_VIP, LEGACY_DNS_VIP, ORDERS_VIP, PAYMENT_VIP,
    REJECTED_PORT, RESET_PORT, agent::Agent, cluster::Cluster, http_get, objects,
};

impl Cluster {
    /// Looks for each incident's verdict and cause in `/v1/verdicts`; prints the result
    /// and returns what is missing or wrong.
    pub(super) fn check_verdicts(&self, agent: &Agent) -> Result<Vec<String>> {
        let get = |query: &str| -> Result<Value> {
            let path = format!("/v1/verdicts?limit=10000{query}");
            let (status, body) = http_get(agent.listen, &path)?;
            ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
            serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
        };
        let flows_of = |json: &Value| -> Result<Vec<Flow>> {
            Ok(json["verdicts"]
                .as_array()
                .context("GET /v1/verdicts: no \"verdicts\" array")?
                .iter()
                .map(Flow::from_json)
                .collect())
        };
        // Every flow, the ones folded under a node-level verdict included.
        let expanded = get("&expand=true")?;
        let flows = flows_of(&expanded)?;
        let listed = get("")?;
        let node_verdicts = listed["node"].as_array().cloned().unwrap_or_default();

        let c4 = IpAddr::V4(self.checkout.ipv4);
        let c6 = IpAddr::V6(self.checkout.ipv6);
        let v4 = |pod: &Pod| IpAddr::V4(pod.ipv4);
        let from = |pod: &Pod| IpAddr::V4(pod.ipv4);
        let payment_name = objects::pod_name("payment");
        let mut expectations: Vec<Expect> = vec![
            Expect::new("OK", None, "checkout resolves payment-service", {
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_is("payment-service.production.svc.cluster.local."))
            }),
            Expect::new("OK", None, "checkout -> payment-service:80", {
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(PAYMENT_VIP), 80))
            }),
            Expect::new("OK", None, "checkout -> payment over IPv6", {
                let p6 = IpAddr::V6(self.payment.ipv6);
                Box::new(move |f: &Flow| f.src == Some(c6) && f.to(p6, 8080))
            }),
            Expect::new(
                "TIMEOUT",
                Some("network_policy"),
                "checkout -> db:5432",
                {
                    let db = v4(&self.db);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(db, 5432))
                },
            )
            .reason_has("NetworkPolicy production/db-allow-api"),
            Expect::new(
                "REFUSED",
                Some("nothing_listening"),
                "checkout -> payment:9090",
                {
                    let p = v4(&self.payment);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(p, 9090))
                },
            )
            .reason_has(&format!("nothing listens on port 9090 of pod production/{payment_name}"))
            .reason_has("8080/TCP (http)"),
            Expect::new(
                "UNREACHABLE",
                Some("no_ready_endpoints"),
                "checkout -> orders:80",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(ORDERS_VIP), 80)),
            )
            .reason_has(&format!(
                "Service production/orders has no ready endpoints: its selector app=orders matches 1 pod, 1 not ready ({})",
                objects::ORDERS_POD
            )),
            Expect::new(
                "REFUSED",
                Some("target_port_mismatch"),
                "checkout -> inventory:80",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(INVENTORY_VIP), 80)),
            )
            .reason_has(&format!(
                "Service production/inventory port 80 sends to targetPort 9091, but pod {payment_name} declares 8080/TCP (http)"
            )),
            Expect::new(
                "NXDOMAIN",
                Some("name_not_found"),
                "checkout resolves paymnt-service",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_starts("paymnt-service.")),
            )
            .reason_has("did you mean payment-service?"),
            Expect::new(
                "OK",
                Some("search_path_expansion"),
                "checkout resolves paymnt-service (search path)",
                Box::new(move |f: &Flow| {
                    f.src == Some(c4) && f.qname_starts("paymnt-service.production.svc.cluster.local.")
                }),
            ),
            Expect::new(
                "OK",
                None,
                &format!("checkout resolves {EXTERNAL_NAME}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_is(&format!("{EXTERNAL_NAME}."))),
            ),
            Expect::new(
                "OK",
                Some("search_path_expansion"),
                &format!("checkout resolves {EXTERNAL_NAME} (search path)"),
                Box::new(move |f: &Flow| {
                    f.src == Some(c4)
                        && f.qname_starts(&format!("{EXTERNAL_NAME}.production.svc.cluster.local."))
                }),
            ),
            Expect::new(
                "DNS_TIMEOUT",
                Some("network_policy"),
                "batch resolves payment-service",
                {
                    let b = from(&self.batch);
                    Box::new(move |f: &Flow| f.src == Some(b))
                },
            )
            .reason_has("NetworkPolicy jobs/default-deny-egress"),
            Expect::new(
                "TIMEOUT",
                Some("dropped_between"),
                "checkout -> cache:6379",
                {
                    let cache = v4(&self.cache);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(cache, 6379))
                },
            )
            .reason_has(&format!("both ends are on node {}", objects::NODE)),
            Expect::new(
                "TIMEOUT",
                Some("server_silent"),
                "checkout -> worker:7000",
                {
                    let worker = v4(&self.worker);
                    Box::new(move |f: &Flow| f.src == Some(c4) && f.to(worker, 7000))
                },
            )
            .reason_has(&format!(
                "the SYN reached pod production/{}",
                objects::pod_name("worker")
            )),
        ];
        let payment = v4(&self.payment);
        expectations.extend([
            Expect::new(
                "TIMEOUT",
                Some("no_answer"),
                "checkout -> ledger:80",
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(IpAddr::V4(LEDGER_VIP), 80)),
            )
            .reason_has("only the client side was seen"),
            Expect::new(
                "DNS_TIMEOUT",
                Some("dns_no_answer"),
                "worker resolves ledger",
                {
                    let w = from(&self.worker);
                    Box::new(move |f: &Flow| f.src == Some(w) && f.qname.is_some())
                },
            )
            .reason_has("kube-system/kube-dns (10.96.0.10) never answered"),
            Expect::new(
                "UNREACHABLE",
                Some("destination_unreachable"),
                &format!("checkout -> payment:{REJECTED_PORT}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(payment, REJECTED_PORT)),
            )
            .reason_has(&format!(
                "pod production/{payment_name} is unreachable on port {REJECTED_PORT}"
            )),
            Expect::new(
                "RESET",
                Some("connection_reset"),
                &format!("checkout -> payment:{RESET_PORT}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.to(payment, RESET_PORT)),
            ),
            Expect::new(
                "SERVFAIL",
                Some("dns_server_error"),
                &format!("checkout resolves {CORP_NAME}"),
                Box::new(move |f: &Flow| f.src == Some(c4) && f.qname_starts(CORP_NAME)),
            )
            .reason_has(&format!("infra/legacy-dns ({LEGACY_DNS_VIP})")),
        ]);
        for (client, server, port) in self.outage_pairs() {
            let (c, s) = (from(client), v4(server));
            expectations.push(Expect::new(
                "TIMEOUT",
                Some("node_datapath"),
                &format!("{} -> {}:{port} (outage)", client.name, server.name),
                Box::new(move |f: &Flow| f.src == Some(c) && f.to(s, port)),
            ));
        }

        println!(
            "\n== Did every incident get its verdict and cause? ({} verdicts tracked)\n",
            flows.len()
        );
        let mut missing = Vec::new();
        for expect in &expectations {
            if let Err(problem) = expect.check(&flows) {
                missing.push(problem);
            }
        }

        // The node-level verdict, and the rows folded under it.
        let node = node_verdicts.iter().find(|n| n["cause"] == "node_datapath");
        match node {
            Some(n) => println!(
                "  [ok ] {} node_datapath: {}\n        node {}: {} failing pairs of {}, from {} pods, {} flows; next: {}",
                n["verdict"].as_str().unwrap_or_default(),
                n["reason"].as_str().unwrap_or_default(),
                objects::NODE,
                n["failing_pairs"],
                n["pairs"],
                n["sources"],
                n["flows"],
                n["next"].as_str().unwrap_or("-"),
            ),
            None => {
                println!(
                    "  [BAD] no node-level verdict node_datapath: \"node\" is {node_verdicts:?}"
                );
                missing.push("node-level node_datapath verdict".into());
            }
        }
        let listed_flows = flows_of(&listed)?;
        let unfolded = listed_flows
            .iter()
            .filter(|f| f.cause.as_deref() == Some("node_datapath"))
            .count();
        if unfolded > 0 {
            println!("  [BAD] {unfolded} node_datapath rows listed without expand=true");
            missing.push("node_datapath rows not folded".into());
        }

        // Nothing that worked has a failure cause; every failure has one.
        for f in &flows {
            let cause = f.cause.as_deref();
            let problem = match (f.verdict.as_str(), cause) {
                ("OK" | "PENDING", None | Some("search_path_expansion")) => None,
                ("OK" | "PENDING", Some(c)) => Some(format!("a healthy flow with cause {c}")),
                (_, Some("search_path_expansion")) => {
                    Some("a search-path expansion counted as a failure".to_string())
                }
                (_, None) => Some("a failure without a cause".to_string()),
                _ => None,
            };
            if let Some(problem) = problem {
                println!(
                    "  [BAD] {problem}: {} {} -> {} {:?}: {}",
                    f.verdict, f.src_name, f.dst_name, f.qname, f.reason
                );
                missing.push(problem);
            }
        }
        let external_failures = flows
            .iter()
            .filter(|f| f.qname_starts(EXTERNAL_NAME) && f.verdict != "OK")
            .count();
        if external_failures > 0 {
            println!(
                "  [BAD] {EXTERNAL_NAME}: {external_failures} failures (its search path is no failure)"
            );
            missing.push(format!("{EXTERNAL_NAME} counted as failing"));
        }
        Ok(missing)
    }
}

/// Whether a verdict belongs to an incident.
type Matcher = Box<dyn Fn(&Flow) -> bool>;

/// The verdict and cause an incident must get.
struct Expect {
    verdict: &'static str,
    cause: Option<&'static str>,
    what: String,
    /// Text the reason must contain.
    reason_has: Vec<String>,
    matches: Matcher,
}

impl Expect {
    fn new(
        verdict: &'static str,
        cause: Option<&'static str>,
        what: &str,
        matches: Matcher,
    ) -> Expect {
        Expect {
            verdict,
            cause,
            what: what.to_owned(),
            reason_has: Vec::new(),
            matches,
        }
    }

    fn reason_has(mut self, text: &str) -> Expect {
        self.reason_has.push(text.to_owned());
        self
    }

    /// Every flow of the incident with the expected verdict must have the cause and its
    /// words, and name its client (the `what`'s first word, a lab pod) and destination.
    fn check(&self, flows: &[Flow]) -> Result<(), String> {
        let verdict = self.verdict;
        let cause = self.cause.unwrap_or("-");
        let mine: Vec<&Flow> = flows.iter().filter(|f| (self.matches)(f)).collect();
        let found: Vec<&&Flow> = mine.iter().filter(|f| f.verdict == verdict).collect();
        let Some(first) = found.first() else {
            let seen: Vec<String> = mine
                .iter()
                .map(|f| format!("{} {}", f.verdict, f.cause.as_deref().unwrap_or("-")))
                .collect();
            println!(
                "  [BAD] {verdict} {cause}: {}: not found (verdicts for it: {seen:?})",
                self.what
            );
            return Err(format!("{verdict} {}", self.what));
        };
        let wrong = found.iter().find(|f| {
            f.cause.as_deref() != self.cause
                || !self.reason_has.iter().all(|text| f.reason.contains(text))
        });
        let client = objects::pod_name(self.what.split(' ').next().unwrap_or_default());
        let names = format!("{} -> {}", first.src_name, first.dst_name);
        let named = first.src_name.ends_with(&format!("/{client}")) && !first.dst_name.is_empty();
        let shown = |f: &Flow| match f.cause.as_deref() {
            Some(c) => format!("{} {c}: {}", f.verdict, f.reason),
            None => format!("{} (no cause): {}", f.verdict, f.reason),
        };
        if let Some(wrong) = wrong {
            println!(
                "  [BAD] {}\n        expected cause {cause}{}\n        {} ({names})",
                shown(wrong),
                if self.reason_has.is_empty() {
                    String::new()
                } else {
                    format!(" with {:?}", self.reason_has)
                },
                self.what
            );
            return Err(format!("{verdict} {cause} {}", self.what));
        }
        if !named {
            println!(
                "  [BAD] {}\n        {}: named {names:?}, expected {client} -> a pod or Service",
                shown(first),
                self.what
            );
            return Err(format!("{verdict} {} (names)", self.what));
        }
        let next = first
            .next
            .as_deref()
            .map(|n| format!("; next: {n}"))
            .unwrap_or_default();
        println!(
            "  [ok ] {}\n        {} ({names}){}{next}",
            shown(first),
            self.what,
            if found.len() > 1 {
                format!(", {} flows", found.len())
            } else {
                String::new()
            }
        );
        Ok(())
    }
}

/// The parts of a Verdict (docs/api.md, "JSON shapes") the demo checks.
struct Flow {
    verdict: String,
    cause: Option<String>,
    reason: String,
    next: Option<String>,
    /// `namespace/pod`, or empty.
    src_name: String,
    /// `namespace/pod`, else `namespace/service`, or empty.
    dst_name: String,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    dst_port: Option<u64>,
    qname: Option<String>,
}

impl Flow {
    fn from_json(v: &Value) -> Flow {
        let ip = |key: &str| v["flow"][key].as_str().and_then(|s| s.parse().ok());
        let name = |end: &Value, keys: &[&str]| {
            let namespace = end["namespace"].as_str().unwrap_or_default();
            keys.iter()
                .find_map(|key| end[key].as_str())
                .map(|name| format!("{namespace}/{name}"))
                .unwrap_or_default()
        };
        let text = |key: &str| v[key].as_str().map(str::to_owned);
        Flow {
            verdict: text("verdict").unwrap_or_default(),
            cause: text("cause"),
            reason: text("reason").unwrap_or_default(),
            next: text("next"),
            src_name: name(&v["src"], &["pod"]),
            dst_name: name(&v["dst"], &["pod", "service"]),
            src: ip("src_ip"),
            dst: ip("dst_ip"),
            dst_port: v["flow"]["dst_port"].as_u64(),
            qname: v["dns"]["qname"].as_str().map(str::to_owned),
        }
    }

    fn to(&self, ip: IpAddr, port: u16) -> bool {
        self.dst == Some(ip) && self.dst_port == Some(u64::from(port))
    }

    fn qname_starts(&self, prefix: &str) -> bool {
        self.qname.as_deref().is_some_and(|q| q.starts_with(prefix))
    }

    fn qname_is(&self, name: &str) -> bool {
        self.qname.as_deref() == Some(name)
    }
}
