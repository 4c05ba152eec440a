//! The probe's side of the agent: attaches the programs, starts the vital tasks, and
//! follows interfaces and signals until shutdown or a task's death.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    time::{MissedTickBehavior, interval},
};
use tracing::{error, info, warn};

use super::{
    interfaces::{learn_local_addresses, note_changes, publish, relist, watch_links},
    ring::read_ring,
    tasks::{first_to_end, spawn_dedicated, spawn_task},
    tracking::{COUNT_BUFFERS, read_kernel_counts, track_loop},
};
use crate::{
    attach::{self, Attacher, LinkChange},
    config::{RunArgs, TaskName},
    loader::{self, counts::FlowCounts},
    metrics::Metrics,
    model::InterfaceStatus,
    track::Tracker,
};

/// Batches of raw records waiting for the tracker. Bounded: when the tracker falls
/// behind, the reader drops (SYNs first) and counts instead of stalling the ring buffer. 64 × 256
/// records of 0.26 KiB (a SYN's) to 0.63 KiB (the longest): 4 to 10 MiB, ~13 ms of tracking.
const QUEUE_BATCHES: usize = 64;
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How long a dead task's reason stays on /readyz before the agent exits (non-zero, so
/// the kubelet restarts it): long enough for a probe or a person to read why.
const DEAD_TASK_LINGER: Duration = Duration::from_secs(2);

pub(super) async fn run_probe(
    args: &RunArgs,
    mut ebpf: aya::Ebpf,
    tracker: &Arc<Mutex<Tracker>>,
    interfaces: &Arc<RwLock<Vec<InterfaceStatus>>>,
    ready: &Arc<RwLock<Result<(), String>>>,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let kernel_log = if args.kernel_log {
        let logger = aya_log::EbpfLogger::init(&mut ebpf).context("starting the kernel log")?;
        Some(tokio::spawn(forward_kernel_log(logger)))
    } else {
        None
    };
    let maps = loader::take_maps(&mut ebpf)?;
    let selector = attach::Selector::parse(&args.interfaces)?;
    let mut attacher = Attacher::new(ebpf, selector, args.attach_mode)?;

    // Subscribe before listing, so an interface created in between is not missed.
    let (mut changes, mut watcher) = watch_links(args.netlink_rcvbuf);
    let links = attach::list_links().await?;
    let attached = attacher.resync(&links).await;
    note_changes(tracker, &mut attacher, attached);
    let attached = publish(&attacher, interfaces, metrics);
    *ready.write().expect("not poisoned") = Ok(());
    metrics.set_ready(true);
    info!(
        interfaces = attached,
        globs = args.interfaces.join(","),
        "probe loaded and attached"
    );

    let fault = args.test_fault;
    let (batches_tx, batches) = mpsc::channel(QUEUE_BATCHES);
    // The reader and the tracker on threads of their own, before the API's (see
    // super::priority).
    let reader = spawn_dedicated(
        TaskName::RingReader,
        "netprobe-ring",
        fault,
        read_ring(
            maps.events,
            batches_tx,
            Arc::clone(metrics),
            shutdown.clone(),
        ),
    );
    let (per_interface_tx, mut per_interface) = mpsc::unbounded_channel();
    let (snapshots_tx, snapshots) = mpsc::channel(1);
    let (spent_tx, spent) = mpsc::channel(COUNT_BUFFERS);
    for _ in 1..COUNT_BUFFERS {
        spent_tx
            .try_send(FlowCounts::default())
            .expect("room for every buffer");
    }
    let kernel_reader = spawn_task(TaskName::KernelCounts, fault, {
        let counts = read_kernel_counts(
            maps.flow_counts,
            maps.losses,
            (snapshots_tx, spent),
            shutdown.clone(),
        );
        async move {
            counts.await;
            Ok(())
        }
    });
    let tracking = spawn_dedicated(TaskName::Tracking, "netprobe-track", fault, {
        let track = track_loop(
            batches,
            (snapshots, spent_tx),
            Arc::clone(tracker),
            Arc::clone(metrics),
            per_interface_tx,
            shutdown.clone(),
        );
        async move {
            track.await;
            Ok(())
        }
    });
    let mut tasks = [
        (TaskName::RingReader, reader),
        (TaskName::KernelCounts, kernel_reader),
        (TaskName::Tracking, tracking),
    ];
    let mut dead = None;

    let mut resync = interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = shutdown.changed() => break,
            reason = first_to_end(&mut tasks) => {
                // Without it the agent serves stale answers as if all were well.
                error!("{reason}: the agent stops");
                *ready.write().expect("not poisoned") = Err(reason.clone());
                metrics.set_ready(false);
                tokio::time::sleep(DEAD_TASK_LINGER).await;
                dead = Some(reason);
                break;
            }
            Some(change) = changes.recv() => match change {
                LinkChange::Resync => {
                    // Link messages were lost: what they said is only in a new listing.
                    warn!("the interface watch overflowed (netlink ENOBUFS): relisting now");
                    metrics.netlink_overrun();
                    relist(&mut attacher, tracker).await;
                    learn_local_addresses(&attacher, tracker).await;
                }
                change => {
                    let attached = attacher.apply(&change).await;
                    let added = attached.is_some();
                    note_changes(tracker, &mut attacher, attached);
                    if added {
                        learn_local_addresses(&attacher, tracker).await;
                    }
                }
            },
            Some((index, n)) = per_interface.recv() => attacher.count_event(index, n),
            _ = resync.tick() => {
                if watcher.is_finished() {
                    // The watch failed (logged by its task): open a new one, then relist
                    // to cover what happened without one.
                    warn!("reopening the interface watch");
                    (changes, watcher) = watch_links(args.netlink_rcvbuf);
                }
                relist(&mut attacher, tracker).await;
                let reheaded = attacher.keep_first().await;
                metrics.reattached(reheaded.len() as u64);
                learn_local_addresses(&attacher, tracker).await;
            }
        }
        publish(&attacher, interfaces, metrics);
    }
    if dead.is_none() {
        *ready.write().expect("not poisoned") = Err("shutting down".into());
    }
    metrics.set_ready(false);
    attacher.detach_all();
    watcher.abort();
    if let Some(kernel_log) = kernel_log {
        kernel_log.abort();
    }
    for (_, task) in &tasks {
        task.abort();
    }
    info!("detached from every interface");
    match dead {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// Passes the kernel program's aya-log records to the agent's log as they come.
async fn forward_kernel_log(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<()> {
    // SAFETY: the logger owns its ring buffer's fd, open and unchanged while it lives.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("polling the kernel log: {err}"))?;
    loop {
        let mut guard = logger.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
