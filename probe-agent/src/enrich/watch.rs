//! kube-rs watchers feeding the [`Directory`], and the client they use.

use std::{fmt::Debug, path::PathBuf, sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch as signal, time::MissedTickBehavior};
use tracing::{info, warn};

use super::{
    Directory, Names,
    directory::Kind,
    objects::{
        NamespaceRecord, ObjectKey, PodRecord, PodView, ServiceRecord, SliceRecord, object_key,
    },
};
use crate::{
    config::KubeMode,
    metrics::{KubeKind, Metrics},
};

/// Changes are folded into one snapshot at most this often: a rollout of hundreds of
/// pods costs a few rebuilds, not hundreds.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    pub mode: KubeMode,
    /// A kubeconfig to use instead of the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

/// A client for the cluster, or `None` when enrichment is off or there is no cluster.
pub async fn client(options: &KubeOptions) -> anyhow::Result<Option<Client>> {
    if options.mode == KubeMode::Off {
        return Ok(None);
    }
    let config = if let Some(path) = &options.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster()?
    } else {
        info!("not in a cluster and no --kubeconfig: flows carry IPs only");
        return Ok(None);
    };
    info!(server = %config.cluster_url, "naming flows from the Kubernetes API");
    Ok(Some(Client::try_from(config)?))
}

/// One watch event, reduced to what the directory keeps (boxed: records differ a lot
/// in size, a NetworkPolicy's is large).
enum Update<R> {
    Apply(ObjectKey, Box<R>),
    Delete(ObjectKey),
    RelistStart,
    RelistApply(ObjectKey, Box<R>),
    RelistDone,
}

impl<R> Kind<R> {
    fn update(&mut self, update: Update<R>) {
        match update {
            Update::Apply(key, record) => self.apply(key, *record),
            Update::Delete(key) => self.delete(&key),
            Update::RelistStart => self.relist_start(),
            Update::RelistApply(key, record) => self.relist_apply(key, *record),
            Update::RelistDone => self.relist_done(),
        }
    }
}

enum Change {
    Pods(Update<PodRecord>),
    Services(Update<ServiceRecord>),
    Slices(Update<SliceRecord>),
    Namespaces(Update<NamespaceRecord>),
    Policies(Update<NetworkPolicy>),
}

/// Watches pods, Services, EndpointSlices, Namespaces and NetworkPolicies cluster-wide
/// until `shutdown`, publishing names into `names`. A lost connection is retried with backoff (kube-rs' default:
/// exponential, 800 ms up to 30 s) while the last names keep serving.
pub async fn watch(
    client: Client,
    names: Names,
    metrics: Arc<Metrics>,
    mut shutdown: signal::Receiver<bool>,
) {
    let mut changes = futures::stream::select_all([
        changes(
            Api::<PodView>::all(client.clone()),
            KubeKind::Pods,
            |pod| PodRecord::from(pod),
            Change::Pods,
        ),
        changes(
            Api::<Service>::all(client.clone()),
            KubeKind::Services,
            |service| ServiceRecord::from(service),
            Change::Services,
        ),
        changes(
            Api::<EndpointSlice>::all(client.clone()),
            KubeKind::EndpointSlices,
            |slice| SliceRecord::from(slice),
            Change::Slices,
        ),
        changes(
            Api::<Namespace>::all(client.clone()),
            KubeKind::Namespaces,
            |namespace| NamespaceRecord::from(namespace),
            Change::Namespaces,
        ),
        changes(
            Api::<NetworkPolicy>::all(client),
            KubeKind::NetworkPolicies,
            |policy| NetworkPolicy {
                // Only the spec and the name are read; managedFields can be large.
                metadata: kube::api::ObjectMeta {
                    name: policy.metadata.name.clone(),
                    namespace: policy.metadata.namespace.clone(),
                    ..Default::default()
                },
                spec: policy.spec.clone(),
            },
            Change::Policies,
        ),
    ]);
    let mut directory = Directory::default();
    let mut dirty = false;
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = publish.tick(), if dirty => {
                names.publish(directory.snapshot());
                metrics.set_kube_objects(KubeKind::Pods, directory.pods.len());
                metrics.set_kube_objects(KubeKind::Services, directory.services.len());
                metrics.set_kube_objects(KubeKind::EndpointSlices, directory.slices.len());
                metrics.set_kube_objects(KubeKind::Namespaces, directory.namespaces.len());
                metrics.set_kube_objects(KubeKind::NetworkPolicies, directory.policies.len());
                dirty = false;
            }
            change = changes.next() => match change {
                Some(Ok(change)) => {
                    match change {
                        Change::Pods(update) => directory.pods.update(update),
                        Change::Services(update) => directory.services.update(update),
                        Change::Slices(update) => directory.slices.update(update),
                        Change::Namespaces(update) => directory.namespaces.update(update),
                        Change::Policies(update) => directory.policies.update(update),
                    }
                    dirty = true;
                }
                Some(Err((kind, error))) => {
                    metrics.kube_watch_error(kind);
                    warn!(kind = kind.as_str(), %error, "Kubernetes watch failed; retrying with backoff, names may be stale meanwhile");
                }
                None => break,
            },
        }
    }
}

type Changes = BoxStream<'static, Result<Change, (KubeKind, watcher::Error)>>;

fn changes<K, R>(
    api: Api<K>,
    kind: KubeKind,
    record: fn(&K) -> R,
    wrap: fn(Update<R>) -> Change,
) -> Changes
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    R: Send + 'static,
{
    let key = |object: &K| object_key(object.meta());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            let update = match event.map_err(|e| (kind, e))? {
                watcher::Event::Apply(object) => {
                    Update::Apply(key(&object), Box::new(record(&object)))
                }
                watcher::Event::Delete(object) => Update::Delete(key(&object)),
                watcher::Event::Init => Update::RelistStart,
                watcher::Event::InitApply(object) => {
                    Update::RelistApply(key(&object), Box::new(record(&object)))
                }
                watcher::Event::InitDone => Update::RelistDone,
            };
            Ok(wrap(update))
        })
        .boxed()
}
