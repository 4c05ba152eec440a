//! Orderings of the tracker's queues: deadlines by time, verdicts by recency.

use std::time::Duration;

use super::Slot;
use crate::model::Verdict;

/// When to look at a flow again: the flow's slot in the table, and its generation, which
/// tells whether the slot still holds that flow (24 bytes, where a key alone is 40).
/// Ordered by time, then by flow instance (generations are unique).
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadline {
    pub(super) at: At,
    pub(super) generation: u64,
    pub(super) slot: Slot,
}

/// A deadline's time, in monotonic nanoseconds: 8 bytes where a `Duration` takes 16, in
/// a queue that holds up to twice as many entries as the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct At(u64);

impl From<Duration> for At {
    fn from(at: Duration) -> Self {
        Self(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl At {
    pub(super) fn get(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.generation) == (other.at, other.generation)
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

/// A verdict with its place in recency order: (last_seen, first_seen, generation).
pub(super) struct Ranked(pub(super) (Duration, Duration, u64), pub(super) Verdict);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}
