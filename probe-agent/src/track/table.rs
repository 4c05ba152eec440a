//! The flow table: flows by key, the least recently used evicted first.
//!
//! Entries live in a slab reserved for the table's capacity up front, so a new flow
//! allocates nothing and a page is touched only when the table grows into it. Two index
//! tables of slot numbers find them: by key, and by the client's own address and port
//! (a server-side view of the same client endpoint, after a DNAT, is the same
//! connection). The recency list is threaded through the entries as slot numbers.

use std::{hash::BuildHasher, num::NonZeroUsize};

use hashbrown::HashTable;
use probe_ebpf::FlowKey;
use slab::Slab;

/// Where an entry is stored: stable while it stays in the table.
pub type Slot = u32;

/// End of the recency list.
const NONE: Slot = Slot::MAX;

struct Entry<V> {
    key: FlowKey,
    /// The key's hash: an eviction or an index resize does not hash it again.
    hash: u64,
    value: V,
    /// Neighbours in the recency list.
    newer: Slot,
    older: Slot,
    /// The client-endpoint index points here.
    by_client: bool,
}

pub struct FlowTable<V> {
    entries: Slab<Entry<V>>,
    by_key: HashTable<Slot>,
    by_client: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
    newest: Slot,
    oldest: Slot,
    capacity: NonZeroUsize,
}

impl<V> FlowTable<V> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        assert!(
            capacity.get() < NONE as usize,
            "flow capacity beyond 2^32 - 1"
        );
        // Twice the entries: removals leave tombstones, and with this room hashbrown
        // clears them in place instead of doubling the index.
        let index = || HashTable::with_capacity(capacity.get().saturating_mul(2));
        Self {
            entries: Slab::with_capacity(capacity.get()),
            by_key: index(),
            by_client: index(),
            hasher: Default::default(),
            newest: NONE,
            oldest: NONE,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn cap(&self) -> NonZeroUsize {
        self.capacity
    }

    /// The slot of `key`'s entry. Does not make it the most recent.
    pub fn find(&self, key: &FlowKey) -> Option<Slot> {
        self.find_hashed(self.hasher.hash_one(key), key)
    }

    fn find_hashed(&self, hash: u64, key: &FlowKey) -> Option<Slot> {
        self.by_key
            .find(hash, |&slot| self.entries[slot as usize].key == *key)
            .copied()
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.find(key).is_some()
    }

    pub fn peek(&self, key: &FlowKey) -> Option<&V> {
        self.find(key)
            .map(|slot| &self.entries[slot as usize].value)
    }

    pub fn peek_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        let slot = self.find(key)?;
        Some(&mut self.entries[slot as usize].value)
    }

    /// The entry at `slot`, which must be occupied.
    pub fn at_mut(&mut self, slot: Slot) -> &mut V {
        &mut self.entries[slot as usize].value
    }

    /// The key and entry at `slot`, if it holds one.
    pub fn at_slot(&self, slot: Slot) -> Option<(FlowKey, &V)> {
        let entry = self.entries.get(slot as usize)?;
        Some((entry.key, &entry.value))
    }

    pub fn at_slot_mut(&mut self, slot: Slot) -> Option<(FlowKey, &mut V)> {
        let entry = self.entries.get_mut(slot as usize)?;
        Some((entry.key, &mut entry.value))
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
        let hash = self.hasher.hash_one(key);
        if let Some(slot) = self.find_hashed(hash, key) {
            if slot != self.newest {
                self.unlink(slot);
                self.link_newest(slot);
            }
            return (slot, false);
        }
        let slot = if self.entries.len() == self.capacity.get() {
            let slot = self.oldest;
            self.unindex(slot);
            self.unlink(slot);
            let entry = &mut self.entries[slot as usize];
            evicted(&entry.value);
            entry.key = *key;
            entry.hash = hash;
            entry.by_client = false;
            entry.value = make();
            slot
        } else {
            self.entries.insert(Entry {
                key: *key,
                hash,
                value: make(),
                newer: NONE,
                older: NONE,
                by_client: false,
            }) as Slot
        };
        let entries = &self.entries;
        self.by_key
            .insert_unique(hash, slot, |&s| entries[s as usize].hash);
        self.link_newest(slot);
        (slot, true)
    }

    /// Every entry, the most recently used first: a reader after the newest few can stop
    /// looking at an entry as soon as it is older than what it keeps.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        let mut next = self.newest;
        std::iter::from_fn(move || {
            let entry = self.entries.get(next as usize)?;
            next = entry.older;
            Some((&entry.key, &entry.value))
        })
    }

    /// Every entry, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&FlowKey, &mut V)> {
        self.entries.iter_mut().map(|(_, e)| (&e.key, &mut e.value))
    }

    /// Indexes the entry at `slot` by its client's endpoint (its key's source): the
    /// newest connection from an endpoint is the one found.
    pub fn index_client(&mut self, slot: Slot) {
        if self.entries[slot as usize].by_client {
            return;
        }
        let endpoint = ClientEndpoint::of(&self.entries[slot as usize].key);
        let hash = self.hasher.hash_one(endpoint);
        let entries = &self.entries;
        let hasher = &self.hasher;
        match self.by_client.entry(
            hash,
            |&s| ClientEndpoint::of(&entries[s as usize].key) == endpoint,
            |&s| hasher.hash_one(ClientEndpoint::of(&entries[s as usize].key)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut found) => {
                let previous = std::mem::replace(found.get_mut(), slot);
                self.entries[previous as usize].by_client = false;
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(slot);
            }
        }
        self.entries[slot as usize].by_client = true;
    }

    /// The key of the newest connection indexed with the client endpoint of `view` (a
    /// view oriented client → server).
    pub fn by_client_endpoint(&self, view: &FlowKey) -> Option<FlowKey> {
        let endpoint = ClientEndpoint::of(view);
        self.by_client
            .find(self.hasher.hash_one(endpoint), |&s| {
                ClientEndpoint::of(&self.entries[s as usize].key) == endpoint
            })
            .map(|&s| self.entries[s as usize].key)
    }

    /// Takes the entry at `slot` out of both indexes.
    fn unindex(&mut self, slot: Slot) {
        let entry = &self.entries[slot as usize];
        if let Ok(found) = self.by_key.find_entry(entry.hash, |&s| s == slot) {
            found.remove();
        }
        if entry.by_client
            && let Ok(found) = self
                .by_client
                .find_entry(self.hasher.hash_one(ClientEndpoint::of(&entry.key)), |&s| {
                    s == slot
                })
        {
            found.remove();
        }
    }

    fn unlink(&mut self, slot: Slot) {
        let (newer, older) = {
            let entry = &self.entries[slot as usize];
            (entry.newer, entry.older)
        };
        match newer {
            NONE => self.newest = older,
            newer => self.entries[newer as usize].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            older => self.entries[older as usize].newer = newer,
        }
    }

    fn link_newest(&mut self, slot: Slot) {
        let previous = self.newest;
        {
            let entry = &mut self.entries[slot as usize];
            entry.newer = NONE;
            entry.older = previous;
        }
        match previous {
            NONE => self.oldest = slot,
            previous => self.entries[previous as usize].newer = slot,
        }
        self.newest = slot;
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
        assert_eq!(flows.iter().count(), flows.len());
        assert_eq!(flows.by_key.len(), flows.len());
        assert!(flows.by_client.len() <= flows.len());
    }
}
