//! `probe-agent run`: wires the modules together and runs until SIGTERM/SIGINT.
//!
//! Tasks: the HTTP server; the attacher (owns the programs, applies netlink changes and
//! a periodic resync, [`probe`]); the ring-buffer reader (never blocks the kernel: it hands
//! batches to a bounded queue and, when it is full, drops and counts SYNs first, see
//! [`queue`]); the tracker loop (decode + track, timeout sweep, reconcile with the
//! kernel's counters, [`tracking`]); with a cluster, the name watcher and (`--events`)
//! the Kubernetes Event writer.

use std::{
    fs::File,
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

mod interfaces;
mod priority;
mod probe;
mod queue;
mod ring;
mod source;
mod startup;
mod tasks;
mod tracking;

pub use self::priority::yield_to_datapath;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::{error, info, warn};

use self::{
    probe::run_probe,
    source::AgentSource,
    startup::{api_auth, cause_reports, kube_client, raise_open_files},
};
use crate::{
    config::RunArgs,
    enrich::{self, Names},
    kube_events::{self, EventOptions},
    loader,
    metrics::{DEFAULT_MAX_SERIES, Metrics},
    serve::{
        self, AppState, ServeOptions,
        tls::{self, ReloadingTls},
    },
    track::{Clock, Tracker, TrackerConfig},
};

const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock must not take the API down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
