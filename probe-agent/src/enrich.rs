//! enrich: IP → pod / namespace / workload / Service, from the Kubernetes API.
//!
//! [`watch`] keeps a [`Directory`] of the cluster's pods, Services and EndpointSlices
//! from kube-rs watchers and publishes an immutable [`Snapshot`] of it into [`Names`].
//! The tracker reads that snapshot for every verdict and event: a lock-free pointer load,
//! so a slow or lost API server never stalls the packet path; names are then possibly
//! stale until the watch is back, never taken from a pod that gave its IP away.

mod directory;
mod intern;
mod objects;
mod watch;

use std::{net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;

pub use directory::{ClusterView, Directory, Snapshot};
pub use objects::{
    DeclaredPort, Labels, NamespaceRecord, PodRecord, PodView, ServicePortRecord, ServiceRecord,
    SliceEndpoint, SliceRecord, TargetPort, Uid, object_key,
};
pub use watch::{KubeOptions, client, watch};

use crate::model::{Endpoint, Flow};

/// The names currently known; cheap to clone, shared by the watcher (writer) and the
/// tracker (reader).
#[derive(Clone, Debug, Default)]
pub struct Names {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl Names {
    /// Names nothing: outside a cluster, or before the first list arrives.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The whole snapshot: the cluster's objects, for diagnosing a failure.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The client end of a flow.
    pub fn source(&self, ip: IpAddr) -> Option<Arc<Endpoint>> {
        self.snapshot.load().source(ip)
    }

    /// The server end of a flow.
    pub fn destination(&self, ip: IpAddr, port: u16) -> Option<Arc<Endpoint>> {
        self.snapshot.load().destination(ip, port)
    }

    /// A reader for one thread that keeps the snapshot it last loaded: naming a flow is
    /// then one pointer comparison while the names are unchanged (the packet path).
    pub fn cached(&self) -> CachedNames {
        CachedNames(arc_swap::Cache::new(Arc::clone(&self.snapshot)))
    }
}

/// See [`Names::cached`].
pub struct CachedNames(arc_swap::Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>);

impl CachedNames {
    /// The client and server ends of `flow`, from the newest snapshot.
    pub fn ends(&mut self, flow: &Flow) -> (Option<Arc<Endpoint>>, Option<Arc<Endpoint>>) {
        let snapshot = self.0.load();
        (
            snapshot.source(flow.src_ip),
            snapshot.destination(flow.dst_ip, flow.dst_port),
        )
    }
}

#[cfg(test)]
mod tests;
