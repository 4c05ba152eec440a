//! The datapath's threads before the API's. Under a flood with the API busy, the tracker
//! got too little of a 2-core node to keep up and whole batches of events were dropped;
//! an answer that comes a few milliseconds later loses nothing.
//!
//! Raising the datapath's priority would need CAP_SYS_NICE, which the agent drops; any
//! thread may lower its own. So the runtime's threads (API, node watch, counter reads)
//! run at [`API_NICE`], and the datapath's dedicated threads ([`super::tasks::spawn_dedicated`])
//! are started from the main thread, which keeps the default.

use tracing::warn;

/// The runtime threads' nice value: a weight ~10 times below the default's.
pub const API_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`API_NICE`] (for the runtime's
/// `on_thread_start`). A failure is logged: the agent works on, without the preference.
pub fn yield_to_datapath() {
    // SAFETY: setpriority on the calling thread (who = 0 is this thread on Linux).
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, API_NICE) };
    if set != 0 {
        warn!(
            "lowering a runtime thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The calling thread's nice value.
pub fn this_threads_nice() -> i32 {
    // getpriority returns the nice value itself (-1 is a valid answer, so errno is the
    // only sign of failure, which cannot happen for the calling thread).
    // SAFETY: a read of the calling thread's priority.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_yields_runs_at_the_api_nice_and_its_creator_does_not() {
        let creator = this_threads_nice();
        let yielded = std::thread::spawn(|| {
            yield_to_datapath();
            this_threads_nice()
        })
        .join()
        .unwrap();
        assert_eq!(yielded, API_NICE.max(creator));
        assert_eq!(this_threads_nice(), creator);
    }
}
