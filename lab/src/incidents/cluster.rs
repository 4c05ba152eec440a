//! The incidents' cluster: its pods, their servers and the Services in front of them.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};

use super::{
    EXTERNAL_IP, EXTERNAL_NAME, INVENTORY_VIP, LEDGER_VIP, LEGACY_DNS_VIP, ORDERS_VIP, PAYMENT_VIP,
    RESET_PORT, SLOW_PORT, objects, stubs::Stub,
};
use crate::{self as lab, DnsServer, Listener, Node, Pod, Proto};

/// The pods (lab name, Kubernetes namespace, index: 10.244.0.<index>).
const PODS: [(&str, &str, u8); 8] = [
    ("kube-dns", "kube-system", 2),
    ("payment", "production", 3),
    ("db", "production", 4),
    ("checkout", "production", 5),
    ("batch", "jobs", 6),
    ("cache", "production", 7),
    ("worker", "production", 8),
    ("legacy-dns", "infra", 9),
];

/// The incidents' pods, servers and Services; stopped when dropped (the node removes the
/// rest).
pub struct Cluster {
    pods: Vec<Pod>,
    // Kept alive for the cluster's lifetime (they stop when dropped).
    _dns: DnsServer,
    _servers: Vec<Listener>,
    _stubs: Vec<Stub>,
}

impl Cluster {
    /// Adds the pods to `node`, starts their servers and DNS, and writes the Services'
    /// nftables rules (kube-proxy's DNAT and rejects).
    pub fn create(node: &mut Node) -> Result<Cluster> {
        let pods = PODS
            .iter()
            .map(|&(name, namespace, index)| node.add_pod(name, namespace, index))
            .collect::<Result<Vec<Pod>>>()?;
        let pod = |name: &str| pods.iter().find(|p| p.name == name).expect("a pod of PODS");
        let (kube_dns, payment, db, cache, worker, legacy_dns) = (
            pod("kube-dns"),
            pod("payment"),
            pod("db"),
            pod("cache"),
            pod("worker"),
            pod("legacy-dns"),
        );

        let dns = lab::start_dns(
            kube_dns,
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
            payment.listen_tcp(SLOW_PORT)?,
            db.listen_tcp(5432)?,
            cache.listen_tcp(6379)?,
            worker.listen_tcp(7000)?,
        ];
        let stubs = vec![
            Stub::reset_tcp(payment, RESET_PORT)?,
            Stub::servfail_dns(legacy_dns)?,
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
        Ok(Cluster {
            pods,
            _dns: dns,
            _servers: servers,
            _stubs: stubs,
        })
    }

    /// The pod with lab name `name`.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name} in the incidents' cluster"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A one-paragraph summary of the Services and policies, for the demo's output.
    pub fn services_summary() -> String {
        format!(
            "Services: kube-dns {dns}:53 -> kube-dns pod, payment-service {PAYMENT_VIP}:80 -> payment:8080,\n            \
             orders {ORDERS_VIP}:80 (its one pod {orders} not ready: rejected),\n            \
             inventory {INVENTORY_VIP}:80 -> payment:9091 (targetPort 9091), postgres -> db :5432, redis -> cache :6379,\n            \
             ledger {LEDGER_VIP}:80 -> {ledger} {ledger_ip}:8080 on node {other} (not simulated: discarded),\n            \
             infra/legacy-dns {LEGACY_DNS_VIP}:53 -> legacy-dns pod (answers SERVFAIL)\n  \
             NetworkPolicies: production/db-allow-api (db admits app=api on 5432), production/cache-allow-clients,\n            \
             jobs/default-deny-egress",
            dns = lab::DEFAULT_DNS,
            orders = objects::ORDERS_POD,
            ledger = objects::LEDGER_POD,
            ledger_ip = objects::LEDGER_POD_IP,
            other = objects::OTHER_NODE,
        )
    }
}
