//! The flow table: flows by key, the least recently used evicted first.
//!
//! Entries live in an [`LruSlab`] reserved for the table's capacity up front, so a new
//! flow allocates nothing. A second index of slot numbers finds them by the client's own
//! address and port (a server-side view of the same client endpoint, after a DNAT, is the
//! same connection).

use std::{hash::BuildHasher, num::NonZeroUsize};

use hashbrown::HashTable;
use probe_ebpf::FlowKey;

use super::lru_slab::LruSlab;
pub use super::lru_slab::Slot;

struct Entry<V> {
    value: V,
    /// The client-endpoint index points here.
    by_client: bool,
}

pub struct FlowTable<V> {
    entries: LruSlab<FlowKey, Entry<V>>,
    by_client: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
}

impl<V> FlowTable<V> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            entries: LruSlab::new(capacity),
            // Twice the entries, as the key index (see [`LruSlab::new`]).
            by_client: HashTable::with_capacity(capacity.get().saturating_mul(2)),
            hasher: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn cap(&self) -> NonZeroUsize {
        self.entries.cap()
    }

    /// The slot of `key`'s entry. Does not make it the most recent.
    pub fn find(&self, key: &FlowKey) -> Option<Slot> {
        self.entries.find(key)
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.entries.contains(key)
    }

    pub fn peek(&self, key: &FlowKey) -> Option<&V> {
        self.entries.peek(key).map(|e| &e.value)
    }

    pub fn peek_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        self.entries.peek_mut(key).map(|e| &mut e.value)
    }

    /// Makes the entry at `slot`, which must be occupied, the most recent.
    pub fn touch(&mut self, slot: Slot) {
        self.entries.touch(slot);
    }

    /// The entry at `slot`, which must be occupied.
    pub fn at_mut(&mut self, slot: Slot) -> &mut V {
        &mut self.entries.at_mut(slot).value
    }

    /// The key and entry at `slot`, if it holds one.
    pub fn at_slot(&self, slot: Slot) -> Option<(FlowKey, &V)> {
        self.entries.at_slot(slot).map(|(k, e)| (*k, &e.value))
    }

    pub fn at_slot_mut(&mut self, slot: Slot) -> Option<(FlowKey, &mut V)> {
        self.entries
            .at_slot_mut(slot)
            .map(|(k, e)| (*k, &mut e.value))
    }

    /// `key`'s entry made the most recent, created by `make` if new; at capacity the
    /// least recently used entry is handed to `evicted`, and its slot taken over in place.
    /// Returns the slot and whether the entry was created.
    pub fn entry(
        &mut self,
        key: &FlowKey,
        make: impl FnOnce() -> V,
        evicted: impl FnOnce(&V),
    ) -> (Slot, bool) {
        let (by_client, hasher) = (&mut self.by_client, &self.hasher);
        self.entries.entry(
            key,
            || Entry {
                value: make(),
                by_client: false,
            },
            |slot, key, entry| {
                if entry.by_client
                    && let Ok(found) = by_client
                        .find_entry(hasher.hash_one(ClientEndpoint::of(key)), |&s| s == slot)
                {
                    found.remove();
                }
                evicted(&entry.value);
            },
        )
    }

    /// Every entry, the most recently used first: a reader after the newest few can stop
    /// looking at an entry as soon as it is older than what it keeps.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        self.entries.iter().map(|(k, e)| (k, &e.value))
    }

    /// Every entry, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&FlowKey, &mut V)> {
        self.entries.iter_mut().map(|(k, e)| (k, &mut e.value))
    }

    /// Indexes the entry at `slot` by its client's endpoint (its key's source): the
    /// newest connection from an endpoint is the one found.
    pub fn index_client(&mut self, slot: Slot) {
        if self.entries.at(slot).by_client {
            return;
        }
        let endpoint = ClientEndpoint::of(self.entries.key_at(slot));
        let hash = self.hasher.hash_one(endpoint);
        let entries = &self.entries;
        let hasher = &self.hasher;
        let previous = match self.by_client.entry(
            hash,
            |&s| ClientEndpoint::of(entries.key_at(s)) == endpoint,
            |&s| hasher.hash_one(ClientEndpoint::of(entries.key_at(s))),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut found) => {
                Some(std::mem::replace(found.get_mut(), slot))
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                None
            }
        };
        if let Some(previous) = previous {
            self.entries.at_mut(previous).by_client = false;
        }
        self.entries.at_mut(slot).by_client = true;
    }

    /// The key of the newest connection indexed with the client endpoint of `view` (a
    /// view oriented client → server).
    pub fn by_client_endpoint(&self, view: &FlowKey) -> Option<FlowKey> {
        let endpoint = ClientEndpoint::of(view);
        self.by_client
            .find(self.hasher.hash_one(endpoint), |&s| {
                ClientEndpoint::of(self.entries.key_at(s)) == endpoint
            })
            .map(|&s| *self.entries.key_at(s))
    }
}

/// A client's address, port and protocol, as two integers: hashed once per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ClientEndpoint {
    address: u128,
    port_and_protocol: u32,
}

impl ClientEndpoint {
    /// The source end of a view oriented client → server.
    fn of(view: &FlowKey) -> Self {
        Self {
            address: u128::from_ne_bytes(view.src_addr),
            port_and_protocol: u32::from(view.src_port) << 8 | u32::from(view.protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;

    fn key(client_port: u16, server_port: u16) -> FlowKey {
        let at = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port);
        let mut key = FlowKey {
            src_port: client_port,
            dst_port: server_port,
            protocol: probe_ebpf::IPPROTO_TCP,
            ..FlowKey::default()
        };
        let mapped = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        key.src_addr = mapped(at(client_port));
        key.dst_addr = mapped(at(server_port));
        key
    }

    fn table(capacity: usize) -> FlowTable<u32> {
        FlowTable::new(NonZeroUsize::new(capacity).unwrap())
    }

    /// Enters the flow from client port `port` to 80: its slot, whether it was created,
    /// and what was evicted for it.
    fn enter(flows: &mut FlowTable<u32>, port: u16, value: u32) -> (Slot, bool, Option<u32>) {
        let mut evicted = None;
        let (slot, created) = flows.entry(&key(port, 80), || value, |v| evicted = Some(*v));
        (slot, created, evicted)
    }

    #[test]
    fn evicts_the_least_recently_entered() {
        let mut flows = table(3);
        for port in 1..=3 {
            assert!(enter(&mut flows, port, u32::from(port)).1);
        }
        // 1 is used again: 2 is now the oldest.
        let mut evicted = None;
        let (_, created) = flows.entry(&key(1, 80), || unreachable!(), |v| evicted = Some(*v));
        assert!(!created);
        assert_eq!(evicted, None);
        assert_eq!(enter(&mut flows, 4, 4).2, Some(2));
        assert!(!flows.contains(&key(2, 80)));
        assert_eq!(flows.len(), 3);
        // Most recently used first.
        let values: Vec<u32> = flows.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [4, 1, 3]);
        // Peeking does not refresh: 3 goes next.
        assert_eq!(flows.peek(&key(3, 80)), Some(&3));
        assert_eq!(enter(&mut flows, 5, 5).2, Some(3));
    }

    #[test]
    fn a_reused_slot_is_found_by_its_new_key_only() {
        let mut flows = table(1);
        let (first, _, _) = enter(&mut flows, 1, 1);
        let (second, created, evicted) = enter(&mut flows, 2, 2);
        assert_eq!((second, created, evicted), (first, true, Some(1)));
        assert_eq!(flows.find(&key(1, 80)), None);
        assert_eq!(flows.find(&key(2, 80)), Some(first));
        assert_eq!(*flows.at_mut(first), 2);
    }

    #[test]
    fn client_endpoint_finds_the_newest_indexed_connection() {
        let mut flows = table(4);
        let old = flows.entry(&key(1000, 80), || 1, |_| ()).0;
        flows.index_client(old);
        // Same client endpoint, another server (a DNAT's backend seen apart).
        let new = flows.entry(&key(1000, 8080), || 2, |_| ()).0;
        assert_eq!(
            flows.by_client_endpoint(&key(1000, 443)),
            Some(key(1000, 80))
        );
        flows.index_client(new);
        assert_eq!(
            flows.by_client_endpoint(&key(1000, 443)),
            Some(key(1000, 8080))
        );
        assert_eq!(flows.by_client_endpoint(&key(1001, 80)), None);
        // Evicting the indexed entry drops it from the index.
        for port in 1..=4 {
            enter(&mut flows, port, 0);
        }
        assert!(!flows.contains(&key(1000, 8080)));
        assert_eq!(flows.by_client_endpoint(&key(1000, 443)), None);
    }

    #[test]
    fn churn_past_capacity_keeps_every_index_consistent() {
        let mut flows = table(64);
        for round in 0..10_000u32 {
            let port = (round % 300) as u16;
            let (slot, _, _) = enter(&mut flows, port, round);
            if round % 3 == 0 {
                flows.index_client(slot);
            }
            assert!(flows.len() <= 64);
        }
        for (key, _) in flows.iter() {
            assert!(flows.find(key).is_some());
        }
        // (The key index's own count is checked in lru_slab's churn test.)
        assert_eq!(flows.iter().count(), flows.len());
        assert!(flows.by_client.len() <= flows.len());
    }
}
