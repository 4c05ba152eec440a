//! nftables rule text for the lab's node: Services (DNAT, like kube-proxy), Services without
//! endpoints (REJECT, like kube-proxy) and NetworkPolicy-style drops.
//!
//! All rules live in one `inet` table so one `nft delete table` undoes them. Every snippet
//! starts with the (idempotent) table and chain declarations, so snippets can be loaded in
//! any order with [`super::Node::nft`].

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Result, bail};

/// The table holding every rule the lab adds.
pub const TABLE: &str = "netprobe_lab";

/// Transport protocol of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Declares the table and its chains. `add` is a no-op for what already exists.
/// Priorities are the standard ones: DNAT at -100 (dstnat), filters at 0.
pub fn preamble() -> String {
    format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} nat_prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         add chain inet {TABLE} nat_output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain inet {TABLE} filter_forward {{ type filter hook forward priority 0; policy accept; }}\n\
         add chain inet {TABLE} filter_output {{ type filter hook output priority 0; policy accept; }}\n"
    )
}

/// `ip daddr X` / `ip6 daddr X`.
fn addr_match(dir: &str, ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("ip {dir} {a}"),
        IpAddr::V6(a) => format!("ip6 {dir} {a}"),
    }
}

/// A ClusterIP Service: traffic to `vip:port` is DNAT'ed to `backend`, for pods (prerouting)
/// and for programs in the node itself (output), as kube-proxy does.
pub fn service_dnat(proto: Proto, vip: IpAddr, port: u16, backend: SocketAddr) -> Result<String> {
    let to = match (vip, backend) {
        (IpAddr::V4(_), SocketAddr::V4(b)) => format!("dnat ip to {b}"),
        (IpAddr::V6(_), SocketAddr::V6(b)) => format!("dnat ip6 to [{}]:{}", b.ip(), b.port()),
        _ => bail!("Service {vip} and backend {backend} are not the same IP family"),
    };
    let m = format!("{} {proto} dport {port}", addr_match("daddr", vip));
    Ok(format!(
        "{}add rule inet {TABLE} nat_prerouting {m} {to}\n\
         add rule inet {TABLE} nat_output {m} {to}\n",
        preamble()
    ))
}

/// A Service with no ready endpoints: kube-proxy answers its SYNs (or datagrams) with ICMP
/// port-unreachable, which clients report as "Connection refused".
pub fn reject_unreachable(proto: Proto, vip: IpAddr, port: u16) -> String {
    let reject = match vip {
        IpAddr::V4(_) => "reject with icmp type port-unreachable",
        IpAddr::V6(_) => "reject with icmpv6 type port-unreachable",
    };
    let m = format!("{} {proto} dport {port}", addr_match("daddr", vip));
    format!(
        "{}add rule inet {TABLE} filter_forward {m} {reject}\n\
         add rule inet {TABLE} filter_output {m} {reject}\n",
        preamble()
    )
}

/// Silently drops forwarded (pod to pod, pod to Service) traffic, like a default-deny
/// NetworkPolicy. Matches run after DNAT, so name pod addresses, not ClusterIPs.
/// `None` matches anything.
pub fn drop_forwarded(
    proto: Proto,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    dport: Option<u16>,
) -> Result<String> {
    if let (Some(s), Some(d)) = (src, dst)
        && s.is_ipv4() != d.is_ipv4()
    {
        bail!("source {s} and destination {d} are not the same IP family");
    }
    let mut m = String::new();
    if let Some(s) = src {
        m.push_str(&addr_match("saddr", s));
        m.push(' ');
    }
    if let Some(d) = dst {
        m.push_str(&addr_match("daddr", d));
        m.push(' ');
    }
    match dport {
        Some(p) => m.push_str(&format!("{proto} dport {p}")),
        None => m.push_str(&format!("meta l4proto {proto}")),
    }
    Ok(format!(
        "{}add rule inet {TABLE} filter_forward {m} drop\n",
        preamble()
    ))
}

/// Removes every rule the lab added (the table), leaving other tables alone.
pub fn delete_all() -> String {
    // Declaring first makes the delete succeed whether or not the table exists.
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with("add rule")).collect()
    }

    #[test]
    fn dnat_v4_like_kube_proxy() {
        let text = service_dnat(
            Proto::Tcp,
            "10.96.0.20".parse().unwrap(),
            80,
            "10.244.0.3:8080".parse().unwrap(),
        )
        .unwrap();
        assert!(text.starts_with(&preamble()));
        assert_eq!(
            rules(&text),
            [
                "add rule inet netprobe_lab nat_prerouting ip daddr 10.96.0.20 tcp dport 80 dnat ip to 10.244.0.3:8080",
                "add rule inet netprobe_lab nat_output ip daddr 10.96.0.20 tcp dport 80 dnat ip to 10.244.0.3:8080",
            ]
        );
    }

    #[test]
    fn dnat_v6_brackets_the_address() {
        let text = service_dnat(
            Proto::Udp,
            "fd00:10:96::a".parse().unwrap(),
            53,
            "[fd00:10:244::2]:53".parse().unwrap(),
        )
        .unwrap();
        assert!(
            text.contains("ip6 daddr fd00:10:96::a udp dport 53 dnat ip6 to [fd00:10:244::2]:53")
        );
    }

    #[test]
    fn dnat_refuses_mixed_families() {
        assert!(
            service_dnat(
                Proto::Tcp,
                "10.96.0.20".parse().unwrap(),
                80,
                "[fd00::1]:80".parse().unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn reject_sends_port_unreachable() {
        let text = reject_unreachable(Proto::Tcp, "10.96.0.30".parse().unwrap(), 80);
        assert_eq!(
            rules(&text)[0],
            "add rule inet netprobe_lab filter_forward ip daddr 10.96.0.30 tcp dport 80 reject with icmp type port-unreachable"
        );
        let text = reject_unreachable(Proto::Tcp, "fd00::30".parse().unwrap(), 80);
        assert!(
            text.contains(
                "ip6 daddr fd00::30 tcp dport 80 reject with icmpv6 type port-unreachable"
            )
        );
    }

    #[test]
    fn drops() {
        let text = drop_forwarded(
            Proto::Tcp,
            Some("10.244.0.5".parse().unwrap()),
            Some("10.244.0.4".parse().unwrap()),
            Some(5432),
        )
        .unwrap();
        assert_eq!(
            rules(&text),
            [
                "add rule inet netprobe_lab filter_forward ip saddr 10.244.0.5 ip daddr 10.244.0.4 tcp dport 5432 drop"
            ]
        );
        let text = drop_forwarded(
            Proto::Udp,
            Some("10.244.0.6".parse().unwrap()),
            None,
            Some(53),
        )
        .unwrap();
        assert!(text.contains("filter_forward ip saddr 10.244.0.6 udp dport 53 drop"));
        let text = drop_forwarded(Proto::Udp, None, None, None).unwrap();
        assert!(text.contains("filter_forward meta l4proto udp drop"));
        assert!(
            drop_forwarded(
                Proto::Tcp,
                Some("10.0.0.1".parse().unwrap()),
                Some("fd00::1".parse().unwrap()),
                None
            )
            .is_err()
        );
    }
}
