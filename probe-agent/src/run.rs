//! `probe-agent run`: wires the modules together and runs until SIGTERM/SIGINT.
//!
//! Tasks: the HTTP server; the attacher (owns the programs, applies netlink changes and
//! a periodic resync); the ring-buffer reader (never blocks the kernel: it hands batches
//! to a bounded queue and, when it is full, drops and counts SYNs first, see [`queue`]);
//! the tracker loop (decode + track,
//! timeout sweep, reconcile with the kernel's counters); with a cluster, the name
//! watcher and (`--events`) the Kubernetes Event writer.

use std::{
    fs::File,
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

mod queue;

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use probe_ebpf::{EVENT_HEADER_BYTES, FlowCounters, HookKey, LossCounter};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};
use tracing::{error, info, warn};

use crate::{
    attach::{self, Attacher, LinkChange},
    config::{ApiAuthMode, KubeMode, RunArgs, TaskName},
    decode::{self, DecodeError},
    enrich::{self, KubeOptions, Names},
    kube_events::{self, CauseReport, EventOptions},
    loader::{
        self,
        counts::{CounterReader, FlowCounts},
    },
    local_addresses,
    metrics::{DEFAULT_MAX_SERIES, DecodeErrorKind, LossSource, Metrics},
    model::{AttachMode, FlowEvent, InterfaceStatus, NodeVerdict, Verdict},
    serve::{
        self, AppState, FlowSource, ServeOptions,
        auth::{Auth, KubeAuth},
        tls::{self, ReloadingTls},
    },
    track::{Clock, Tracker, TrackerConfig, monotonic_now},
};

/// Batches of raw records waiting for the tracker. Bounded: when the tracker falls
/// behind, the reader drops (SYNs first) and counts instead of stalling the ring buffer. 64 × 256
/// records of 0.26 KiB (a SYN's) to 0.63 KiB (the longest): 4 to 10 MiB, ~13 ms of tracking.
const QUEUE_BATCHES: usize = 64;
/// How soon records carried over from a full queue are offered again.
const CARRIED_RETRY: Duration = Duration::from_millis(10);
const SWEEP_EVERY: Duration = Duration::from_millis(50);
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
const RESYNC_EVERY: Duration = Duration::from_secs(5);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// How long a dead task's reason stays on /readyz before the agent exits (non-zero, so
/// the kubelet restarts it): long enough for a probe or a person to read why.
const DEAD_TASK_LINGER: Duration = Duration::from_secs(2);
/// With `--test-fault`: how long after it starts the chosen task fails.
const FAULT_AFTER: Duration = Duration::from_secs(1);

/// Loads the programs and creates the maps `args` ask for (the step that needs
/// CAP_PERFMON; [`run`] attaches them).
pub fn load(args: &RunArgs) -> anyhow::Result<aya::Ebpf> {
    Ok(loader::load(loader::LoadOptions {
        flow_counts_entries: u32::try_from(args.flow_capacity.get()).unwrap_or(u32::MAX),
        kernel_log: args.kernel_log,
        ..loader::LoadOptions::default()
    })?)
}

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

    fn node_verdicts(&self) -> Vec<NodeVerdict> {
        lock(&self.tracker).node_verdicts(monotonic_now())
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
/// The loaded (not yet attached) programs and maps, as [`load`] returns them.
pub async fn run(
    args: RunArgs,
    listener: std::net::TcpListener,
    ebpf: aya::Ebpf,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(DEFAULT_MAX_SERIES));
    let names = Names::none();
    let node = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    info!(node, "netprobe agent starting");
    raise_open_files(args.max_connections.get());
    let kube_client = kube_client(&args).await;
    let auth = api_auth(&args, kube_client.clone()).await?;
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            info!(cert = %cert.display(), "serving the API over TLS");
            Some(ReloadingTls::load(cert, key)?)
        }
        _ => None,
    };
    let cause_reports = cause_reports(&args, kube_client.is_some());
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
    .with_names(names.clone())
    .with_node_name(Some(&node))
    .with_conntrack(match crate::nat::Conntrack::open() {
        Ok(conntrack) => Some(conntrack),
        Err(err) => {
            warn!("conntrack unavailable, connections through an SNAT are not paired: {err}");
            None
        }
    });
    let (tracker, reports) = match cause_reports {
        Some((sender, reports)) => (tracker.with_cause_reports(sender), Some(reports)),
        None => (tracker, None),
    };
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
    if let Some(tls) = &tls {
        tokio::spawn(Arc::clone(tls).watch(tls::RELOAD_EVERY, shutdown_rx.clone()));
    }
    let options = ServeOptions {
        max_connections: args.max_connections.get(),
        header_timeout: args.header_timeout,
        write_timeout: args.write_timeout,
        tls,
    };
    let mut http = tokio::spawn(serve::serve_with(
        listener,
        AppState::new(source, Arc::clone(&metrics)).with_auth(auth),
        options,
        wait_for(shutdown_rx.clone()),
    ));

    let kube_watch = kube_client.clone().map(|client| {
        tokio::spawn(enrich::watch(
            client,
            names.clone(),
            Arc::clone(&metrics),
            shutdown_rx.clone(),
        ))
    });
    let event_writer = kube_client.zip(reports).map(|(client, reports)| {
        let options = EventOptions {
            window: args.events_window,
            instance: node,
        };
        info!(window = ?options.window, "writing Kubernetes Events for failing causes");
        tokio::spawn(kube_events::write(
            client,
            names,
            options,
            Arc::clone(&metrics),
            reports,
            shutdown_rx.clone(),
        ))
    });

    let result = run_probe(
        &args,
        ebpf,
        &tracker,
        &interfaces,
        &ready,
        &metrics,
        shutdown_rx,
    )
    .await;
    if let Err(err) = &result {
        error!("{err:#}");
    }
    shutdown_tx.send_replace(true);
    for task in kube_watch.into_iter().chain(event_writer) {
        task.abort();
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

/// Lifts the soft limit on open files to the hard one (no privilege needed), so that the
/// API's connection cap, not EMFILE, is what bounds clients; warns if even that is short.
fn raise_open_files(connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    // Interfaces, maps, netlink and the Kubernetes client take a few hundred more.
    if (limit.rlim_cur as usize) < connections + 512 {
        warn!(
            open_files = limit.rlim_cur,
            max_connections = connections,
            "the open-file limit is below --max-connections: clients beyond it are refused at accept"
        );
    }
}

/// How API requests are checked (`--api-auth`). `kube` without a usable Kubernetes API
/// is an error: the agent does not start open when it was asked to be closed.
async fn api_auth(args: &RunArgs, client: Option<kube::Client>) -> anyhow::Result<Auth> {
    let kube = match args.api_auth {
        ApiAuthMode::None => false,
        ApiAuthMode::Kube => true,
        // In a pod with its service account, not pointed elsewhere by --kubeconfig.
        ApiAuthMode::Auto => {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && args.kubeconfig.is_none()
        }
    };
    if !kube {
        if !args.listen.ip().is_loopback() {
            warn!(listen = %args.listen, "--api-auth none: anyone who reaches the API may read every flow");
        }
        return Ok(Auth::None);
    }
    let client = match client {
        Some(client) => client,
        None => enrich::client(&KubeOptions {
            mode: KubeMode::Auto,
            kubeconfig: args.kubeconfig.clone(),
        })
        .await
        .context("--api-auth kube")?
        .context(
            "--api-auth kube needs the Kubernetes API (in a cluster, or --kubeconfig); \
             use --api-auth none to serve without authentication",
        )?,
    };
    info!("API requests are checked with TokenReview and SubjectAccessReview");
    Ok(Auth::Kube(Arc::new(KubeAuth::new(
        client,
        args.api_auth_cache_ttl,
        args.api_auth_deny_ttl,
    ))))
}

/// The Kubernetes API client, or `None`: enrichment off, no cluster, or (a warning) a
/// cluster the agent cannot use. Without names the agent still does its job: that is no
/// reason to stop probing.
async fn kube_client(args: &RunArgs) -> Option<kube::Client> {
    let options = KubeOptions {
        mode: args.kube,
        kubeconfig: args.kubeconfig.clone(),
    };
    enrich::client(&options).await.unwrap_or_else(|error| {
        warn!("Kubernetes API not usable, flows carry IPs only: {error:#}");
        None
    })
}

/// The queue from the tracker to the Event writer, when `--events` asks for one and
/// there is an API to write to.
fn cause_reports(
    args: &RunArgs,
    have_api: bool,
) -> Option<(mpsc::Sender<CauseReport>, mpsc::Receiver<CauseReport>)> {
    if !args.events {
        return None;
    }
    if !have_api {
        warn!(
            "--events needs the Kubernetes API (in a cluster or with --kubeconfig): no Events will be written"
        );
        return None;
    }
    Some(mpsc::channel(kube_events::QUEUE_CAPACITY))
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn run_probe(
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
    let reader = spawn_task(
        TaskName::RingReader,
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
    let (spent_tx, spent) = mpsc::channel(1);
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
    let tracking = spawn_task(TaskName::Tracking, fault, {
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

type Task = JoinHandle<anyhow::Result<()>>;

/// Spawns one of the agent's vital tasks; with `--test-fault` naming it, it panics
/// [`FAULT_AFTER`] after it starts, as a bug would.
fn spawn_task(
    name: TaskName,
    fault: Option<TaskName>,
    task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> Task {
    tokio::spawn(async move {
        if fault != Some(name) {
            return task.await;
        }
        tokio::select! {
            result = task => result,
            () = tokio::time::sleep(FAULT_AFTER) => panic!("injected fault (--test-fault): {name} fails"),
        }
    })
}

/// How a task ended, the most telling last.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
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
const CAUSE_GRACE: Duration = Duration::from_millis(500);

/// Waits until one of `tasks` ends and says which and how, naming the most telling end
/// among those that follow within [`CAUSE_GRACE`]. Never resolves for no task.
async fn first_to_end(tasks: &mut [(TaskName, Task)]) -> String {
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

/// Starts watching interfaces come and go. The receiver closes when the watch fails.
fn watch_links(rcvbuf: Option<usize>) -> (mpsc::Receiver<LinkChange>, JoinHandle<()>) {
    let (changes_tx, changes) = mpsc::channel(1024);
    let watcher = tokio::spawn(async move {
        if let Err(err) = attach::watch_links(changes_tx, rcvbuf).await {
            warn!("watching interfaces: {err}");
        }
    });
    (changes, watcher)
}

/// Lists every interface and brings the attached set in line with the listing.
async fn relist(attacher: &mut Attacher, tracker: &Mutex<Tracker>) {
    match attach::list_links().await {
        Ok(links) => {
            let attached = attacher.resync(&links).await;
            note_changes(tracker, attacher, attached);
        }
        Err(err) => warn!("listing interfaces: {err}"),
    }
}

/// Tells the tracker which pod addresses the node routes to behind the attached veths.
async fn learn_local_addresses(attacher: &Attacher, tracker: &Mutex<Tracker>) {
    match local_addresses::behind(&attacher.attached_indices()).await {
        Ok(found) => lock(tracker).set_routed_addresses(found),
        Err(err) => warn!("listing the routes and neighbours of attached veths: {err:#}"),
    }
}

/// Tells the tracker the names of newly attached interfaces, and which went away.
fn note_changes(
    tracker: &Mutex<Tracker>,
    attacher: &mut Attacher,
    attached: impl IntoIterator<Item = (u32, String, AttachMode)>,
) {
    let forgotten = attacher.take_forgotten();
    let mut attached = attached.into_iter().peekable();
    if attached.peek().is_none() && forgotten.is_empty() {
        return;
    }
    let mut tracker = lock(tracker);
    for index in forgotten {
        tracker.forget_interface_name(index);
    }
    for (index, name, _) in attached {
        tracker.set_interface_name(index, &name);
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
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long
    // as it lives, and the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the ring buffer: {err}"))?;
    let mut batcher = queue::Batcher::default();
    loop {
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            // Records carried over from a full queue go out as soon as there is room,
            // not only with the next packet.
            _ = tokio::time::sleep(CARRIED_RETRY), if batcher.pending() > 0 => {
                let lost = batcher.flush(&batches);
                if lost > 0 {
                    metrics.events_lost(LossSource::Agent, lost);
                }
                continue;
            }
            _ = shutdown.changed() => {
                // Carried over and never sent: lost as well.
                metrics.events_lost(LossSource::Agent, batcher.pending());
                return Ok(());
            }
        };
        let ring = guard.get_inner_mut();
        let mut lost = 0;
        while let Some(item) = ring.next() {
            // The kernel writes a header and at most CAPTURE_BYTES after it; anything else
            // is reported here, not batched (whether the lengths inside agree is decode's).
            if !(EVENT_HEADER_BYTES..=queue::MAX_RECORD).contains(&item.len()) {
                metrics.decode_error(DecodeErrorKind::Truncated);
                continue;
            }
            lost += batcher.push(&item, &batches);
        }
        lost += batcher.flush(&batches);
        if lost > 0 {
            metrics.events_lost(LossSource::Agent, lost);
        }
        guard.clear_ready();
    }
}

/// What the kernel counted, read once per [`RECONCILE_EVERY`].
struct KernelCounts {
    /// Every hook's counters, as one read of the kernel's map found them.
    flows: FlowCounts,
    ring_full: u64,
    submitted: u64,
}

/// Reads the kernel's per-flow and event counters off the tracking task: a full table is
/// 65,536 entries, which must not stall decoding under a flood. Read in batches
/// ([`CounterReader`]: 17 bpf(2) calls for a full table, against 131,073 key by key).
///
/// One buffer serves every read (10 MiB for a full table): the tracker hands it back
/// once reconciled, and the next read waits for it. Fresh ones, queued behind a busy
/// tracker, took 30 MiB under a flood.
async fn read_kernel_counts(
    flow_counts: aya::maps::HashMap<MapData, HookKey, FlowCounters>,
    losses: PerCpuArray<MapData, u64>,
    (snapshots, mut spent): (mpsc::Sender<KernelCounts>, mpsc::Receiver<FlowCounts>),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut maps = (flow_counts, losses, CounterReader::default());
    let mut buffer = Some(FlowCounts::default());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut flows = match buffer.take() {
            Some(flows) => flows,
            None => tokio::select! {
                Some(flows) = spent.recv() => flows,
                _ = shutdown.changed() => return,
            },
        };
        let read = tokio::task::spawn_blocking(move || {
            let (flow_counts, losses, reader) = &mut maps;
            reader.read(flow_counts, &mut flows);
            let counts = KernelCounts {
                flows,
                ring_full: loader::kernel_count(losses, LossCounter::RingFull),
                submitted: loader::kernel_count(losses, LossCounter::Submitted),
            };
            (maps, counts)
        })
        .await;
        let Ok((back, counts)) = read else { return };
        maps = back;
        if snapshots.send(counts).await.is_err() {
            return;
        }
    }
}

/// Decodes and tracks batches; sweeps timeouts; reconciles with the kernel's counters.
async fn track_loop(
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
                // agent, so every count of the snapshot is settled.
                let drained = accounted + metrics.events_lost_total(LossSource::Agent) >= counts.submitted;
                let read_up_to = if drained { now } else { tracker.newest_event() };
                tracker.reconcile(counts.flows.drain(), read_up_to, now);
                metrics.set_flows_tracked(tracker.flows_tracked() as u64);
                drop(tracker);
                // Room for it: the reader holds no buffer until it gets this one.
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
                // The flow table churns under a flood (every evicted flow frees its state
                // and reason): hand the freed pages back to the kernel once a second
                // rather than let fragmentation hold them.
                // SAFETY: malloc_trim only releases free memory; it is thread-safe.
                unsafe { libc::malloc_trim(0) };
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn decode_error_kind(err: &DecodeError) -> DecodeErrorKind {
    match err {
        DecodeError::Truncated(_) | DecodeError::CapturedLength(_) => DecodeErrorKind::Truncated,
        DecodeError::Version(_) => DecodeErrorKind::Version,
        DecodeError::Kind(_) | DecodeError::Direction(_) => DecodeErrorKind::Kind,
        DecodeError::Malformed(_) => DecodeErrorKind::Malformed,
    }
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
