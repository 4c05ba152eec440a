//! The kernel's CLOCK_MONOTONIC timestamps, and their wall-clock time.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    pub(super) epoch: DateTime<Utc>,
}

impl Clock {
    pub fn new() -> Self {
        let now = Utc::now();
        Self {
            epoch: now - monotonic_now(),
        }
    }

    /// Takes the wall clock again: an NTP step moves it, the monotonic clock never.
    pub fn resync(&mut self) {
        *self = Self::new();
    }

    pub fn to_utc(&self, monotonic: Duration) -> DateTime<Utc> {
        self.epoch + monotonic
    }
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
