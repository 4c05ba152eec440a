//! Reading the kernel's per-hook counter map in bulk.
//!
//! The agent reads every entry of [`FLOW_COUNTS_MAP`](probe_ebpf::FLOW_COUNTS_MAP) once a
//! second. Key by key (aya's iterator) that is two bpf(2) calls per entry, 131,073 for a
//! full 65,536-entry table; `BPF_MAP_LOOKUP_BATCH` (Linux 5.6) copies up to
//! [`BATCH_ENTRIES`] entries per call, 17 calls for the same table. aya does not offer
//! batch operations, so the call is made here with the kernel's attribute layout from
//! aya-obj; when the kernel refuses it (too old, or a filter forbids the command), the
//! reader falls back to the iterator and stays with it.
//!
//! Either way a read hands its entries over one batch at a time, into one buffer of
//! [`BATCH_ENTRIES`]: a whole table at once took 10 MiB.

use std::{
    ops::ControlFlow,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use aya_obj::generated::{bpf_attr, bpf_attr__bindgen_ty_3, bpf_cmd};
use probe_ebpf::{FlowCounters, HookKey};

/// Entries per `BPF_MAP_LOOKUP_BATCH` call. A hash map's batch ends at a bucket
/// boundary, so a call may return fewer; a single bucket never holds this many.
pub const BATCH_ENTRIES: usize = 4096;

/// The kernel's counters, as one batch of a read found them: `keys[i]` counted
/// `values[i]`. Kept apart because that is how the kernel copies a batch out.
#[derive(Debug, Default)]
pub struct FlowCounts {
    pub keys: Vec<HookKey>,
    pub values: Vec<FlowCounters>,
}

impl FlowCounts {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
    }

    /// Every entry, leaving the buffers empty (and their capacity for the next read).
    pub fn drain(&mut self) -> impl Iterator<Item = (HookKey, FlowCounters)> + '_ {
        self.keys.drain(..).zip(self.values.drain(..))
    }
}

/// How one read went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Entries read.
    pub entries: usize,
    /// bpf(2) calls made.
    pub syscalls: u64,
    /// Whether the entries came in batches (else key by key).
    pub batched: bool,
}

/// How the reader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Batches, until the kernel refuses them.
    Batch,
    /// Key by key: the kernel refused batches, or the reader was made so.
    Iterate,
}

/// Reads the counter map, in batches where the kernel allows.
#[derive(Debug)]
pub struct CounterReader {
    mode: Mode,
}

impl Default for CounterReader {
    fn default() -> Self {
        Self { mode: Mode::Batch }
    }
}

impl CounterReader {
    /// A reader that never tries batches: the fallback, on its own (tests, comparisons).
    pub fn iterating() -> Self {
        Self {
            mode: Mode::Iterate,
        }
    }

    /// Whether reads still use batches.
    pub fn batched(&self) -> bool {
        self.mode == Mode::Batch
    }

    /// Reads every entry of `map` into `batch`, at most [`BATCH_ENTRIES`] at a time, and
    /// hands each batch to `each`, with whether it is the read's last (which may be
    /// empty); `batch` is cleared after each. `each` breaks to stop the read there.
    ///
    /// Should batches fail midway, the read starts over key by key: entries already
    /// handed over come again, with counters at least as high.
    pub fn read(
        &mut self,
        map: &HashMap<MapData, HookKey, FlowCounters>,
        batch: &mut FlowCounts,
        mut each: impl FnMut(&mut FlowCounts, bool) -> ControlFlow<()>,
    ) -> ReadStats {
        batch.clear();
        if self.mode == Mode::Batch {
            match read_batched(map, batch, &mut each) {
                Ok((entries, syscalls)) => {
                    return ReadStats {
                        entries,
                        syscalls,
                        batched: true,
                    };
                }
                Err(Refused::ForGood(err)) => {
                    tracing::warn!(
                        "the kernel refuses BPF_MAP_LOOKUP_BATCH ({err}): reading its counters key by key"
                    );
                    self.mode = Mode::Iterate;
                }
                // This read only: it starts over, key by key.
                Err(Refused::ThisTime(_)) => {}
            }
            batch.clear();
        }
        let (entries, syscalls) = read_iterating(map, batch, &mut each);
        ReadStats {
            entries,
            syscalls,
            batched: false,
        }
    }
}

/// Hands `batch` to `each` and empties it; returns whether to go on.
fn hand_over(
    batch: &mut FlowCounts,
    last: bool,
    each: &mut impl FnMut(&mut FlowCounts, bool) -> ControlFlow<()>,
) -> bool {
    let going = each(batch, last).is_continue();
    batch.clear();
    going
}

/// Every entry key by key (aya's iterator), in batches of [`BATCH_ENTRIES`]; returns the
/// entries and the bpf(2) calls.
fn read_iterating(
    map: &HashMap<MapData, HookKey, FlowCounters>,
    batch: &mut FlowCounts,
    each: &mut impl FnMut(&mut FlowCounts, bool) -> ControlFlow<()>,
) -> (usize, u64) {
    let mut entries = 0;
    for (key, value) in map.iter().filter_map(Result::ok) {
        batch.keys.push(key);
        batch.values.push(value);
        entries += 1;
        if batch.len() == BATCH_ENTRIES && !hand_over(batch, false, each) {
            return (entries, 2 * entries as u64);
        }
    }
    hand_over(batch, true, each);
    // The next key and its value per entry, and the call that finds no next key. (An
    // entry gone between the two calls is skipped.)
    (entries, 2 * entries as u64 + 1)
}

enum Refused {
    /// The command or the map type is not supported: no use asking again.
    ForGood(std::io::Error),
    /// Something about this read (a bucket larger than a batch, a fault).
    ThisTime(#[allow(dead_code)] std::io::Error),
}

/// Every entry in batches of up to [`BATCH_ENTRIES`], one per bpf(2) call, each handed to
/// `each`; returns the entries and the calls.
fn read_batched(
    map: &HashMap<MapData, HookKey, FlowCounters>,
    batch: &mut FlowCounts,
    each: &mut impl FnMut(&mut FlowCounts, bool) -> ControlFlow<()>,
) -> Result<(usize, u64), Refused> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    // The opaque position between calls: a hash map's is its next bucket's index (a u32);
    // room for a key, as libbpf gives it.
    let mut position = [0u64; size_of::<HookKey>().div_ceil(8)];
    let mut syscalls = 0;
    let mut entries = 0;
    loop {
        batch.clear();
        batch.keys.reserve(BATCH_ENTRIES);
        batch.values.reserve(BATCH_ENTRIES);
        // SAFETY: bpf_attr is a C union of integers, valid all zero.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch = bpf_attr__bindgen_ty_3 {
            // The first call starts from the beginning (no position), the next go on
            // from where the previous stopped.
            in_batch: if syscalls == 0 {
                0
            } else {
                position.as_ptr() as u64
            },
            out_batch: position.as_mut_ptr() as u64,
            keys: batch.keys.spare_capacity_mut().as_mut_ptr() as u64,
            values: batch.values.spare_capacity_mut().as_mut_ptr() as u64,
            count: BATCH_ENTRIES as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attribute points at buffers with room for `count` keys and values
        // of the map's sizes (HookKey and FlowCounters, checked by aya when the map was
        // taken) and at `position`, all alive for the call; the kernel writes nothing
        // else.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                size_of::<bpf_attr>(),
            )
        };
        syscalls += 1;
        let error = (ret < 0).then(std::io::Error::last_os_error);
        let end = match error.as_ref().and_then(std::io::Error::raw_os_error) {
            None => false,
            // The last batch: what it holds is still valid.
            Some(libc::ENOENT) => true,
            Some(
                libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM | libc::EACCES,
            )
            // ENOTSUPP, the kernel's own "not supported" (no libc name).
            | Some(524) => {
                return Err(Refused::ForGood(error.expect("an error")));
            }
            Some(_) => {
                return Err(Refused::ThisTime(error.expect("an error")));
            }
        };
        // SAFETY: the kernel reports how many entries it copied, never more than `count`.
        let copied = unsafe { attr.batch.count } as usize;
        let copied = copied.min(BATCH_ENTRIES);
        if !end && copied == 0 {
            // Not the end and nothing copied: not a reply this loop can make progress on.
            return Err(Refused::ThisTime(std::io::Error::other(
                "an empty batch before the end",
            )));
        }
        // SAFETY: the kernel initialised the first `copied` spare slots of each buffer
        // (empty before the call); HookKey and FlowCounters are plain integers, valid for
        // any bytes.
        unsafe {
            batch.keys.set_len(copied);
            batch.values.set_len(copied);
        }
        entries += copied;
        if !hand_over(batch, end, each) || end {
            return Ok((entries, syscalls));
        }
    }
}
