//! The agent's vital tasks: spawned (with `--test-fault`, one fails on purpose) and
//! watched, so that the first to end, and why, is what stops the agent.

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::TaskName;

/// With `--test-fault`: how long after it starts the chosen task fails.
const FAULT_AFTER: Duration = Duration::from_secs(1);

pub(super) type Task = JoinHandle<anyhow::Result<()>>;

/// Spawns one of the agent's vital tasks; with `--test-fault` naming it, it panics
/// [`FAULT_AFTER`] after it starts, as a bug would.
pub(super) fn spawn_task(
    name: TaskName,
    fault: Option<TaskName>,
    task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> Task {
    tokio::spawn(with_fault(name, fault, task))
}

/// Spawns a vital task as [`spawn_task`] does, but on an OS thread of its own (named
/// `thread`) with a runtime of its own. The datapath's tasks go there: on the shared
/// workers a woken task waits its turn behind every request the API is serving, and under
/// a flood with the API busy the tracker got too few turns to keep up. Called from the
/// main thread, the thread keeps the default priority (see [`super::priority`]).
pub(super) fn spawn_dedicated(
    name: TaskName,
    thread: &str,
    fault: Option<TaskName>,
    task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> Task {
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            let nice = super::priority::this_threads_nice();
            if nice > 0 {
                warn!(
                    nice,
                    "{name} runs below the default priority: started from a runtime thread"
                );
            }
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|runtime| runtime.block_on(with_fault(name, fault, task)))
            }));
            let _ = done_tx.send(ended);
        });
    let thread = thread.to_owned();
    tokio::spawn(async move {
        spawned.map_err(|err| anyhow::anyhow!("starting thread {thread}: {err}"))?;
        match done.await {
            Ok(Ok(ended)) => ended,
            // Its panic, as the task's own: named with its message like any other.
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(anyhow::anyhow!("thread {thread} ended without a word")),
        }
    })
}

async fn with_fault(
    name: TaskName,
    fault: Option<TaskName>,
    task: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    if fault != Some(name) {
        return task.await;
    }
    tokio::select! {
        result = task => result,
        () = tokio::time::sleep(FAULT_AFTER) => panic!("injected fault (--test-fault): {name} fails"),
    }
}

/// How a task ended, the most telling last.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum End {
    /// Returned: usually because a channel to another task closed.
    Ended,
    Cancelled(String),
    Failed(String),
    Panicked(String),
}

impl End {
    async fn of(task: &mut Task) -> Self {
        match task.await {
            Ok(Ok(())) => Self::Ended,
            Ok(Err(err)) => Self::Failed(format!("{err:#}")),
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                Self::Panicked(message)
            }
            Err(err) => Self::Cancelled(err.to_string()),
        }
    }

    fn describe(&self, name: TaskName) -> String {
        match self {
            Self::Ended => format!("{name} ended"),
            Self::Cancelled(err) => format!("{name} was cancelled: {err}"),
            Self::Failed(err) => format!("{name} failed: {err}"),
            Self::Panicked(message) => format!("{name} panicked: {message}"),
        }
    }
}

/// A task that ends often takes another with it (the tracker gone, the counter reader's
/// channel closes): this long for the cause to show before the reason is chosen.
pub(super) const CAUSE_GRACE: Duration = Duration::from_millis(500);

/// Waits until one of `tasks` ends and says which and how, naming the most telling end
/// among those that follow within [`CAUSE_GRACE`]. Never resolves for no task.
pub(super) async fn first_to_end(tasks: &mut [(TaskName, Task)]) -> String {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let (end, index, _) = futures::future::select_all(
        tasks
            .iter_mut()
            .map(|(name, task)| Box::pin(async move { (*name, End::of(task).await) })),
    )
    .await;
    let mut ends = vec![end];
    let grace = tokio::time::Instant::now() + CAUSE_GRACE;
    for (i, (name, task)) in tasks.iter_mut().enumerate() {
        if i == index {
            continue;
        }
        if let Ok(end) = tokio::time::timeout_at(grace, End::of(task)).await {
            ends.push((*name, end));
        }
    }
    // The first of the most telling: a panic explains the plain ends it caused.
    let mut chosen = 0;
    for (i, (_, end)) in ends.iter().enumerate() {
        if *end > ends[chosen].1 {
            chosen = i;
        }
    }
    let (name, end) = &ends[chosen];
    end.describe(*name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Task {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_task_that_panics_is_named_with_its_message() {
        let mut tasks = [
            (TaskName::RingReader, idle()),
            (
                TaskName::Tracking,
                spawn_task(
                    TaskName::Tracking,
                    Some(TaskName::Tracking),
                    std::future::pending(),
                ),
            ),
            (TaskName::KernelCounts, idle()),
        ];
        let reason = first_to_end(&mut tasks).await;
        assert_eq!(
            reason,
            "the tracking task panicked: injected fault (--test-fault): the tracking task fails"
        );
    }

    #[tokio::test]
    async fn the_task_that_failed_is_named_not_the_one_it_took_along() {
        let (closed_tx, mut closed) = tokio::sync::mpsc::channel::<()>(1);
        let mut tasks = [
            // Ends first, when its channel closes: a consequence, not the cause.
            (
                TaskName::KernelCounts,
                spawn_task(TaskName::KernelCounts, None, async move {
                    closed.recv().await;
                    Ok(())
                }),
            ),
            (
                TaskName::Tracking,
                spawn_task(TaskName::Tracking, None, async move {
                    let _sender = closed_tx;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    panic!("tracker bug")
                }),
            ),
            (TaskName::RingReader, idle()),
        ];
        assert_eq!(
            first_to_end(&mut tasks).await,
            "the tracking task panicked: tracker bug"
        );
    }

    #[tokio::test]
    async fn a_task_on_its_own_thread_is_named_as_any_other() {
        let mut tasks = [
            (TaskName::RingReader, idle()),
            (
                TaskName::Tracking,
                spawn_dedicated(
                    TaskName::Tracking,
                    "netprobe-test",
                    Some(TaskName::Tracking),
                    async {
                        assert_eq!(std::thread::current().name(), Some("netprobe-test"));
                        std::future::pending().await
                    },
                ),
            ),
        ];
        assert_eq!(
            first_to_end(&mut tasks).await,
            "the tracking task panicked: injected fault (--test-fault): the tracking task fails"
        );
        let mut ended = [(
            TaskName::RingReader,
            spawn_dedicated(TaskName::RingReader, "netprobe-test", None, async {
                Err(anyhow::anyhow!("EBADF"))
            }),
        )];
        assert_eq!(
            first_to_end(&mut ended).await,
            "the ring-buffer reader failed: EBADF"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_is_dead_too() {
        let mut tasks = [
            (TaskName::Tracking, idle()),
            (
                TaskName::RingReader,
                spawn_task(TaskName::RingReader, None, async {
                    Err(anyhow::anyhow!("polling the ring buffer: EBADF"))
                }),
            ),
            (
                TaskName::KernelCounts,
                spawn_task(TaskName::KernelCounts, Some(TaskName::Tracking), async {
                    std::future::pending().await
                }),
            ),
        ];
        let reason = first_to_end(&mut tasks).await;
        assert_eq!(
            reason,
            "the ring-buffer reader failed: polling the ring buffer: EBADF"
        );
        let mut ended = [(
            TaskName::KernelCounts,
            spawn_task(TaskName::KernelCounts, None, async { Ok(()) }),
        )];
        assert_eq!(
            first_to_end(&mut ended).await,
            "the kernel-counter reader ended"
        );
    }
}
