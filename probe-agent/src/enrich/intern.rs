//! One pool for the texts, label sets and port lists the directory's records hold.
//!
//! A cluster repeats itself: 10,000 pods live in a few namespaces on a few dozen nodes,
//! a workload's pods carry one label set and declare one port list, and a pod's name is
//! held by its record, its directory key and the EndpointSlices that list it. Records
//! take every such value from here, so each is held once however many records share it.
//!
//! Entries no record holds any more (the pool's is their only reference) are swept out
//! when the pool has doubled since the last sweep: the pool costs at most about twice
//! what is live, and a sweep is paid for by the insertions before it.

use std::{
    collections::HashSet,
    hash::Hash,
    sync::{Arc, LazyLock, Mutex, PoisonError},
};

use super::objects::DeclaredPort;

type Set<T> = HashSet<Arc<T>, foldhash::fast::RandomState>;

/// A label: key and value.
pub type Label = (Arc<str>, Arc<str>);

/// Entries added before the first sweep.
const FIRST_SWEEP: usize = 4096;

pub struct Pool {
    texts: Set<str>,
    labels: Set<[Label]>,
    ports: Set<[DeclaredPort]>,
    /// Entries (of all three sets) at which the next sweep is made.
    sweep_at: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
    Mutex::new(Pool {
        texts: Set::default(),
        labels: Set::default(),
        ports: Set::default(),
        sweep_at: FIRST_SWEEP,
    })
});

/// Runs `f` with the pool: one lock for all the values of a record.
pub fn with<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    // The pool is only ever inserted into and swept: a panic elsewhere leaves it whole.
    f(&mut POOL.lock().unwrap_or_else(PoisonError::into_inner))
}

impl Pool {
    pub fn text(&mut self, text: &str) -> Arc<str> {
        let shared = get_or_insert(&mut self.texts, text);
        self.sweep_if_grown();
        shared
    }

    /// A label set, sorted by key, its texts already from this pool.
    pub fn labels(&mut self, labels: &[Label]) -> Arc<[Label]> {
        let shared = get_or_insert(&mut self.labels, labels);
        self.sweep_if_grown();
        shared
    }

    /// A port list, its texts already from this pool.
    pub fn ports(&mut self, ports: &[DeclaredPort]) -> Arc<[DeclaredPort]> {
        let shared = get_or_insert(&mut self.ports, ports);
        self.sweep_if_grown();
        shared
    }

    fn len(&self) -> usize {
        self.texts.len() + self.labels.len() + self.ports.len()
    }

    fn sweep_if_grown(&mut self) {
        if self.len() < self.sweep_at {
            return;
        }
        // Label sets and port lists first: they hold texts. Under the lock, an entry
        // only the pool holds cannot be handed out meanwhile.
        self.labels.retain(|entry| Arc::strong_count(entry) > 1);
        self.ports.retain(|entry| Arc::strong_count(entry) > 1);
        self.texts.retain(|entry| Arc::strong_count(entry) > 1);
        self.sweep_at = (self.len() * 2).max(FIRST_SWEEP);
    }

    #[cfg(test)]
    fn sweep(&mut self) {
        self.sweep_at = 0;
        self.sweep_if_grown();
    }
}

fn get_or_insert<T: ?Sized + Eq + Hash>(set: &mut Set<T>, value: &T) -> Arc<T>
where
    for<'a> Arc<T>: From<&'a T>,
{
    if let Some(shared) = set.get(value) {
        return Arc::clone(shared);
    }
    let shared = Arc::from(value);
    set.insert(Arc::clone(&shared));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Arc<str> {
        with(|pool| pool.text(text))
    }

    #[test]
    fn equal_texts_are_one_allocation_until_no_record_holds_them() {
        let a = text("intern-test-namespace");
        let b = text(&String::from("intern-test-namespace"));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        with(|pool| {
            pool.sweep();
            assert!(!pool.texts.contains("intern-test-namespace"));
        });
        let held = text("intern-test-held");
        with(Pool::sweep);
        assert!(Arc::ptr_eq(&held, &text("intern-test-held")));
    }

    #[test]
    fn label_sets_are_shared_with_their_texts() {
        let set = |value: &str| {
            with(|pool| {
                let label = (pool.text("intern-test-app"), pool.text(value));
                pool.labels(&[label])
            })
        };
        let (a, b) = (set("web"), set("web"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &set("api")));
        assert!(Arc::ptr_eq(&a[0].0, &set("api")[0].0));
    }
}
