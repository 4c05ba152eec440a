//! The kernel's CLOCK_MONOTONIC timestamps, and their wall-clock time.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero, in nanoseconds since 1970: an event's time is
    /// one addition (kept as [`UnixNanos`] until read).
    pub(super) epoch: i64,
}

/// Wall-clock time in nanoseconds since 1970, as recorded (a `DateTime` when read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixNanos(i64);

impl UnixNanos {
    pub fn to_utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.0)
    }
}

impl Clock {
    pub fn new() -> Self {
        let now = Utc::now()
            .timestamp_nanos_opt()
            .expect("the wall clock is within 1677-2262");
        Self {
            epoch: now.saturating_sub(nanos(monotonic_now())),
        }
    }

    /// Takes the wall clock again: an NTP step moves it, the monotonic clock never.
    pub fn resync(&mut self) {
        *self = Self::new();
    }

    pub fn to_utc(&self, monotonic: Duration) -> DateTime<Utc> {
        self.to_unix_nanos(monotonic).to_utc()
    }

    pub fn to_unix_nanos(&self, monotonic: Duration) -> UnixNanos {
        UnixNanos(self.epoch.saturating_add(nanos(monotonic)))
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}
