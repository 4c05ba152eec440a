//! A map of bounded size that forgets its least recently used entry first, and allocates
//! nothing once made: entries live in a slab reserved for its capacity up front (a page
//! is touched only when the map grows into it), an index of slot numbers finds them by
//! key, and the recency list is threaded through the entries as slot numbers. At capacity
//! the least recently used entry's slot is taken over in place.

use std::{
    hash::{BuildHasher, Hash},
    num::NonZeroUsize,
};

use hashbrown::HashTable;
use slab::Slab;

/// Where an entry is stored: stable while it stays in the map.
pub type Slot = u32;

/// End of the recency list.
const NONE: Slot = Slot::MAX;

struct Entry<K, V> {
    key: K,
    /// The key's hash: an eviction or an index resize does not hash it again.
    hash: u64,
    value: V,
    /// Neighbours in the recency list.
    newer: Slot,
    older: Slot,
}

pub struct LruSlab<K, V> {
    entries: Slab<Entry<K, V>>,
    index: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
    newest: Slot,
    oldest: Slot,
    capacity: NonZeroUsize,
}

impl<K: Hash + Eq + Copy, V> LruSlab<K, V> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        assert!(capacity.get() < NONE as usize, "capacity beyond 2^32 - 1");
        Self {
            entries: Slab::with_capacity(capacity.get()),
            // Twice the entries: removals leave tombstones, and with this room hashbrown
            // clears them in place instead of doubling the index.
            index: HashTable::with_capacity(capacity.get().saturating_mul(2)),
            hasher: Default::default(),
            newest: NONE,
            oldest: NONE,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn cap(&self) -> NonZeroUsize {
        self.capacity
    }

    /// The slot of `key`'s entry. Does not make it the most recent.
    pub fn find(&self, key: &K) -> Option<Slot> {
        self.find_hashed(self.hasher.hash_one(key), key)
    }

    fn find_hashed(&self, hash: u64, key: &K) -> Option<Slot> {
        self.index
            .find(hash, |&slot| self.entries[slot as usize].key == *key)
            .copied()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    /// `key`'s value, without making it the most recent.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.find(key)
            .map(|slot| &self.entries[slot as usize].value)
    }

    pub fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = self.find(key)?;
        Some(&mut self.entries[slot as usize].value)
    }

    /// `key`'s value, made the most recent.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let slot = self.find(key)?;
        self.touch(slot);
        Some(&self.entries[slot as usize].value)
    }

    /// The key at `slot`, which must be occupied.
    pub fn key_at(&self, slot: Slot) -> &K {
        &self.entries[slot as usize].key
    }

    /// The value at `slot`, which must be occupied.
    pub fn at(&self, slot: Slot) -> &V {
        &self.entries[slot as usize].value
    }

    pub fn at_mut(&mut self, slot: Slot) -> &mut V {
        &mut self.entries[slot as usize].value
    }

    /// The key and value at `slot`, if it holds one.
    pub fn at_slot(&self, slot: Slot) -> Option<(&K, &V)> {
        let entry = self.entries.get(slot as usize)?;
        Some((&entry.key, &entry.value))
    }

    pub fn at_slot_mut(&mut self, slot: Slot) -> Option<(&K, &mut V)> {
        let entry = self.entries.get_mut(slot as usize)?;
        Some((&entry.key, &mut entry.value))
    }

    /// `key`'s entry made the most recent, created by `make` if new; at capacity the
    /// least recently used entry (its slot, key and value) is handed to `evicted` and its
    /// slot taken over in place. Returns the slot and whether the entry was created.
    pub fn entry(
        &mut self,
        key: &K,
        make: impl FnOnce() -> V,
        evicted: impl FnOnce(Slot, &K, &V),
    ) -> (Slot, bool) {
        let hash = self.hasher.hash_one(key);
        if let Some(slot) = self.find_hashed(hash, key) {
            self.touch(slot);
            return (slot, false);
        }
        let slot = if self.entries.len() == self.capacity.get() {
            let slot = self.oldest;
            self.unindex(slot);
            self.unlink(slot);
            let entry = &mut self.entries[slot as usize];
            evicted(slot, &entry.key, &entry.value);
            entry.key = *key;
            entry.hash = hash;
            entry.value = make();
            slot
        } else {
            self.entries.insert(Entry {
                key: *key,
                hash,
                value: make(),
                newer: NONE,
                older: NONE,
            }) as Slot
        };
        let entries = &self.entries;
        self.index
            .insert_unique(hash, slot, |&s| entries[s as usize].hash);
        self.link_newest(slot);
        (slot, true)
    }

    /// Sets `key`'s value and makes it the most recent (the least recently used entry
    /// goes, at capacity).
    pub fn put(&mut self, key: K, value: V) {
        let mut value = Some(value);
        let (slot, created) = self.entry(&key, || value.take().expect("made once"), |_, _, _| ());
        if !created && let Some(value) = value {
            self.entries[slot as usize].value = value;
        }
    }

    /// Takes `key`'s entry out, its slot freed for the next.
    pub fn pop(&mut self, key: &K) -> Option<V> {
        let slot = self.find(key)?;
        self.unindex(slot);
        self.unlink(slot);
        Some(self.entries.remove(slot as usize).value)
    }

    /// Every entry, the most recently used first: a reader after the newest few can stop
    /// looking at an entry as soon as it is older than what it keeps.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let mut next = self.newest;
        std::iter::from_fn(move || {
            let entry = self.entries.get(next as usize)?;
            next = entry.older;
            Some((&entry.key, &entry.value))
        })
    }

    /// Every entry, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(_, e)| (&e.key, &mut e.value))
    }

    /// Makes the entry at `slot`, which must be occupied, the most recent.
    pub fn touch(&mut self, slot: Slot) {
        if slot != self.newest {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn unindex(&mut self, slot: Slot) {
        let hash = self.entries[slot as usize].hash;
        if let Ok(found) = self.index.find_entry(hash, |&s| s == slot) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(capacity: usize) -> LruSlab<u16, u32> {
        LruSlab::new(NonZeroUsize::new(capacity).unwrap())
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut recent = map(3);
        for key in 1..=3 {
            recent.put(key, u32::from(key) * 10);
        }
        // 1 is read: 2 is now the oldest. Peeking does not refresh.
        assert_eq!(recent.get(&1), Some(&10));
        assert_eq!(recent.peek(&2), Some(&20));
        recent.put(4, 40);
        assert!(!recent.contains(&2));
        assert_eq!(recent.len(), 3);
        let newest_first: Vec<u16> = recent.iter().map(|(k, _)| *k).collect();
        assert_eq!(newest_first, [4, 1, 3]);
        // Put on a present key replaces its value and refreshes it.
        recent.put(3, 33);
        recent.put(5, 50);
        assert_eq!(recent.peek(&3), Some(&33));
        assert!(!recent.contains(&1));
    }

    #[test]
    fn evicted_sees_what_it_replaces() {
        let mut recent = map(1);
        let (first, created) = recent.entry(&1, || 10, |_, _, _| unreachable!());
        assert!(created);
        let mut seen = None;
        let (second, created) = recent.entry(&2, || 20, |slot, k, v| seen = Some((slot, *k, *v)));
        assert_eq!((second, created, seen), (first, true, Some((first, 1, 10))));
        assert_eq!(recent.find(&1), None);
        assert_eq!(*recent.key_at(second), 2);
    }

    #[test]
    fn pop_frees_a_slot_and_keeps_the_list() {
        let mut recent = map(3);
        for key in 1..=3 {
            recent.put(key, u32::from(key));
        }
        assert_eq!(recent.pop(&2), Some(2));
        assert_eq!(recent.pop(&2), None);
        recent.put(4, 4);
        // Room was made: nothing evicted.
        let keys: Vec<u16> = recent.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [4, 3, 1]);
        assert_eq!(recent.pop(&4), Some(4));
        assert_eq!(recent.pop(&1), Some(1));
        assert_eq!(recent.pop(&3), Some(3));
        assert!(recent.is_empty());
        assert_eq!(recent.iter().count(), 0);
        recent.put(9, 9);
        assert_eq!(recent.iter().count(), 1);
    }

    #[test]
    fn churn_keeps_index_and_list_consistent() {
        let mut recent = map(64);
        for round in 0..20_000u32 {
            let key = (round * 7 % 300) as u16;
            match round % 5 {
                0 => {
                    recent.pop(&key);
                }
                1 => {
                    recent.get(&key);
                }
                _ => recent.put(key, round),
            }
            assert!(recent.len() <= 64);
        }
        for (key, _) in recent.iter() {
            assert!(recent.find(key).is_some());
        }
        assert_eq!(recent.iter().count(), recent.len());
        assert_eq!(recent.index.len(), recent.len());
    }
}
