//! The ring-buffer reader: drains the kernel's records into batches for the tracker.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use probe_ebpf::EVENT_HEADER_BYTES;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

use super::queue;
use crate::metrics::{DecodeErrorKind, LossSource, Metrics};

/// How soon records carried over from a full queue are offered again.
const CARRIED_RETRY: Duration = Duration::from_millis(10);

/// Drains the ring buffer whenever the kernel signals it, in batches of raw records.
pub(super) async fn read_ring(
    ring: RingBuf<MapData>,
    batches: mpsc::Sender<Vec<u8>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long
    // as it lives, and the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the ring buffer: {err}"))?;
    let mut batcher = queue::Batcher::default();
    loop {
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            // Records carried over from a full queue go out as soon as there is room,
            // not only with the next packet.
            _ = tokio::time::sleep(CARRIED_RETRY), if batcher.pending() > 0 => {
                let lost = batcher.flush(&batches);
                if lost > 0 {
                    metrics.events_lost(LossSource::Agent, lost);
                }
                continue;
            }
            _ = shutdown.changed() => {
                // Carried over and never sent: lost as well.
                metrics.events_lost(LossSource::Agent, batcher.pending());
                return Ok(());
            }
        };
        let ring = guard.get_inner_mut();
        let mut lost = 0;
        while let Some(item) = ring.next() {
            // The kernel writes a header and at most CAPTURE_BYTES after it; anything else
            // is reported here, not batched (whether the lengths inside agree is decode's).
            if !(EVENT_HEADER_BYTES..=queue::MAX_RECORD).contains(&item.len()) {
                metrics.decode_error(DecodeErrorKind::Truncated);
                continue;
            }
            lost += batcher.push(&item, &batches);
        }
        lost += batcher.flush(&batches);
        if lost > 0 {
            metrics.events_lost(LossSource::Agent, lost);
        }
        guard.clear_ready();
    }
}
