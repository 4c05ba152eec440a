//! Keeping the attached set, and what the tracker and the API know of it, in line with
//! the node's interfaces.

use std::sync::{Mutex, RwLock};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::warn;

use super::lock;
use crate::{
    attach::{self, Attacher, LinkChange},
    local_addresses,
    metrics::Metrics,
    model::{AttachMode, InterfaceStatus},
    track::Tracker,
};

/// Starts watching interfaces come and go. The receiver closes when the watch fails.
pub(super) fn watch_links(rcvbuf: Option<usize>) -> (mpsc::Receiver<LinkChange>, JoinHandle<()>) {
    let (changes_tx, changes) = mpsc::channel(1024);
    let watcher = tokio::spawn(async move {
        if let Err(err) = attach::watch_links(changes_tx, rcvbuf).await {
            warn!("watching interfaces: {err}");
        }
    });
    (changes, watcher)
}

/// Lists every interface and brings the attached set in line with the listing.
pub(super) async fn relist(attacher: &mut Attacher, tracker: &Mutex<Tracker>) {
    match attach::list_links().await {
        Ok(links) => {
            let attached = attacher.resync(&links).await;
            note_changes(tracker, attacher, attached);
        }
        Err(err) => warn!("listing interfaces: {err}"),
    }
}

/// Tells the tracker which pod addresses the node routes to behind the attached veths.
pub(super) async fn learn_local_addresses(attacher: &Attacher, tracker: &Mutex<Tracker>) {
    match local_addresses::behind(&attacher.attached_indices()).await {
        Ok(found) => lock(tracker).set_routed_addresses(found),
        Err(err) => warn!("listing the routes and neighbours of attached veths: {err:#}"),
    }
}

/// Tells the tracker the names of newly attached interfaces, and which went away.
pub(super) fn note_changes(
    tracker: &Mutex<Tracker>,
    attacher: &mut Attacher,
    attached: impl IntoIterator<Item = (u32, String, AttachMode)>,
) {
    let forgotten = attacher.take_forgotten();
    let mut attached = attached.into_iter().peekable();
    if attached.peek().is_none() && forgotten.is_empty() {
        return;
    }
    let mut tracker = lock(tracker);
    for index in forgotten {
        tracker.forget_interface_name(index);
    }
    for (index, name, _) in attached {
        tracker.set_interface_name(index, &name);
    }
}

/// Makes the attached set visible to the API and metrics. Returns its size.
pub(super) fn publish(
    attacher: &Attacher,
    interfaces: &RwLock<Vec<InterfaceStatus>>,
    metrics: &Metrics,
) -> usize {
    let statuses = attacher.statuses();
    let attached = statuses.len();
    metrics.set_attached_interfaces(attached as u64);
    *interfaces.write().expect("not poisoned") = statuses;
    attached
}
