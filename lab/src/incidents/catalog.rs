//! The catalog: every incident of the demo and the causes tests, once.

use super::{
    CORP_NAME, Dest, EXTERNAL_IP, EXTERNAL_NAME, Expect, Flows, Host, INVENTORY_VIP, Incident,
    LEDGER_VIP, LEGACY_DNS_VIP, Next, ORDERS_VIP, PAYMENT_VIP, QName, REJECTED_PORT, RESET_PORT,
    SLOW_PORT, Sees, Setup, Traffic,
};
use crate::Proto;

/// A TCP connect from checkout, given up after 4 s (past the agent's 3 s SYN timeout).
const fn connect(to: Dest, port: u16) -> Traffic {
    Traffic::Connect {
        from: "checkout",
        to,
        port,
        timeout_s: 4,
    }
}

const fn tcp(to: Dest, port: u16) -> Flows {
    Flows::Tcp {
        from: "checkout",
        to,
        port,
    }
}

/// One flow from checkout to `to`:`port` gets `verdict` and `cause`.
const fn one(verdict: &'static str, cause: Option<&'static str>, to: Dest, port: u16) -> Expect {
    Expect {
        verdict,
        cause,
        flows: tcp(to, port),
        count: Some(1),
        reason: &[],
        next: Next::Unchecked,
    }
}

/// The node-wide outage's connections: fresh pod pairs no other incident uses.
pub const OUTAGE_PAIRS: &[(&str, &str, u16)] = &[
    ("checkout", "payment", 8080),
    ("worker", "payment", 8080),
    ("worker", "cache", 6379),
    ("db", "payment", 8080),
    ("db", "cache", 6379),
];

/// One outage row: a TIMEOUT folded under the node-level verdict.
const fn folded(from: &'static str, to: &'static str, port: u16) -> Expect {
    Expect {
        verdict: "TIMEOUT",
        cause: Some("node_datapath"),
        flows: Flows::Tcp {
            from,
            to: Dest::Pod(to),
            port,
        },
        count: Some(1),
        reason: &[
            "the node's datapath is down (CNI, bridge, routes or node firewall), not this flow",
        ],
        next: Next::Is("kubectl get pods -A -o wide --field-selector spec.nodeName=demo-node"),
    }
}

pub const CATALOG: &[Incident] = &[
    Incident {
        name: "healthy",
        title: "checkout$ curl http://payment-service/",
        runs: "`checkout$ curl http://payment-service/`",
        setup: &[],
        traffic: Traffic::Curl {
            from: "checkout",
            host: Host::Name("payment-service"),
            port: None,
        },
        sees: Sees::Http200,
        expect: &[
            Expect {
                verdict: "OK",
                cause: None,
                flows: Flows::Dns {
                    from: "checkout",
                    qname: QName::Is("payment-service.production.svc.cluster.local."),
                },
                count: None,
                reason: &[],
                next: Next::Nothing,
            },
            Expect {
                next: Next::Nothing,
                ..one("OK", None, Dest::Vip(PAYMENT_VIP), 80)
            },
        ],
    },
    Incident {
        name: "healthy, IPv6",
        title: "checkout$ curl http://[payment's IPv6]:8080/",
        runs: "`checkout$ curl http://[fd00:10:244::3]:8080/`",
        setup: &[],
        traffic: Traffic::Curl {
            from: "checkout",
            host: Host::Dest(Dest::PodV6("payment")),
            port: Some(8080),
        },
        sees: Sees::Http200,
        expect: &[Expect {
            next: Next::Nothing,
            ..one("OK", None, Dest::PodV6("payment"), 8080)
        }],
    },
    Incident {
        name: "slow handshake",
        title: "checkout connects to payment:8443, whose first SYN the node drops",
        runs: "the node drops the first SYN to payment:8443; the retransmission gets through",
        setup: &[Setup::LoseFirstSyn {
            pod: "payment",
            port: SLOW_PORT,
        }],
        traffic: Traffic::Connect {
            from: "checkout",
            to: Dest::Pod("payment"),
            port: SLOW_PORT,
            timeout_s: 5,
        },
        sees: Sees::Connected,
        expect: &[Expect {
            reason: &["slow: 2 SYNs"],
            ..one("OK", None, Dest::Pod("payment"), SLOW_PORT)
        }],
    },
    Incident {
        name: "NetworkPolicy",
        title: "checkout connects to db:5432 (NetworkPolicy production/db-allow-api)",
        runs: "nft drops checkout → db:5432 (what `db-allow-api` does), then connect",
        setup: &[Setup::Drop {
            proto: Proto::Tcp,
            from: "checkout",
            to: Some("db"),
            port: Some(5432),
        }],
        traffic: connect(Dest::Pod("db"), 5432),
        sees: Sees::TimedOut,
        expect: &[Expect {
            reason: &[
                " and no answer: NetworkPolicy production/db-allow-api selects postgres-0 for ingress and no rule admits production/checkout-5d4e3c2f9b-abc12 on TCP 5432",
            ],
            next: Next::Is("kubectl describe networkpolicy db-allow-api -n production"),
            ..one("TIMEOUT", Some("network_policy"), Dest::Pod("db"), 5432)
        }],
    },
    Incident {
        name: "node firewall",
        title: "checkout connects to cache:6379 (nft drop in the node; policy allows it)",
        runs: "nft drops checkout → cache:6379; `cache-allow-clients` allows it",
        setup: &[Setup::Drop {
            proto: Proto::Tcp,
            from: "checkout",
            to: Some("cache"),
            port: Some(6379),
        }],
        traffic: connect(Dest::Pod("cache"), 6379),
        sees: Sees::TimedOut,
        expect: &[Expect {
            reason: &[
                "both ends are on node demo-node and the SYN left the client's veth but never reached the server's",
                "networkPolicies allow this traffic (ingress: cache-allow-clients; egress: not isolated)",
            ],
            next: Next::Is("sudo nft list ruleset | grep -n -e 10.244.0.7 -e 10.244.0.5"),
            ..one("TIMEOUT", Some("dropped_between"), Dest::Pod("cache"), 6379)
        }],
    },
    Incident {
        name: "server silent",
        title: "checkout connects to worker:7000 (worker's own nft drops port 7000)",
        runs: "checkout → worker:7000, dropped inside worker",
        setup: &[Setup::DropInPod {
            pod: "worker",
            port: 7000,
        }],
        traffic: connect(Dest::Pod("worker"), 7000),
        sees: Sees::TimedOut,
        expect: &[Expect {
            reason: &[
                "the SYN reached pod production/worker-6b8d9c7f5-q8w2n (10.244.0.8:7000) through veth",
                " and the server never answered",
            ],
            next: Next::Is("kubectl exec -n production worker-6b8d9c7f5-q8w2n -- netstat -ltn"),
            ..one("TIMEOUT", Some("server_silent"), Dest::Pod("worker"), 7000)
        }],
    },
    Incident {
        name: "remote pod",
        title: "checkout connects to ledger 10.96.0.50:80 (its pod is on node demo-node-2)",
        runs: "checkout → `ledger` 10.96.0.50:80, whose pod runs on another node",
        setup: &[],
        traffic: connect(Dest::Vip(LEDGER_VIP), 80),
        sees: Sees::TimedOut,
        expect: &[Expect {
            reason: &["only the client side was seen (10.96.0.50 is not known on this node)"],
            next: Next::Is("kubectl get pod ledger-0 -n production -o wide"),
            ..one("TIMEOUT", Some("no_answer"), Dest::Vip(LEDGER_VIP), 80)
        }],
    },
    Incident {
        name: "nothing listens",
        title: "checkout connects to payment:9090",
        runs: "connect to payment:9090",
        setup: &[],
        traffic: connect(Dest::Pod("payment"), 9090),
        sees: Sees::Refused,
        expect: &[Expect {
            reason: &[
                ": nothing listens on port 9090 of pod production/payment-7c9f8b6d4-x2k9p (it declares 8080/TCP (http), 8443/TCP (https))",
            ],
            next: Next::Is("kubectl describe pod payment-7c9f8b6d4-x2k9p -n production"),
            ..one(
                "REFUSED",
                Some("nothing_listening"),
                Dest::Pod("payment"),
                9090,
            )
        }],
    },
    Incident {
        name: "Service without endpoints",
        title: "checkout connects to orders 10.96.0.30:80 (its one pod not ready)",
        runs: "`orders` 10.96.0.30:80, its one pod not ready: kube-proxy-style reject",
        setup: &[],
        traffic: connect(Dest::Vip(ORDERS_VIP), 80),
        sees: Sees::Refused,
        expect: &[Expect {
            reason: &[
                "SYN answered by ICMP destination unreachable: Service production/orders has no ready endpoints: its selector app=orders matches 1 pod, 1 not ready (orders-6f7d8c9b5-qwert)",
            ],
            next: Next::Is(
                "kubectl get endpointslices -l kubernetes.io/service-name=orders -n production",
            ),
            ..one(
                "UNREACHABLE",
                Some("no_ready_endpoints"),
                Dest::Vip(ORDERS_VIP),
                80,
            )
        }],
    },
    Incident {
        name: "port mismatch",
        title: "checkout connects to inventory 10.96.0.40:80 (targetPort 9091, payment listens on 8080)",
        runs: "`inventory` 10.96.0.40:80 → targetPort 9091, payment declares only 8080 and 8443",
        setup: &[],
        traffic: connect(Dest::Vip(INVENTORY_VIP), 80),
        sees: Sees::Refused,
        expect: &[Expect {
            reason: &[
                ": Service production/inventory port 80 sends to targetPort 9091, but pod payment-7c9f8b6d4-x2k9p declares 8080/TCP (http), 8443/TCP (https)",
            ],
            next: Next::Is(
                "kubectl get service inventory -n production -o jsonpath='{.spec.ports}'",
            ),
            ..one(
                "REFUSED",
                Some("target_port_mismatch"),
                Dest::Vip(INVENTORY_VIP),
                80,
            )
        }],
    },
    Incident {
        name: "firewall reject",
        title: "checkout connects to payment:9100 (the node rejects it, ICMP port unreachable)",
        runs: "the node rejects payment:9100",
        setup: &[Setup::Reject {
            pod: "payment",
            port: REJECTED_PORT,
        }],
        traffic: connect(Dest::Pod("payment"), REJECTED_PORT),
        sees: Sees::Refused,
        expect: &[Expect {
            reason: &["pod production/payment-7c9f8b6d4-x2k9p is unreachable on port 9100"],
            next: Next::Is("kubectl get pod payment-7c9f8b6d4-x2k9p -n production -o wide"),
            ..one(
                "UNREACHABLE",
                Some("destination_unreachable"),
                Dest::Pod("payment"),
                REJECTED_PORT,
            )
        }],
    },
    Incident {
        name: "reset",
        title: "checkout$ curl http://10.244.0.3:8081/ (the server closes without reading)",
        runs: "`checkout$ curl http://10.244.0.3:8081/` (the server closes without reading)",
        setup: &[],
        traffic: Traffic::Curl {
            from: "checkout",
            host: Host::Dest(Dest::Pod("payment")),
            port: Some(RESET_PORT),
        },
        sees: Sees::Reset,
        expect: &[Expect {
            reason: &["the server reset the connection (RST after the handshake)"],
            ..one(
                "RESET",
                Some("connection_reset"),
                Dest::Pod("payment"),
                RESET_PORT,
            )
        }],
    },
    Incident {
        name: "DNS server failing",
        title: "checkout$ dig @10.96.0.53 ledger.corp.example (infra/legacy-dns answers SERVFAIL)",
        runs: "`checkout$ dig @10.96.0.53 ledger.corp.example`",
        setup: &[],
        traffic: Traffic::Dig {
            from: "checkout",
            server: LEGACY_DNS_VIP,
            name: CORP_NAME,
        },
        sees: Sees::DnsStatus("SERVFAIL"),
        expect: &[Expect {
            verdict: "SERVFAIL",
            cause: Some("dns_server_error"),
            flows: Flows::Dns {
                from: "checkout",
                qname: QName::StartsWith(CORP_NAME),
            },
            count: Some(1),
            reason: &["the DNS server infra/legacy-dns (10.96.0.53) cannot resolve it"],
            next: Next::Is("kubectl logs -n infra svc/legacy-dns --tail=50"),
        }],
    },
    Incident {
        name: "wrong Service name",
        title: "checkout$ getent hosts paymnt-service",
        runs: "`checkout$ getent hosts paymnt-service`",
        setup: &[],
        traffic: Traffic::Getent {
            from: "checkout",
            name: "paymnt-service",
        },
        sees: Sees::NotFound,
        expect: &[
            // `getent hosts` looks up AAAA, then A: two failed lookups.
            Expect {
                verdict: "NXDOMAIN",
                cause: Some("name_not_found"),
                flows: Flows::Dns {
                    from: "checkout",
                    qname: QName::StartsWith("paymnt-service."),
                },
                count: Some(2),
                reason: &[
                    "paymnt-service: NXDOMAIN for each of the 4 names of its search path",
                    ": no Service paymnt-service in production; did you mean payment-service?",
                ],
                next: Next::Is("kubectl get service payment-service -n production"),
            },
            // Each lookup's 3 search-path names before its last.
            Expect {
                verdict: "OK",
                cause: Some("search_path_expansion"),
                flows: Flows::Dns {
                    from: "checkout",
                    qname: QName::Under("paymnt-service"),
                },
                count: Some(6),
                reason: &[],
                next: Next::Unchecked,
            },
        ],
    },
    Incident {
        name: "external name",
        title: "checkout$ getent hosts api.example.com (found after 3 search domains)",
        runs: "`checkout$ getent hosts api.example.com` (found after 3 search domains)",
        setup: &[],
        traffic: Traffic::Getent {
            from: "checkout",
            name: EXTERNAL_NAME,
        },
        sees: Sees::Found(EXTERNAL_IP),
        expect: &[
            Expect {
                verdict: "OK",
                cause: None,
                flows: Flows::Dns {
                    from: "checkout",
                    qname: QName::Is("api.example.com."),
                },
                count: None,
                reason: &[],
                next: Next::Unchecked,
            },
            Expect {
                verdict: "OK",
                cause: Some("search_path_expansion"),
                flows: Flows::Dns {
                    from: "checkout",
                    qname: QName::Under(EXTERNAL_NAME),
                },
                count: Some(6),
                reason: &[],
                next: Next::Unchecked,
            },
        ],
    },
    Incident {
        name: "DNS blocked by policy",
        title: "batch$ getent hosts payment-service (jobs/default-deny-egress; nft drops udp/53 from batch)",
        runs: "nft drops udp/53 from batch, `batch$ getent hosts payment-service`",
        setup: &[Setup::Drop {
            proto: Proto::Udp,
            from: "batch",
            to: None,
            port: Some(53),
        }],
        traffic: Traffic::Getent {
            from: "batch",
            name: "payment-service",
        },
        sees: Sees::Hangs,
        expect: &[Expect {
            verdict: "DNS_TIMEOUT",
            cause: Some("network_policy"),
            flows: Flows::Dns {
                from: "batch",
                qname: QName::Any,
            },
            count: None,
            reason: &[
                "NetworkPolicy jobs/default-deny-egress selects report-29400000-7xq2m for egress and no rule lets it reach kube-system/coredns-668d6bf9bc-4xkqz on UDP 53",
            ],
            next: Next::Is("kubectl describe networkpolicy default-deny-egress -n jobs"),
        }],
    },
    Incident {
        name: "DNS blocked",
        title: "worker$ getent hosts ledger (nft drops udp/53 from worker, no policy)",
        runs: "nft drops udp/53 from worker, `worker$ getent hosts ledger`",
        setup: &[Setup::Drop {
            proto: Proto::Udp,
            from: "worker",
            to: None,
            port: Some(53),
        }],
        traffic: Traffic::Getent {
            from: "worker",
            name: "ledger",
        },
        sees: Sees::Hangs,
        expect: &[Expect {
            verdict: "DNS_TIMEOUT",
            cause: Some("dns_no_answer"),
            flows: Flows::Dns {
                from: "worker",
                qname: QName::Any,
            },
            count: None,
            reason: &["the DNS server kube-system/kube-dns (10.96.0.10) never answered"],
            next: Next::Is("kubectl get pods -n kube-system -l k8s-app=kube-dns -o wide"),
        }],
    },
    Incident {
        name: "node datapath down",
        title: "nft drops all forwarded TCP while 5 fresh pod pairs connect at once",
        runs: "all TCP between 5 pod pairs dropped at once, after the others",
        setup: &[Setup::DatapathDown],
        traffic: Traffic::ConnectPairs(OUTAGE_PAIRS),
        sees: Sees::TimedOut,
        expect: &[
            Expect {
                verdict: "TIMEOUT",
                cause: Some("node_datapath"),
                flows: Flows::Node {
                    failing_pairs: 5,
                    pairs: 5,
                    sources: 3,
                },
                count: Some(1),
                reason: &[
                    "5 of 5 pod pairs of this node time out at once (from 3 pods): the node's datapath is down",
                ],
                next: Next::Is(
                    "kubectl get pods -A -o wide --field-selector spec.nodeName=demo-node",
                ),
            },
            folded("checkout", "payment", 8080),
            folded("worker", "payment", 8080),
            folded("worker", "cache", 6379),
            folded("db", "payment", 8080),
            folded("db", "cache", 6379),
        ],
    },
];
