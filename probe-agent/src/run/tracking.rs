//! The tracker's loop: decodes and tracks batches, sweeps timeouts, and reconciles with
//! the kernel's counters, which another task reads off it.

use std::{
    ops::ControlFlow,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray};
use probe_ebpf::{FlowCounters, HookKey, LossCounter};
use tokio::{
    sync::{mpsc, watch},
    time::{MissedTickBehavior, interval},
};

use super::{lock, queue};
use crate::{
    decode::{self, DecodeError},
    loader::{
        self,
        counts::{CounterReader, FlowCounts},
    },
    metrics::{DecodeErrorKind, LossSource, Metrics},
    track::{Tracker, monotonic_now},
};

const SWEEP_EVERY: Duration = Duration::from_millis(50);
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// What the kernel counted, read once per [`RECONCILE_EVERY`] and handed over a batch at
/// a time.
pub(super) struct KernelCounts {
    /// Up to [`BATCH_ENTRIES`](loader::counts::BATCH_ENTRIES) hooks' counters, as one
    /// batch of the read found them.
    flows: FlowCounts,
    /// The event counters, read after the batch: whether its counts are settled.
    ring_full: u64,
    submitted: u64,
}

/// Buffers of one batch that go round between the counter reader and the tracker: one
/// filled while the tracker reconciles the other.
pub(super) const COUNT_BUFFERS: usize = 2;

/// Reads the kernel's per-flow and event counters off the tracking task: a full table is
/// 65,536 entries, which must not stall decoding under a flood. Read in batches
/// ([`CounterReader`]: 17 bpf(2) calls for a full table, against 131,073 key by key),
/// each handed to the tracker as it comes.
///
/// [`COUNT_BUFFERS`] buffers of one batch serve every read (640 KiB each): the tracker
/// hands each back once reconciled, and the reader waits for one. A buffer for the whole
/// table held 10 MiB, and fresh ones, queued behind a busy tracker, 30 MiB under a flood.
/// `spent` starts with the buffers beyond the reader's own.
pub(super) async fn read_kernel_counts(
    flow_counts: aya::maps::HashMap<MapData, HookKey, FlowCounters>,
    losses: PerCpuArray<MapData, u64>,
    (counts, spent): (mpsc::Sender<KernelCounts>, mpsc::Receiver<FlowCounts>),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut reader = CountsReader {
        flow_counts,
        losses,
        reader: CounterReader::default(),
        batch: FlowCounts::default(),
        counts,
        spent,
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Blocking: the bpf(2) calls, and waiting for the tracker between batches.
        let read = tokio::task::spawn_blocking(move || {
            let going = reader.read();
            // Under a flood the heap churns (an evicted flow frees its boxed parts, the
            // API's answers come and go): the freed pages go back to the kernel once a
            // second rather than fragmentation holding them. Here, off the tracking task:
            // a trim of a large heap takes milliseconds the queue would have to absorb.
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            unsafe { libc::malloc_trim(0) };
            (reader, going)
        })
        .await;
        match read {
            Ok((back, true)) => reader = back,
            // The tracker is gone (shut down), or the read panicked.
            _ => return,
        }
    }
}

/// The counter reader's state, moved onto a blocking thread for each read.
struct CountsReader {
    flow_counts: aya::maps::HashMap<MapData, HookKey, FlowCounters>,
    losses: PerCpuArray<MapData, u64>,
    reader: CounterReader,
    /// The buffer being filled.
    batch: FlowCounts,
    counts: mpsc::Sender<KernelCounts>,
    spent: mpsc::Receiver<FlowCounts>,
}

impl CountsReader {
    /// Reads the whole map, handing each batch to the tracker; false once it is gone.
    fn read(&mut self) -> bool {
        let Self {
            flow_counts,
            losses,
            reader,
            batch,
            counts,
            spent,
        } = self;
        let mut going = true;
        reader.read(flow_counts, batch, |filled, _last| {
            // The next batch goes into a buffer the tracker is done with.
            let Some(next) = spent.blocking_recv() else {
                going = false;
                return ControlFlow::Break(());
            };
            let handed = KernelCounts {
                flows: std::mem::replace(filled, next),
                ring_full: loader::kernel_count(losses, LossCounter::RingFull),
                submitted: loader::kernel_count(losses, LossCounter::Submitted),
            };
            if counts.blocking_send(handed).is_err() {
                going = false;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        going
    }
}

/// Decodes and tracks batches; sweeps timeouts; reconciles with the kernel's counters.
pub(super) async fn track_loop(
    mut batches: mpsc::Receiver<Vec<u8>>,
    (mut kernel, spent): (mpsc::Receiver<KernelCounts>, mpsc::Sender<FlowCounts>),
    tracker: Arc<Mutex<Tracker>>,
    metrics: Arc<Metrics>,
    per_interface: mpsc::UnboundedSender<(u32, u64)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sweep = interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut kernel_lost = 0u64;
    let mut kernel_emitted = 0u64;
    // Every event the tracker saw or knows lost: with the kernel's total, whether the
    // ring and the queue are drained.
    let mut accounted = 0u64;
    loop {
        tokio::select! {
            Some(batch) = batches.recv() => {
                let mut seen_on: Vec<(u32, u64)> = Vec::new();
                let mut processed = 0;
                let mut tracker = lock(&tracker);
                for raw in queue::records(&batch) {
                    accounted += 1;
                    match decode::decode(raw) {
                        Ok(packet) => {
                            processed += 1;
                            match seen_on.iter_mut().find(|(i, _)| *i == packet.ifindex) {
                                Some((_, n)) => *n += 1,
                                None => seen_on.push((packet.ifindex, 1)),
                            }
                            tracker.on_packet(&packet);
                        }
                        Err(err) => metrics.decode_error(decode_error_kind(&err)),
                    }
                }
                drop(tracker);
                metrics.events_processed(processed);
                for counted in seen_on {
                    let _ = per_interface.send(counted);
                }
            }
            _ = sweep.tick() => lock(&tracker).sweep(monotonic_now()),
            Some(mut counts) = kernel.recv() => {
                let mut tracker = lock(&tracker);
                let now = monotonic_now();
                // Drained: every event the kernel handed over was read or dropped by the
                // agent, so every count of the batch is settled.
                let drained = accounted + metrics.events_lost_total(LossSource::Agent) >= counts.submitted;
                let read_up_to = if drained { now } else { tracker.newest_event() };
                tracker.reconcile(counts.flows.drain(), read_up_to, now);
                metrics.set_flows_tracked(tracker.flows_tracked() as u64);
                drop(tracker);
                // Room for it: no more buffers go round than the channel holds.
                let _ = spent.try_send(std::mem::take(&mut counts.flows));
                if counts.ring_full > kernel_lost {
                    metrics.events_lost(LossSource::Kernel, counts.ring_full - kernel_lost);
                    kernel_lost = counts.ring_full;
                }
                let emitted = counts.ring_full + counts.submitted;
                if emitted > kernel_emitted {
                    metrics.events_emitted(emitted - kernel_emitted);
                    kernel_emitted = emitted;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

pub(super) fn decode_error_kind(err: &DecodeError) -> DecodeErrorKind {
    match err {
        DecodeError::Truncated(_) | DecodeError::CapturedLength(_) => DecodeErrorKind::Truncated,
        DecodeError::Version(_) => DecodeErrorKind::Version,
        DecodeError::Kind(_) | DecodeError::Direction(_) => DecodeErrorKind::Kind,
        DecodeError::Malformed(_) => DecodeErrorKind::Malformed,
    }
}
