//! Orientation and pairing: which end of a connection sent a packet, which end's veth a
//! hook is, and which connection a hook's view belongs to.
//!
//! The kernel counts what each hook saw as on the wire. A connection between two pods of
//! this node is seen at both veths (at the server's after any Service DNAT or SNAT):
//! here the two views become one connection, keyed by what the client asked for.

use std::{collections::HashMap, net::IpAddr, num::NonZeroUsize};

use probe_ebpf::{Direction, EventKind, FlowKey};

use super::lru_slab::LruSlab;
use crate::{decode::Packet, model::Flow};

/// Which end of the connection sent the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Client,
    /// The server, or the network on its behalf (an ICMP error).
    Server,
}

/// Which end's veth the hook is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// A packet as one hook saw its connection: the tuple oriented client → server.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub key: FlowKey,
    pub flow: Flow,
    pub sender: Sender,
    pub side: Side,
}

/// What the tracker knows to orient and pair views.
pub struct Pairing {
    /// Views seen → the key of their connection, where that is another view's (a
    /// connection's own view is its key in the flow table, not stored twice).
    views: LruSlab<FlowKey, FlowKey>,
    /// Pod addresses of this node → the veth behind which each was seen.
    local: LruSlab<IpAddr, u32>,
    /// Pod addresses the node routes to (or resolved) behind an attached veth, as last
    /// listed: known before they send anything.
    routed: HashMap<IpAddr, u32>,
}

/// Pod addresses of this node remembered.
const LOCAL_ADDRESSES: usize = 65_536;

impl Pairing {
    pub fn new(flows: NonZeroUsize) -> Self {
        Self {
            // The server sides of flows counted at the client's; an evicted one is found
            // again by the client's endpoint.
            views: LruSlab::new(flows),
            local: LruSlab::new(NonZeroUsize::new(LOCAL_ADDRESSES).expect("non-zero")),
            routed: HashMap::new(),
        }
    }

    /// Orients `packet`: its sender from its kind (a SYN or a query is the client's), or,
    /// for a RST or a DNS-over-TCP segment, from the views already known (`tracked`: the
    /// connections of the flow table).
    pub fn orient(&self, packet: &Packet, tracked: impl Fn(&FlowKey) -> bool) -> View {
        let tuple = packet.hook.tuple;
        let sender = match packet.kind {
            EventKind::Syn | EventKind::DnsQuery => Sender::Client,
            EventKind::SynAck | EventKind::DnsResponse | EventKind::IcmpUnreachable => {
                Sender::Server
            }
            EventKind::Rst | EventKind::DnsTcpSegment => {
                if self.views.contains(&tuple) || tracked(&tuple) {
                    Sender::Client
                } else if self.views.contains(&tuple.reversed()) || tracked(&tuple.reversed()) {
                    Sender::Server
                } else if packet.kind == EventKind::DnsTcpSegment {
                    if tuple.dst_port == DNS_PORT {
                        Sender::Client
                    } else {
                        Sender::Server
                    }
                } else if tuple.dst_port < tuple.src_port {
                    // Unknown connection: the lower port is taken for the server's.
                    Sender::Client
                } else {
                    Sender::Server
                }
            }
        };
        // An ICMP error's tuple is the quoted packet's, which the client sent.
        let (key, flow) = match (packet.kind, sender) {
            (EventKind::IcmpUnreachable, _) | (_, Sender::Client) => (tuple, packet.tuple),
            (_, Sender::Server) => (tuple.reversed(), packet.tuple.reversed()),
        };
        // What leaves a pod was sent by it; what enters it, sent by the other end.
        let side = match (packet.direction, sender) {
            (Direction::FromPod, Sender::Client) | (Direction::ToPod, Sender::Server) => {
                Side::Client
            }
            _ => Side::Server,
        };
        View {
            key,
            flow,
            sender,
            side,
        }
    }

    /// The other view's connection that `view` is part of, if known.
    pub fn bound_to(&mut self, view: &FlowKey) -> Option<FlowKey> {
        self.views.get(view).copied()
    }

    /// Records that `view` is part of connection `connection` (its own, or another's).
    pub fn bind(&mut self, view: FlowKey, connection: FlowKey) {
        if view == connection {
            self.views.pop(&view);
        } else {
            self.views.put(view, connection);
        }
    }

    /// Records a client-side view: the connection's own key (the flow table indexes it
    /// by its client endpoint).
    pub fn client_view(&mut self, view: &View) {
        if !self.views.is_empty() {
            self.views.pop(&view.key);
        }
    }

    /// Remembers `packet`'s pod end as a pod of this node when the pod sent it.
    pub fn learn_local(&mut self, packet: &Packet) {
        if packet.direction == Direction::FromPod
            && self.local.peek(&packet.pod) != Some(&packet.ifindex)
        {
            self.local.put(packet.pod, packet.ifindex);
        }
    }

    /// Replaces the addresses known from the node's routes and neighbours.
    pub fn set_routed(&mut self, routed: HashMap<IpAddr, u32>) {
        self.routed = routed;
    }

    /// A pod address of this node, by what left its veth or by the node's routes.
    pub fn is_local(&self, ip: &IpAddr) -> bool {
        self.local.contains(ip) || self.routed.contains_key(ip)
    }

    /// Forgets the addresses seen behind a removed interface: a deleted pod's address may
    /// be given to a pod of another node.
    pub fn forget_interface(&mut self, ifindex: u32) {
        let gone: Vec<IpAddr> = self
            .local
            .iter()
            .filter(|(_, index)| **index == ifindex)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in gone {
            self.local.pop(&ip);
        }
        self.routed.retain(|_, index| *index != ifindex);
    }
}

const DNS_PORT: u16 = 53;

/// The kernel's key of an API flow (IPv4 as IPv4-mapped IPv6, as the kernel stores it).
pub fn key_of(flow: &Flow) -> FlowKey {
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    FlowKey {
        src_addr: addr(flow.src_ip),
        dst_addr: addr(flow.dst_ip),
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        protocol: match flow.protocol {
            crate::model::Protocol::Tcp => probe_ebpf::IPPROTO_TCP,
            crate::model::Protocol::Udp => probe_ebpf::IPPROTO_UDP,
        },
        _pad: [0; 3],
    }
}
