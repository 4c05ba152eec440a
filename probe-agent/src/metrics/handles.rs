//! Metric handles by what they count, destination port and the identity of the two named
//! flow ends: the hot path skips building and hashing the label strings of a family.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, PoisonError, RwLock},
};

use super::FlowLabels;
use crate::model::Endpoint;

/// Handles kept at most; new name snapshots bring new endpoint identities, so the cache
/// starts over rather than grow.
const ENTRIES: usize = 8192;

/// `kind`, destination port, and the addresses of the two named ends (0: unnamed).
type Key<K> = (K, u16, usize, usize);

struct Cached<M> {
    metric: M,
    /// The ends the key's addresses are of: held so no other endpoint can take them.
    _ends: [Option<Arc<Endpoint>>; 2],
}

pub(super) struct Handles<K, M> {
    entries: RwLock<HashMap<Key<K>, Cached<M>, foldhash::fast::RandomState>>,
}

impl<K, M> Default for Handles<K, M> {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::default()),
        }
    }
}

fn identity(end: Option<&Arc<Endpoint>>) -> usize {
    end.map_or(0, |end| Arc::as_ptr(end) as usize)
}

impl<K: Copy + Eq + Hash, M: Clone> Handles<K, M> {
    /// The handle of `kind` for the flow of `labels`, made by `make` (which builds the
    /// label strings) the first time.
    pub(super) fn get_or_insert(
        &self,
        kind: K,
        labels: &FlowLabels,
        make: impl FnOnce() -> M,
    ) -> M {
        let key = (
            kind,
            labels.dst_port,
            identity(labels.src),
            identity(labels.dst),
        );
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = entries.get(&key) {
            return cached.metric.clone();
        }
        drop(entries);
        let metric = make();
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= ENTRIES {
            entries.clear();
        }
        entries.insert(
            key,
            Cached {
                metric: metric.clone(),
                _ends: [labels.src.cloned(), labels.dst.cloned()],
            },
        );
        metric
    }
}
