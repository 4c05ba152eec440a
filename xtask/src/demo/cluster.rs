//! The demo's cluster: its pods, their servers and the Services in front of them.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use lab::{self, DnsServer, Listener, Node, Pod, Proto};

use super::{
    EXTERNAL_IP, EXTERNAL_NAME, INVENTORY_VIP, LEDGER_VIP, LEGACY_DNS_VIP, ORDERS_VIP, PAYMENT_VIP,
    RESET_PORT, objects, stubs::Stub,
};

/// The demo's pods, servers and Services.
pub(super) struct Cluster {
    pub(super) payment: Pod,
    pub(super) db: Pod,
    pub(super) checkout: Pod,
    pub(super) batch: Pod,
    pub(super) cache: Pod,
    pub(super) worker: Pod,
    // Kept alive for the demo's lifetime (they stop when dropped).
    _dns: DnsServer,
    _servers: Vec<Listener>,
    _stubs: Vec<Stub>,
}

impl Cluster {
    pub(super) fn create(node: &mut Node) -> Result<Cluster> {
        let kube_dns = node.add_pod("kube-dns", "kube-system", 2)?;
        let payment = node.add_pod("payment", "production", 3)?;
        let db = node.add_pod("db", "production", 4)?;
        let checkout = node.add_pod("checkout", "production", 5)?;
        let batch = node.add_pod("batch", "jobs", 6)?;
        let cache = node.add_pod("cache", "production", 7)?;
        let worker = node.add_pod("worker", "production", 8)?;
        let legacy_dns = node.add_pod("legacy-dns", "infra", 9)?;

        let dns = lab::start_dns(
            &kube_dns,
            &[
                (
                    "kube-dns.kube-system.svc.cluster.local",
                    IpAddr::V4(lab::DEFAULT_DNS),
                ),
                (
                    "payment-service.production.svc.cluster.local",
                    IpAddr::V4(PAYMENT_VIP),
                ),
                // A Service with no ready endpoints: it resolves, but nothing answers behind it.
                (
                    "orders.production.svc.cluster.local",
                    IpAddr::V4(ORDERS_VIP),
                ),
                (
                    "inventory.production.svc.cluster.local",
                    IpAddr::V4(INVENTORY_VIP),
                ),
                ("postgres.production.svc.cluster.local", IpAddr::V4(db.ipv4)),
                ("redis.production.svc.cluster.local", IpAddr::V4(cache.ipv4)),
                (
                    "ledger.production.svc.cluster.local",
                    IpAddr::V4(LEDGER_VIP),
                ),
                // A name outside the cluster: found only after the search path.
                (EXTERNAL_NAME, IpAddr::V4(EXTERNAL_IP)),
            ],
        )?;
        // kube-dns' ClusterIP, DNAT'ed to the DNS pod like kube-proxy does.
        for proto in [Proto::Udp, Proto::Tcp] {
            node.add_service(
                proto,
                IpAddr::V4(lab::DEFAULT_DNS),
                53,
                SocketAddr::new(IpAddr::V4(kube_dns.ipv4), 53),
            )?;
        }
        let servers = vec![
            payment.listen_tcp(8080)?,
            db.listen_tcp(5432)?,
            cache.listen_tcp(6379)?,
            worker.listen_tcp(7000)?,
        ];
        let stubs = vec![
            Stub::reset_tcp(&payment, RESET_PORT)?,
            Stub::servfail_dns(&legacy_dns)?,
        ];
        node.add_service(
            Proto::Udp,
            IpAddr::V4(LEGACY_DNS_VIP),
            53,
            SocketAddr::new(IpAddr::V4(legacy_dns.ipv4), 53),
        )?;
        // ledger's pod is on another node: from here, the uplink (which discards all).
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(LEDGER_VIP),
            80,
            SocketAddr::new(IpAddr::V4(objects::LEDGER_POD_IP), 8080),
        )?;
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(PAYMENT_VIP),
            80,
            SocketAddr::new(IpAddr::V4(payment.ipv4), 8080),
        )?;
        // inventory's targetPort is 9091, where payment does not listen.
        node.add_service(
            Proto::Tcp,
            IpAddr::V4(INVENTORY_VIP),
            80,
            SocketAddr::new(IpAddr::V4(payment.ipv4), 9091),
        )?;
        // orders has no ready endpoint: kube-proxy rejects its SYNs.
        node.reject_service(Proto::Tcp, IpAddr::V4(ORDERS_VIP), 80)?;

        println!(
            "\n== Demo node: namespace {} (agent attaches to veth* there)\n",
            node.netns()
        );
        let row = |cols: [&str; 6]| {
            let [pod, ns, netns, v4, v6, veth] = cols;
            println!("  {pod:<10} {ns:<12} {netns:<14} {v4:<12} {v6:<16} {veth}");
        };
        row(["pod", "namespace", "netns", "IPv4", "IPv6", "host veth"]);
        for p in node.pods() {
            let (v4, v6) = (p.ipv4.to_string(), p.ipv6.to_string());
            row([&p.name, &p.k8s_namespace, &p.netns, &v4, &v6, &p.host_if]);
        }
        println!(
            "\n  Services: kube-dns {dns}:53 -> kube-dns pod, payment-service {PAYMENT_VIP}:80 -> payment:8080,\n            \
             orders {ORDERS_VIP}:80 (its one pod {orders} not ready: rejected),\n            \
             inventory {INVENTORY_VIP}:80 -> payment:9091 (targetPort 9091), postgres -> db :5432, redis -> cache :6379,\n            \
             ledger {LEDGER_VIP}:80 -> {ledger} {ledger_ip}:8080 on node {other} (not simulated: discarded),\n            \
             infra/legacy-dns {LEGACY_DNS_VIP}:53 -> legacy-dns pod (answers SERVFAIL)\n  \
             NetworkPolicies: production/db-allow-api (db admits app=api on 5432), jobs/default-deny-egress",
            dns = lab::DEFAULT_DNS,
            orders = objects::ORDERS_POD,
            ledger = objects::LEDGER_POD,
            ledger_ip = objects::LEDGER_POD_IP,
            other = objects::OTHER_NODE,
        );
        Ok(Cluster {
            payment,
            db,
            checkout,
            batch,
            cache,
            worker,
            _dns: dns,
            _servers: servers,
            _stubs: stubs,
        })
    }

    /// The node-wide outage's connections: (client, server, port), fresh pod pairs that
    /// no other incident uses.
    pub(super) fn outage_pairs(&self) -> [(&Pod, &Pod, u16); 5] {
        [
            (&self.checkout, &self.payment, 8080),
            (&self.worker, &self.payment, 8080),
            (&self.worker, &self.cache, 6379),
            (&self.db, &self.payment, 8080),
            (&self.db, &self.cache, 6379),
        ]
    }
}
