//! `probe-agent run`: wires the modules together and runs until SIGTERM/SIGINT.
//!
//! Tasks: the HTTP server; the attacher (owns the programs, applies netlink changes and
//! a periodic resync); the ring-buffer reader (never blocks the kernel: it hands batches
//! to a bounded queue and counts what does not fit); the tracker loop (decode + track,
//! timeout sweep, reconcile with the kernel's counters).

use std::{
    fs::File,
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use probe_ebpf::{FlowCounters, FlowKey, LossCounter, PacketEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc, watch},
    time::{MissedTickBehavior, interval},
};
use tracing::{error, info, warn};

use crate::{
    attach::{self, Attacher},
    config::RunArgs,
    decode::{self, DecodeError},
    enrich::{self, KubeOptions, Names},
    loader,
    metrics::{DEFAULT_MAX_SERIES, DecodeErrorKind, LossSource, Metrics},
    model::{AttachMode, FlowEvent, InterfaceStatus, Verdict},
    serve::{self, AppState, FlowSource},
    track::{Clock, Tracker, TrackerConfig, monotonic_now},
};

/// Batches of raw records waiting for the tracker. Bounded: when the tracker falls
/// behind, the reader drops and counts instead of stalling the ring buffer.
const QUEUE_BATCHES: usize = 1024;
/// Records per batch, at most.
const BATCH_RECORDS: usize = 256;
const SWEEP_EVERY: Duration = Duration::from_millis(50);
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
const RESYNC_EVERY: Duration = Duration::from_secs(5);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Enters the network namespace at `path` for the calling thread (and the threads it
/// creates afterwards).
pub fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))?;
    Ok(())
}

/// What the API reads: the tracker, the attached interfaces and readiness.
struct AgentSource {
    tracker: Arc<Mutex<Tracker>>,
    interfaces: Arc<RwLock<Vec<InterfaceStatus>>>,
    ready: Arc<RwLock<Result<(), String>>>,
    events_tx: broadcast::Sender<FlowEvent>,
}

impl FlowSource for AgentSource {
    fn verdicts(&self, keep: &dyn Fn(&Verdict) -> bool, limit: usize) -> Vec<Verdict> {
        lock(&self.tracker).verdicts(keep, limit)
    }

    fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
        lock(&self.tracker).events(keep, limit)
    }

    fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.events_tx.subscribe()
    }

    fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.interfaces
            .read()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    fn readiness(&self) -> Result<(), String> {
        self.ready
            .read()
            .map_err(|_| "agent state poisoned".to_string())?
            .clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock must not take the API down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the agent. `listener` was bound before entering any `--netns`.
pub async fn run(args: RunArgs, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(DEFAULT_MAX_SERIES));
    let names = Names::none();
    let tracker = Tracker::new(
        TrackerConfig {
            syn_timeout: args.syn_timeout,
            dns_timeout: args.dns_timeout,
            flow_capacity: args.flow_capacity,
            event_capacity: args.event_capacity,
        },
        Clock::new(),
        Arc::clone(&metrics),
    )
    .with_names(names.clone());
    let events_tx = tracker.events_sender();
    let tracker = Arc::new(Mutex::new(tracker));
    let interfaces = Arc::new(RwLock::new(Vec::new()));
    let ready = Arc::new(RwLock::new(Err("loading the eBPF programs".to_string())));
    let source = Arc::new(AgentSource {
        tracker: Arc::clone(&tracker),
        interfaces: Arc::clone(&interfaces),
        ready: Arc::clone(&ready),
        events_tx,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(listen = %listener.local_addr()?, "serving the API");
    let mut http = tokio::spawn(serve::serve(
        listener,
        AppState::new(source, Arc::clone(&metrics)),
        wait_for(shutdown_rx.clone()),
    ));

    let node = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    info!(node, "netprobe agent starting");
    let kube = KubeOptions {
        mode: args.kube,
        kubeconfig: args.kubeconfig.clone(),
    };
    // Without names the agent still does its job: a cluster it cannot reach is a
    // warning, not a reason to stop probing.
    let kube_watch = match enrich::client(&kube).await {
        Ok(Some(client)) => Some(tokio::spawn(enrich::watch(
            client,
            names,
            Arc::clone(&metrics),
            shutdown_rx.clone(),
        ))),
        Ok(None) => None,
        Err(error) => {
            warn!("Kubernetes API not usable, flows carry IPs only: {error:#}");
            None
        }
    };

    let result = run_probe(&args, &tracker, &interfaces, &ready, &metrics, shutdown_rx).await;
    if let Err(err) = &result {
        error!("{err:#}");
    }
    shutdown_tx.send_replace(true);
    if let Some(kube_watch) = kube_watch {
        kube_watch.abort();
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => warn!("HTTP server: {err}"),
        Ok(Err(err)) => warn!("HTTP server task: {err}"),
        Err(_) => {
            warn!("HTTP server did not stop in time");
            http.abort();
        }
    }
    result
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn run_probe(
    args: &RunArgs,
    tracker: &Arc<Mutex<Tracker>>,
    interfaces: &Arc<RwLock<Vec<InterfaceStatus>>>,
    ready: &Arc<RwLock<Result<(), String>>>,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ebpf = loader::load(loader::LoadOptions {
        flow_counts_entries: u32::try_from(args.flow_capacity.get()).unwrap_or(u32::MAX),
        kernel_log: args.kernel_log,
        ..loader::LoadOptions::default()
    })?;
    let kernel_log = if args.kernel_log {
        let logger = aya_log::EbpfLogger::init(&mut ebpf).context("starting the kernel log")?;
        Some(tokio::spawn(forward_kernel_log(logger)))
    } else {
        None
    };
    let maps = loader::take_maps(&mut ebpf)?;
    let globs = attach::interface_globs(&args.interfaces)?;
    let mut attacher = Attacher::new(ebpf, globs, args.attach_mode);

    let (changes_tx, mut changes) = mpsc::channel(1024);
    // Subscribe before listing, so an interface created in between is not missed.
    let watcher = tokio::spawn(attach::watch_links(changes_tx));
    let links = attach::list_links().await?;
    name_attached(tracker, attacher.resync(&links));
    let attached = publish(&attacher, interfaces, metrics);
    *ready.write().expect("not poisoned") = Ok(());
    metrics.set_ready(true);
    info!(
        interfaces = attached,
        globs = args.interfaces.join(","),
        "probe loaded and attached"
    );

    let (batches_tx, batches) = mpsc::channel(QUEUE_BATCHES);
    let reader = tokio::spawn(read_ring(
        maps.events,
        batches_tx,
        Arc::clone(metrics),
        shutdown.clone(),
    ));
    let (per_interface_tx, mut per_interface) = mpsc::unbounded_channel();
    let tracking = tokio::spawn(track_loop(
        batches,
        Arc::clone(tracker),
        maps.flow_counts,
        maps.losses,
        Arc::clone(metrics),
        per_interface_tx,
        shutdown.clone(),
    ));

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
            Some(change) = changes.recv() => name_attached(tracker, attacher.apply(&change)),
            Some((index, n)) = per_interface.recv() => attacher.count_event(index, n),
            _ = resync.tick() => match attach::list_links().await {
                Ok(links) => name_attached(tracker, attacher.resync(&links)),
                Err(err) => warn!("listing interfaces: {err}"),
            },
        }
        publish(&attacher, interfaces, metrics);
    }
    *ready.write().expect("not poisoned") = Err("shutting down".into());
    metrics.set_ready(false);
    attacher.detach_all();
    watcher.abort();
    if let Some(kernel_log) = kernel_log {
        kernel_log.abort();
    }
    reader.abort();
    tracking.abort();
    info!("detached from every interface");
    Ok(())
}

/// Tells the tracker the names of newly attached interfaces.
fn name_attached(
    tracker: &Mutex<Tracker>,
    attached: impl IntoIterator<Item = (u32, String, AttachMode)>,
) {
    for (index, name, _) in attached {
        lock(tracker).set_interface_name(index, &name);
    }
}

/// Makes the attached set visible to the API and metrics. Returns its size.
fn publish(
    attacher: &Attacher,
    interfaces: &RwLock<Vec<InterfaceStatus>>,
    metrics: &Metrics,
) -> usize {
    let statuses = attacher.statuses();
    let attached = statuses.len();
    metrics.set_attached_interfaces(attached as u64);
    *interfaces.write().expect("not poisoned") = statuses;
    attached
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

/// Drains the ring buffer whenever the kernel signals it, in batches of raw records.
async fn read_ring(
    ring: RingBuf<MapData>,
    batches: mpsc::Sender<Vec<u8>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let record = size_of::<PacketEvent>();
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long
    // as it lives, and the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the ring buffer: {err}"))?;
    loop {
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            _ = shutdown.changed() => return Ok(()),
        };
        let ring = guard.get_inner_mut();
        let mut batch = Vec::with_capacity(record * BATCH_RECORDS);
        let mut in_batch = 0;
        while let Some(item) = ring.next() {
            // The kernel only writes whole PacketEvents; anything else is reported, not
            // misread as the start of the next record.
            if item.len() != record {
                metrics.decode_error(DecodeErrorKind::Truncated);
                continue;
            }
            batch.extend_from_slice(&item);
            in_batch += 1;
            if in_batch == BATCH_RECORDS {
                send_batch(&batches, std::mem::take(&mut batch), in_batch, &metrics);
                batch.reserve(record * BATCH_RECORDS);
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            send_batch(&batches, batch, in_batch, &metrics);
        }
        guard.clear_ready();
    }
}

fn send_batch(batches: &mpsc::Sender<Vec<u8>>, batch: Vec<u8>, records: usize, metrics: &Metrics) {
    if batches.try_send(batch).is_err() {
        metrics.events_lost(LossSource::Agent, records as u64);
    }
}

/// Decodes and tracks batches; sweeps timeouts; reconciles with the kernel's counters.
async fn track_loop(
    mut batches: mpsc::Receiver<Vec<u8>>,
    tracker: Arc<Mutex<Tracker>>,
    flow_counts: aya::maps::HashMap<MapData, FlowKey, FlowCounters>,
    losses: PerCpuArray<MapData, u64>,
    metrics: Arc<Metrics>,
    per_interface: mpsc::UnboundedSender<(u32, u64)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let record = size_of::<PacketEvent>();
    let mut sweep = interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut reconcile = interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut kernel_lost = 0u64;
    loop {
        tokio::select! {
            Some(batch) = batches.recv() => {
                let mut seen_on: Vec<(u32, u64)> = Vec::new();
                let mut tracker = lock(&tracker);
                for raw in batch.chunks(record) {
                    match decode::decode(raw) {
                        Ok(packet) => {
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
                for counted in seen_on {
                    let _ = per_interface.send(counted);
                }
            }
            _ = sweep.tick() => lock(&tracker).sweep(monotonic_now()),
            _ = reconcile.tick() => {
                // Read the kernel map outside the lock: it is one syscall per entry.
                let kernel: Vec<(FlowKey, FlowCounters)> =
                    flow_counts.iter().filter_map(Result::ok).collect();
                let mut tracker = lock(&tracker);
                tracker.reconcile(kernel, monotonic_now());
                metrics.set_flows_tracked(tracker.flows_tracked() as u64);
                drop(tracker);
                let lost = ring_full_count(&losses);
                if lost > kernel_lost {
                    metrics.events_lost(LossSource::Kernel, lost - kernel_lost);
                    kernel_lost = lost;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Events the kernel could not put in the ring buffer, summed over CPUs.
fn ring_full_count(losses: &PerCpuArray<MapData, u64>) -> u64 {
    losses
        .get(&(LossCounter::RingFull as u32), 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

fn decode_error_kind(err: &DecodeError) -> DecodeErrorKind {
    match err {
        DecodeError::Truncated(_) | DecodeError::CapturedLength(_) => DecodeErrorKind::Truncated,
        DecodeError::Version(_) => DecodeErrorKind::Version,
        DecodeError::Kind(_) | DecodeError::Direction(_) => DecodeErrorKind::Kind,
        DecodeError::Malformed(_) => DecodeErrorKind::Malformed,
    }
}
