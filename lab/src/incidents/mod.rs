//! The incidents netprobe must explain, each defined once, as data: the cluster they run
//! in ([`Cluster`], its pods, Services and Kubernetes objects), then per incident its setup
//! (nftables drops, rejects), its traffic (a connect, curl, getent or dig from a pod), what
//! the client must see, and the verdicts, causes and reasons the agent must give it.
//!
//! One runner ([`play`]) plays them on a [`crate::Node`]; one checker ([`check`]) compares
//! the agent's `/v1/verdicts` with them. `cargo xtask demo` plays and prints the catalog,
//! the agent's privileged causes tests assert it, and docs/demo.md's incident table is
//! generated from it ([`markdown_table`]). Verdicts and causes are named as the agent's
//! API serializes them (`TIMEOUT`, `network_policy`): the lab does not depend on the agent.

use std::net::Ipv4Addr;

use crate::Proto;

mod catalog;
mod check;
mod cluster;
mod objects;
mod play;
mod stubs;
mod table;

pub use catalog::CATALOG;
pub use check::{Report, Seen, check};
pub use cluster::Cluster;
pub use objects::{
    LEDGER_POD, LEDGER_POD_IP, NODE, ORDERS_POD, ORDERS_POD_IP, OTHER_NODE, count, objects,
    pod_name,
};
pub use play::{Outcome, Runner};
pub use table::{TABLE_BEGIN, TABLE_END, markdown_table};

pub const PAYMENT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const ORDERS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
pub const INVENTORY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
pub const LEDGER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
pub const LEGACY_DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
/// payment's port whose server closes each connection without reading it (reset).
pub const RESET_PORT: u16 = 8081;
/// payment's port that the node's firewall rejects (ICMP port unreachable).
pub const REJECTED_PORT: u16 = 9100;
/// payment's port whose first SYN the node drops: the handshake is slow, not failed.
pub const SLOW_PORT: u16 = 8443;
/// A name the SERVFAIL server is asked for.
pub const CORP_NAME: &str = "ledger.corp.example";
/// A name outside the cluster (the lab's DNS server knows it): a pod finds it after its
/// three search domains answered NXDOMAIN.
pub const EXTERNAL_NAME: &str = "api.example.com";
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// One incident: how to make it, what its client sees, what the agent must say.
#[derive(Debug)]
pub struct Incident {
    /// Its short name (the table's first column).
    pub name: &'static str,
    /// What happens, for the demo's output: "checkout connects to db".
    pub title: &'static str,
    /// What makes it fail, in the table's words (markdown).
    pub runs: &'static str,
    pub setup: &'static [Setup],
    pub traffic: Traffic,
    /// What the client must see.
    pub sees: Sees,
    pub expect: &'static [Expect],
}

/// Where traffic goes: a pod of the [`Cluster`] (its lab name) or a Service's ClusterIP.
#[derive(Clone, Copy, Debug)]
pub enum Dest {
    Pod(&'static str),
    /// The pod's IPv6 address.
    PodV6(&'static str),
    Vip(Ipv4Addr),
}

/// What the node (or a pod) is made to do before the traffic; undone with the cluster.
#[derive(Clone, Copy, Debug)]
pub enum Setup {
    /// The node drops `proto` from pod `from` (to pod `to`, on `port`): what a NetworkPolicy
    /// or a firewall rule does.
    Drop {
        proto: Proto,
        from: &'static str,
        to: Option<&'static str>,
        port: Option<u16>,
    },
    /// A pod's own firewall drops TCP to its `port`: its server never sees the SYN.
    DropInPod { pod: &'static str, port: u16 },
    /// The node rejects TCP to a pod's port (ICMP port unreachable).
    Reject { pod: &'static str, port: u16 },
    /// The node drops the first SYN to a pod's port; the retransmission gets through.
    LoseFirstSyn { pod: &'static str, port: u16 },
    /// Every forwarded TCP packet dropped, for this incident's traffic only.
    DatapathDown,
}

/// A URL's host.
#[derive(Clone, Copy, Debug)]
pub enum Host {
    /// A name the pod resolves (through its search path).
    Name(&'static str),
    Dest(Dest),
}

/// The traffic of an incident, from a pod (its lab name).
#[derive(Clone, Copy, Debug)]
pub enum Traffic {
    /// `connect()`, given up after `timeout_s`.
    Connect {
        from: &'static str,
        to: Dest,
        port: u16,
        timeout_s: u64,
    },
    /// `connect()` from each client to its server at once: (client, server pod, port).
    ConnectPairs(&'static [(&'static str, &'static str, u16)]),
    /// `curl http://<host>[:port]/`.
    Curl {
        from: &'static str,
        host: Host,
        port: Option<u16>,
    },
    /// `getent hosts <name>`: the libc resolver, with the pod's search path.
    Getent {
        from: &'static str,
        name: &'static str,
    },
    /// `dig @<server> <name>`, one try.
    Dig {
        from: &'static str,
        server: Ipv4Addr,
        name: &'static str,
    },
}

/// What the client must see.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sees {
    /// curl's `HTTP 200`.
    Http200,
    Connected,
    TimedOut,
    Refused,
    Reset,
    /// dig's `status:`.
    DnsStatus(&'static str),
    NotFound,
    Found(Ipv4Addr),
    /// The resolver never answers (given up).
    Hangs,
}

/// Which of the agent's verdicts an expectation is about.
#[derive(Clone, Copy, Debug)]
pub enum Flows {
    /// TCP flows from pod `from` to `to`:`port`.
    Tcp {
        from: &'static str,
        to: Dest,
        port: u16,
    },
    /// DNS flows from pod `from` asking for `qname`.
    Dns { from: &'static str, qname: QName },
    /// The node-level verdict (`node` in `/v1/verdicts`), at its widest.
    Node {
        failing_pairs: u64,
        pairs: u64,
        sources: u64,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum QName {
    Is(&'static str),
    StartsWith(&'static str),
    /// The names of a lookup's search path: `<name>.<domain>.`, not `<name>.` itself.
    Under(&'static str),
    Any,
}

/// The `next` command a verdict must carry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    Unchecked,
    Nothing,
    Is(&'static str),
}

/// A verdict the agent must give: `verdict` and `cause` as the API serializes them
/// (`cause: None`: no cause at all, as healthy traffic must have).
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub verdict: &'static str,
    pub cause: Option<&'static str>,
    pub flows: Flows,
    /// How many flows get it, when that is known.
    pub count: Option<usize>,
    /// Text the reason must contain.
    pub reason: &'static [&'static str],
    pub next: Next,
}

impl Expect {
    /// A cause that is no failure: what worked must have none but this one.
    pub fn is_failure(&self) -> bool {
        !matches!(self.verdict, "OK" | "PENDING")
    }
}

impl Incident {
    /// The incident's client pod (the first one, for several).
    pub fn client(&self) -> &'static str {
        match self.traffic {
            Traffic::Connect { from, .. }
            | Traffic::Curl { from, .. }
            | Traffic::Getent { from, .. }
            | Traffic::Dig { from, .. } => from,
            Traffic::ConnectPairs(pairs) => pairs[0].0,
        }
    }

    /// Whether its client waits for a timeout: played in the background while the others run.
    pub fn hangs(&self) -> bool {
        matches!(self.sees, Sees::TimedOut | Sees::Hangs) && !self.is_node_wide()
    }

    /// Whether it takes the whole node's datapath down: played last, on its own.
    pub fn is_node_wide(&self) -> bool {
        self.setup.iter().any(|s| matches!(s, Setup::DatapathDown))
    }
}

/// The incident named `name`.
pub fn incident(name: &str) -> &'static Incident {
    CATALOG
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no incident {name:?} in the catalog"))
}
