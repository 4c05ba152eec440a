//! The reader's side of the queue to the tracker: batches of raw ring-buffer records,
//! and what to keep when the tracker falls behind.
//!
//! A full queue used to cost whole batches. Under a SYN flood those are nearly all the
//! flood's SYNs, but the few answers among them (SYN-ACK, RST, ICMP, DNS) are what settle
//! real connections: a healthy flow whose SYN-ACK is lost times out, unless the kernel's
//! counter map still holds it at the next reconcile, and a flood evicts it from there
//! within a second. So when a batch does not fit, its SYNs are dropped (and counted) and
//! everything else is carried into the next batch, up to a bound.
//!
//! Not at once, though: the tracker stalls now and then (a reconcile of a full table, a
//! heap trim), and a queue of batches fills fastest when batches are small, one per ring
//! wake-up at a moderate rate. A batch that finds the queue full is kept whole and grows,
//! up to [`HOLD_RECORDS`], for the reader's next try; only past that are its SYNs dropped.
//!
//! Records are variable-length (wire version 3): a batch holds each one after its length,
//! a `u16` in native byte order; [`records`] walks them.

use probe_ebpf::{EVENT_HEADER_BYTES, EventKind, PacketEvent};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Records per batch, at most.
pub const BATCH_RECORDS: usize = 256;
/// Records a batch may hold while the queue is full, waiting for room, before its SYNs
/// are dropped: with the queue's own 64 batches, a stall of ~0.4 s at 46 k SYN/s.
pub const HOLD_RECORDS: usize = 4 * BATCH_RECORDS;
/// Records carried over from batches that did not fit, at most.
const CARRY_RECORDS: usize = BATCH_RECORDS / 2;

/// The longest record: a header and [`probe_ebpf::CAPTURE_BYTES`] of packet.
pub const MAX_RECORD: usize = size_of::<PacketEvent>();
const LENGTH: usize = size_of::<u16>();
/// Room a batch starts with: SYNs, the records of a flood, take a header and ~80 bytes;
/// a batch of longer ones grows.
const BATCH_BYTES: usize = BATCH_RECORDS * (LENGTH + EVENT_HEADER_BYTES + 96);
const KIND_OFFSET: usize = std::mem::offset_of!(PacketEvent, kind);

/// The records of a batch, in order.
pub fn records(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        let (length, after) = rest.split_first_chunk::<LENGTH>()?;
        let length = usize::from(u16::from_ne_bytes(*length));
        let (record, after) = after.split_at_checked(length)?;
        rest = after;
        Some(record)
    })
}

/// Builds batches and sends them without waiting; returns what it had to drop.
pub struct Batcher {
    batch: Vec<u8>,
    records: usize,
    /// Of `batch`'s records, how many were carried over from a batch that did not fit.
    carried: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Self {
            batch: Vec::with_capacity(BATCH_BYTES),
            records: 0,
            carried: 0,
        }
    }
}

impl Batcher {
    /// Adds one whole record (at most [`MAX_RECORD`] bytes); a full batch is sent.
    /// Returns the records dropped.
    pub fn push(&mut self, record: &[u8], queue: &mpsc::Sender<Vec<u8>>) -> u64 {
        debug_assert!(record.len() <= MAX_RECORD);
        self.append(record);
        self.records += 1;
        if self.records >= BATCH_RECORDS {
            return self.flush(queue);
        }
        0
    }

    /// Sends what is batched. When the queue is full, the batch is kept for the next try
    /// while it holds fewer than [`HOLD_RECORDS`]; past that its SYNs are dropped and the
    /// rest is kept (beyond [`CARRY_RECORDS`], dropped too). Returns the records dropped.
    pub fn flush(&mut self, queue: &mpsc::Sender<Vec<u8>>) -> u64 {
        if self.records == 0 {
            return 0;
        }
        // The queue's room is counted in batches: while the tracker is behind, a short
        // batch waits to fill rather than take a slot for a few records.
        if self.records < BATCH_RECORDS && queue.capacity() < queue.max_capacity() / 2 {
            return 0;
        }
        match queue.try_reserve() {
            Ok(room) => {
                room.send(std::mem::replace(
                    &mut self.batch,
                    Vec::with_capacity(BATCH_BYTES),
                ));
                self.records = 0;
                self.carried = 0;
                0
            }
            Err(TrySendError::Full(())) if self.records < HOLD_RECORDS => 0,
            Err(TrySendError::Full(())) => {
                let batch = std::mem::take(&mut self.batch);
                self.records = 0;
                self.carried = 0;
                self.carry(&batch)
            }
            // The tracker is gone (shutting down): nothing will read them.
            Err(TrySendError::Closed(())) => {
                self.batch.clear();
                self.carried = 0;
                std::mem::take(&mut self.records) as u64
            }
        }
    }

    /// Keeps the records of `batch` that are not SYNs, as many as fit.
    fn carry(&mut self, batch: &[u8]) -> u64 {
        let mut dropped = 0;
        for record in records(batch) {
            if is_syn(record) || self.carried == CARRY_RECORDS {
                dropped += 1;
                continue;
            }
            self.append(record);
            self.records += 1;
            self.carried += 1;
        }
        dropped
    }

    fn append(&mut self, record: &[u8]) {
        let length = u16::try_from(record.len()).expect("a record is at most MAX_RECORD bytes");
        self.batch.extend_from_slice(&length.to_ne_bytes());
        self.batch.extend_from_slice(record);
    }

    /// Records batched and not sent yet (dropped when the reader stops).
    pub fn pending(&self) -> u64 {
        self.records as u64
    }
}

fn is_syn(record: &[u8]) -> bool {
    record
        .get(KIND_OFFSET..KIND_OFFSET + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .is_some_and(|bytes| u32::from_ne_bytes(bytes) == EventKind::Syn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of a length that varies with `tag`, as the kernel's do.
    fn record(kind: EventKind, tag: u8) -> Vec<u8> {
        let mut bytes = vec![tag; EVENT_HEADER_BYTES + usize::from(tag) % 300];
        bytes[KIND_OFFSET..KIND_OFFSET + 4].copy_from_slice(&(kind as u32).to_ne_bytes());
        bytes
    }

    fn record_of(i: usize) -> Vec<u8> {
        record(EventKind::Syn, i as u8)
    }

    #[test]
    fn a_torn_batch_ends_its_records_rather_than_misreading_them() {
        let mut batch = Vec::new();
        for tag in [1u8, 200] {
            let record = record(EventKind::SynAck, tag);
            batch.extend_from_slice(&(record.len() as u16).to_ne_bytes());
            batch.extend_from_slice(&record);
        }
        assert_eq!(records(&batch).count(), 2);
        assert_eq!(records(&batch[..batch.len() - 1]).count(), 1);
        assert_eq!(records(&batch[..1]).count(), 0);
    }

    fn kinds(batch: &[u8]) -> Vec<u32> {
        records(batch)
            .map(|r| u32::from_ne_bytes(r[KIND_OFFSET..KIND_OFFSET + 4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn batches_go_out_whole_while_the_queue_has_room() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut batcher = Batcher::default();
        let mut dropped = 0;
        for i in 0..BATCH_RECORDS + 3 {
            dropped += batcher.push(&record_of(i), &tx);
        }
        dropped += batcher.flush(&tx);
        assert_eq!(dropped, 0);
        let first = rx.try_recv().unwrap();
        assert_eq!(records(&first).count(), BATCH_RECORDS);
        for (i, record) in records(&first).enumerate() {
            assert_eq!(record, record_of(i), "records come back whole, in order");
        }
        let second = rx.try_recv().unwrap();
        assert_eq!(records(&second).count(), 3);
        assert_eq!(
            records(&second).last().unwrap(),
            record_of(BATCH_RECORDS + 2)
        );
        assert_eq!(batcher.pending(), 0);
    }

    #[test]
    fn a_short_batch_waits_to_fill_while_the_queue_is_backed_up() {
        let (tx, mut rx) = mpsc::channel(4);
        for _ in 0..3 {
            tx.try_send(Vec::new()).unwrap();
        }
        let mut batcher = Batcher::default();
        for i in 0..10 {
            assert_eq!(batcher.push(&record_of(i), &tx), 0);
        }
        assert_eq!((batcher.flush(&tx), batcher.pending()), (0, 10));
        // Filled, it goes out even though the tracker is still behind.
        for i in 10..BATCH_RECORDS {
            assert_eq!(batcher.push(&record_of(i), &tx), 0);
        }
        assert_eq!(batcher.pending(), 0);
        for _ in 0..3 {
            assert!(rx.try_recv().unwrap().is_empty());
        }
        assert_eq!(records(&rx.try_recv().unwrap()).count(), BATCH_RECORDS);
        // The tracker caught up: a short batch goes at once.
        batcher.push(&record_of(0), &tx);
        assert_eq!((batcher.flush(&tx), batcher.pending()), (0, 0));
        assert_eq!(records(&rx.try_recv().unwrap()).count(), 1);
    }

    #[test]
    fn a_full_queue_keeps_a_batch_until_it_holds_too_many() {
        let (tx, mut rx) = mpsc::channel(1);
        tx.try_send(Vec::new()).unwrap();
        let mut batcher = Batcher::default();
        let mut dropped = 0;
        for i in 0..HOLD_RECORDS - 1 {
            dropped += batcher.push(&record_of(i), &tx);
            dropped += batcher.flush(&tx);
        }
        assert_eq!((dropped, batcher.pending()), (0, HOLD_RECORDS as u64 - 1));
        // Room again: all of it goes, in order.
        rx.try_recv().unwrap();
        assert_eq!(batcher.flush(&tx), 0);
        let batch = rx.try_recv().unwrap();
        assert_eq!(records(&batch).count(), HOLD_RECORDS - 1);
        assert_eq!(records(&batch).nth(300).unwrap(), record_of(300));
        assert_eq!(batcher.pending(), 0);
    }

    #[test]
    fn a_full_queue_drops_the_syns_and_carries_the_answers() {
        let (tx, mut rx) = mpsc::channel(1);
        tx.try_send(Vec::new()).unwrap();
        let mut batcher = Batcher::default();
        let mut dropped = 0;
        // Held up to its bound: SYNs, then the answers and SYNs of the test.
        for i in 0..HOLD_RECORDS - 5 {
            dropped += batcher.push(&record_of(i), &tx);
        }
        assert_eq!(dropped, 0);
        for kind in [
            EventKind::Syn,
            EventKind::SynAck,
            EventKind::Syn,
            EventKind::Rst,
            EventKind::DnsResponse,
        ] {
            dropped += batcher.push(&record(kind, 0), &tx);
        }
        dropped += batcher.flush(&tx);
        assert_eq!((dropped, batcher.pending()), (HOLD_RECORDS as u64 - 3, 3));
        let dropped_before = dropped;
        // Room again: the answers go out first, with what came after them.
        rx.try_recv().unwrap();
        dropped += batcher.push(&record(EventKind::Syn, 1), &tx);
        dropped += batcher.flush(&tx);
        assert_eq!(dropped, dropped_before);
        assert_eq!(
            kinds(&rx.try_recv().unwrap()),
            [
                EventKind::SynAck as u32,
                EventKind::Rst as u32,
                EventKind::DnsResponse as u32,
                EventKind::Syn as u32
            ]
        );
    }

    #[test]
    fn what_is_carried_is_bounded_and_every_record_is_accounted_for() {
        let (tx, _rx) = mpsc::channel(1);
        tx.try_send(Vec::new()).unwrap();
        let mut batcher = Batcher::default();
        let total = 10 * BATCH_RECORDS;
        let mut dropped = 0;
        for _ in 0..total {
            dropped += batcher.push(&record(EventKind::SynAck, 0), &tx);
        }
        dropped += batcher.flush(&tx);
        assert!(batcher.pending() <= HOLD_RECORDS as u64);
        assert!(dropped > 0);
        assert_eq!(dropped + batcher.pending(), total as u64);
    }
}
