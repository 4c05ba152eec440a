//! What the agent settles before it starts: its open-file limit, the Kubernetes API
//! client, how API requests are checked, and the queue to the Event writer.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    config::{ApiAuthMode, KubeMode, RunArgs},
    enrich::{self, KubeOptions},
    kube_events::{self, CauseReport},
    serve::auth::{Auth, KubeAuth},
};

/// Lifts the soft limit on open files to the hard one (no privilege needed), so that the
/// API's connection cap, not EMFILE, is what bounds clients; warns if even that is short.
pub(super) fn raise_open_files(connections: usize) {
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
pub(super) async fn api_auth(args: &RunArgs, client: Option<kube::Client>) -> anyhow::Result<Auth> {
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
pub(super) async fn kube_client(args: &RunArgs) -> Option<kube::Client> {
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
pub(super) fn cause_reports(
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
