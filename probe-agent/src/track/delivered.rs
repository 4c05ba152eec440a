//! SYNs that reached the server pod of a flow between two pods of this node.
//!
//! Such a flow crosses two veths and is counted at the client's. The kernel program also
//! reports, uncounted, each SYN it sees entering the server pod at the server's veth
//! ([`EventKind::SynDelivered`]). When the flow's SYN times out, that tells the two
//! causes apart: no delivery, the SYN was dropped on the node between the pods
//! (NetworkPolicy, firewall, route); a delivery, the server pod got it and stayed silent
//! (its own firewall, a full accept queue, an application that does not answer).
//!
//! Deliveries are kept by the client's end, (protocol, IP, port): that is the one end
//! the two veths see alike. The client of a Service sends to the ClusterIP; the server
//! receives on its own ip:targetPort, after the DNAT, and [`Delivery::dst`] says which.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    time::Duration,
};

use lru::LruCache;
use probe_ebpf::EventKind;

use crate::{decode::Packet, model::Protocol};

/// SYNs from one client end that reached a server pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Where they were delivered: the server pod's ip:port, after any Service DNAT.
    pub dst: SocketAddr,
    /// The server pod's host-side veth.
    pub ifindex: u32,
    /// When the latest one was seen (CLOCK_MONOTONIC, as [`Packet::monotonic`]).
    pub at: Duration,
    /// How many reached `dst`: a connection's SYN and retransmissions, and those of
    /// later connections that reuse the client port to the same server.
    pub syns: u32,
}

type ClientEnd = (Protocol, IpAddr, u16);

/// A bounded table of [`Delivery`]s by client end.
pub struct Deliveries {
    table: LruCache<ClientEnd, Delivery>,
}

impl Deliveries {
    /// Room for `capacity` client ends (the tracker gives its flow table's, so one
    /// delivery per tracked flow fits); the least recently delivered to go first beyond.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            table: LruCache::new(capacity),
        }
    }

    /// Takes in a [`EventKind::SynDelivered`] packet; other packets are ignored.
    pub fn record(&mut self, packet: &Packet) {
        if packet.kind != EventKind::SynDelivered {
            return;
        }
        let flow = &packet.flow;
        let dst = SocketAddr::new(flow.dst_ip, flow.dst_port);
        let client = (flow.protocol, flow.src_ip, flow.src_port);
        match self.table.get_mut(&client) {
            Some(delivery) if delivery.dst == dst => {
                delivery.syns = delivery.syns.saturating_add(1);
                delivery.at = delivery.at.max(packet.monotonic);
                delivery.ifindex = packet.ifindex;
            }
            // New, or the port now connects elsewhere: what went before is another flow's.
            _ => {
                self.table.put(
                    client,
                    Delivery {
                        dst,
                        ifindex: packet.ifindex,
                        at: packet.monotonic,
                        syns: 1,
                    },
                );
            }
        }
    }

    /// The SYNs delivered from client end `src_ip:src_port`. A look, not a use: it does
    /// not change which entry goes first at capacity.
    pub fn lookup(&self, protocol: Protocol, src_ip: IpAddr, src_port: u16) -> Option<&Delivery> {
        self.table.peek(&(protocol, src_ip, src_port))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use probe_ebpf::{Direction, IPPROTO_TCP};

    use super::*;
    use crate::{
        craft,
        decode::flow_from_key,
        metrics::Metrics,
        model::{Flow, VerdictKind},
        track::{Clock, Tracker, TrackerConfig},
    };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn packet(kind: EventKind, client: &str, server: &str, ifindex: u32, at_ms: u64) -> Packet {
        let key = craft::flow_key(IPPROTO_TCP, addr(client), addr(server));
        Packet {
            kind,
            direction: if kind == EventKind::SynDelivered {
                Direction::ToPod
            } else {
                Direction::FromPod
            },
            ifindex,
            monotonic: Duration::from_millis(at_ms),
            flow: flow_from_key(&key).unwrap(),
            key,
            dns: None,
        }
    }

    fn delivered(client: &str, server: &str, at_ms: u64) -> Packet {
        packet(EventKind::SynDelivered, client, server, 9, at_ms)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_delivery_is_found_by_its_client_end() {
        let mut d = Deliveries::new(NonZeroUsize::new(16).unwrap());
        assert_eq!(d.lookup(Protocol::Tcp, ip("10.244.0.5"), 41000), None);
        d.record(&delivered("10.244.0.5:41000", "10.244.0.9:8080", 1000));
        let expected = Delivery {
            dst: addr("10.244.0.9:8080"),
            ifindex: 9,
            at: Duration::from_secs(1),
            syns: 1,
        };
        assert_eq!(
            d.lookup(Protocol::Tcp, ip("10.244.0.5"), 41000),
            Some(&expected)
        );
        // Another port, address or protocol is another client end.
        assert_eq!(d.lookup(Protocol::Tcp, ip("10.244.0.5"), 41001), None);
        assert_eq!(d.lookup(Protocol::Tcp, ip("10.244.0.6"), 41000), None);
        assert_eq!(d.lookup(Protocol::Udp, ip("10.244.0.5"), 41000), None);
    }

    #[test]
    fn retransmissions_add_up_and_a_new_server_starts_over() {
        let mut d = Deliveries::new(NonZeroUsize::new(16).unwrap());
        let client = "[fd00:10:244::5]:41000";
        d.record(&delivered(client, "[fd00:10:244::9]:8080", 0));
        d.record(&delivered(client, "[fd00:10:244::9]:8080", 1000));
        d.record(&delivered(client, "[fd00:10:244::9]:8080", 3000));
        let found = *d
            .lookup(Protocol::Tcp, ip("fd00:10:244::5"), 41000)
            .unwrap();
        assert_eq!((found.syns, found.at), (3, Duration::from_secs(3)));
        // The port reused towards another server: that is the delivery now.
        d.record(&delivered(client, "[fd00:10:244::7]:5432", 9000));
        let found = *d
            .lookup(Protocol::Tcp, ip("fd00:10:244::5"), 41000)
            .unwrap();
        assert_eq!(found.dst, addr("[fd00:10:244::7]:5432"));
        assert_eq!((found.syns, found.at), (1, Duration::from_secs(9)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn only_syn_deliveries_are_recorded() {
        let mut d = Deliveries::new(NonZeroUsize::new(16).unwrap());
        for kind in [EventKind::Syn, EventKind::SynAck, EventKind::Rst] {
            d.record(&packet(kind, "10.244.0.5:41000", "10.244.0.9:8080", 3, 0));
        }
        assert!(d.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_the_oldest_delivery_goes_first() {
        let mut d = Deliveries::new(NonZeroUsize::new(2).unwrap());
        d.record(&delivered("10.244.0.5:1", "10.244.0.9:80", 0));
        d.record(&delivered("10.244.0.5:2", "10.244.0.9:80", 1));
        // Looking does not keep an entry: port 1 is still the oldest.
        assert!(d.lookup(Protocol::Tcp, ip("10.244.0.5"), 1).is_some());
        d.record(&delivered("10.244.0.5:3", "10.244.0.9:80", 2));
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(Protocol::Tcp, ip("10.244.0.5"), 1), None);
        assert!(d.lookup(Protocol::Tcp, ip("10.244.0.5"), 3).is_some());
    }

    /// In the tracker: no flow, no event, no verdict change; found for the flow the
    /// client's veth counted, here through a Service (ClusterIP at the client's veth, the
    /// pod's ip:targetPort at the server's).
    #[test]
    fn the_tracker_keeps_deliveries_aside_and_finds_them_for_a_flow() {
        let metrics = Arc::new(Metrics::new(2000));
        let mut t = Tracker::new(TrackerConfig::default(), Clock::new(), Arc::clone(&metrics));
        let (client, service, pod) = ("10.244.0.5:41000", "10.96.0.20:80", "10.244.0.9:8080");
        t.on_packet(&delivered(client, pod, 1000));
        assert_eq!(t.flows_tracked(), 0);
        assert!(t.events(&|_| true, 10).is_empty());

        let syn = packet(EventKind::Syn, client, service, 4, 999);
        t.on_packet(&syn);
        t.on_packet(&delivered(client, pod, 2000));
        let verdicts = t.verdicts(&|_| true, 10);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(
            (verdicts[0].verdict, verdicts[0].counts.syn),
            (VerdictKind::Pending, 1)
        );
        assert_eq!(t.events(&|_| true, 10).len(), 1, "the SYN's event only");
        let delivery = t.syn_delivery(&syn.flow).expect("delivered");
        assert_eq!(delivery.dst, addr(pod));
        assert_eq!((delivery.ifindex, delivery.syns), (9, 2));
        assert_eq!(delivery.at, Duration::from_secs(2));
        let elsewhere = Flow {
            src_port: 41001,
            ..syn.flow
        };
        assert_eq!(t.syn_delivery(&elsewhere), None);

        // Counted apart from the flows' SYNs.
        let text = metrics.encode();
        assert!(text.contains("\nnetprobe_packets_total{kind=\"syn\"} 1\n"));
        assert!(text.contains("\nnetprobe_packets_total{kind=\"syn_delivered\"} 2\n"));
    }
}
