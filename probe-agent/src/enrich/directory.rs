//! The cluster as the agent knows it (pods, Services, EndpointSlices), and the
//! IP → name [`Snapshot`] built from it.
//!
//! Watch events change the directory; a snapshot is rebuilt from it now and then and
//! published whole, so lookups read an immutable map and never wait for the API.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::objects::{NamespaceRecord, ObjectKey, PodRecord, ServiceRecord, SliceRecord};
use crate::model::Endpoint;

/// Objects of one kind, with the relist in progress after a (re)connect.
#[derive(Debug)]
pub struct Kind<R> {
    /// Shared with the snapshots built from it.
    current: HashMap<ObjectKey, Arc<R>>,
    /// Filled by a relist; replaces `current` when the list is complete, so objects
    /// deleted while the watch was down disappear and the old names serve meanwhile.
    relisting: Option<HashMap<ObjectKey, Arc<R>>>,
    /// A list has completed at least once.
    listed: bool,
}

impl<R> Default for Kind<R> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relisting: None,
            listed: false,
        }
    }
}

impl<R> Kind<R> {
    pub fn apply(&mut self, key: ObjectKey, record: R) {
        self.current.insert(key, Arc::new(record));
    }

    pub fn delete(&mut self, key: &ObjectKey) {
        self.current.remove(key);
    }

    pub fn relist_start(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    pub fn relist_apply(&mut self, key: ObjectKey, record: R) {
        self.relisting
            .get_or_insert_with(HashMap::new)
            .insert(key, Arc::new(record));
    }

    pub fn relist_done(&mut self) {
        if let Some(listed) = self.relisting.take() {
            self.current = listed;
        }
        self.listed = true;
    }

    /// What is known of this kind can be trusted to be complete: a list has completed, or
    /// objects have arrived by the watch (a missing object then means there is none).
    pub fn is_known(&self) -> bool {
        self.listed || !self.current.is_empty()
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    fn records(&self) -> impl Iterator<Item = &R> {
        self.current.values().map(|record| &**record)
    }

    fn shared(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<R>)> {
        self.current.iter()
    }
}

/// Everything watched.
#[derive(Debug, Default)]
pub struct Directory {
    pub pods: Kind<PodRecord>,
    pub services: Kind<ServiceRecord>,
    pub slices: Kind<SliceRecord>,
    pub namespaces: Kind<NamespaceRecord>,
    pub policies: Kind<NetworkPolicy>,
}

/// A map read for every event (a flow's two ends named): foldhash, seeded per process,
/// where std's SipHash cost ~200 instructions per lookup.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// IP → name, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Pod IPs (not host-network) and Service ClusterIPs.
    by_ip: FastMap<IpAddr, Arc<Endpoint>>,
    /// Backends without an address of their own (host-network pods share their node's):
    /// told apart by the port their Service's EndpointSlice sends to.
    host_ports: FastMap<(IpAddr, u16), Arc<Endpoint>>,
    /// Node addresses.
    nodes: FastMap<IpAddr, Arc<Endpoint>>,
    /// The objects themselves, for diagnosing failures.
    pub cluster: ClusterView,
}

/// The cluster's objects as diagnosis reads them, immutable once built. Records are shared
/// with the directory, so a snapshot costs its maps, not copies of the objects.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// Pods by their own IPs (host-network pods are not here), as [`Directory::ip_owners`].
    pub pod_by_ip: FastMap<IpAddr, Arc<PodRecord>>,
    /// Every pod, by namespace, sorted by name (see [`ClusterView::pod`]).
    pub pods: HashMap<Arc<str>, Vec<Arc<PodRecord>>>,
    pub services: HashMap<ObjectKey, Arc<ServiceRecord>>,
    pub service_by_ip: FastMap<IpAddr, Arc<ServiceRecord>>,
    /// EndpointSlices by (namespace, Service).
    pub slices: HashMap<ObjectKey, Vec<Arc<SliceRecord>>>,
    pub namespaces: HashMap<Arc<str>, Arc<NamespaceRecord>>,
    /// NetworkPolicies by namespace.
    pub policies: HashMap<Arc<str>, Vec<Arc<NetworkPolicy>>>,
    /// The EndpointSlices have been listed: a Service without one really has no
    /// endpoints (before, it may only not have been listed yet).
    pub slices_known: bool,
}

impl ClusterView {
    pub fn pods_in(&self, namespace: &str) -> &[Arc<PodRecord>] {
        self.pods.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// A pod by namespace and name: found in its namespace's pods, which are sorted by
    /// name (a map by name would cost as much as the directory's own).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<PodRecord>> {
        let pods = self.pods_in(namespace);
        pods.binary_search_by(|pod| (*pod.name).cmp(name))
            .ok()
            .map(|at| &pods[at])
    }

    pub fn policies_in(&self, namespace: &str) -> &[Arc<NetworkPolicy>] {
        self.policies.get(namespace).map_or(&[], Vec::as_slice)
    }

    pub fn slices_of(&self, service: &ServiceRecord) -> &[Arc<SliceRecord>] {
        self.slices
            .get(&(Arc::clone(&service.namespace), Arc::clone(&service.name)))
            .map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.services.is_empty()
    }
}

impl Snapshot {
    /// Names the client end of a flow.
    pub fn source(&self, ip: IpAddr) -> Option<Arc<Endpoint>> {
        self.by_ip.get(&ip).or_else(|| self.nodes.get(&ip)).cloned()
    }

    /// Names the server end of a flow.
    pub fn destination(&self, ip: IpAddr, port: u16) -> Option<Arc<Endpoint>> {
        self.by_ip
            .get(&ip)
            .or_else(|| self.host_ports.get(&(ip, port)))
            .or_else(|| self.nodes.get(&ip))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len() + self.host_ports.len() + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Directory {
    pub fn snapshot(&self) -> Snapshot {
        let owners = self.ip_owners();
        let services_of = self.services_by_backend();
        let mut snapshot = Snapshot::default();

        for (ip, pod) in &owners {
            let service = services_of
                .get(&(
                    Arc::clone(&pod.namespace),
                    BackendRef::Pod(Arc::clone(&pod.name)),
                ))
                .or_else(|| services_of.get(&(Arc::clone(&pod.namespace), BackendRef::Ip(*ip))))
                .cloned();
            snapshot
                .by_ip
                .insert(*ip, Arc::new(pod_endpoint(pod, service)));
        }
        for service in self.services.records() {
            let endpoint = Arc::new(Endpoint {
                namespace: Some(Arc::clone(&service.namespace)),
                service: Some(Arc::clone(&service.name)),
                ..Endpoint::default()
            });
            for ip in &service.cluster_ips {
                snapshot.by_ip.insert(*ip, Arc::clone(&endpoint));
            }
        }
        self.name_other_backends(&mut snapshot, &owners);
        snapshot.cluster = self.cluster_view(&owners);
        for pod in self.pods.records() {
            if let (Some(ip), Some(node)) = (pod.host_ip, &pod.node)
                && !snapshot.by_ip.contains_key(&ip)
            {
                snapshot.nodes.entry(ip).or_insert_with(|| {
                    Arc::new(Endpoint {
                        node: Some(Arc::clone(node)),
                        ..Endpoint::default()
                    })
                });
            }
        }
        snapshot
    }

    fn cluster_view(&self, owners: &BTreeMap<IpAddr, &PodRecord>) -> ClusterView {
        let mut view = ClusterView::default();
        for (_, pod) in self.pods.shared() {
            view.pods
                .entry(Arc::clone(&pod.namespace))
                .or_default()
                .push(Arc::clone(pod));
            for ip in &pod.ips {
                if owners
                    .get(ip)
                    .is_some_and(|owner| std::ptr::eq(*owner, &**pod))
                {
                    view.pod_by_ip.insert(*ip, Arc::clone(pod));
                }
            }
        }
        for (key, service) in self.services.shared() {
            view.services.insert(key.clone(), Arc::clone(service));
            for ip in &service.cluster_ips {
                view.service_by_ip.insert(*ip, Arc::clone(service));
            }
        }
        view.slices_known = self.slices.is_known();
        for (_, slice) in self.slices.shared() {
            if let Some(service) = &slice.service {
                view.slices
                    .entry((Arc::clone(&slice.namespace), Arc::clone(service)))
                    .or_default()
                    .push(Arc::clone(slice));
            }
        }
        for (_, namespace) in self.namespaces.shared() {
            view.namespaces
                .insert(Arc::clone(&namespace.name), Arc::clone(namespace));
        }
        for ((namespace, _), policy) in self.policies.shared() {
            view.policies
                .entry(Arc::clone(namespace))
                .or_default()
                .push(Arc::clone(policy));
        }
        // Stable orders: policies and pods by name.
        for policies in view.policies.values_mut() {
            policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        for pods in view.pods.values_mut() {
            pods.sort_by(|a, b| a.name.cmp(&b.name));
        }
        view
    }

    /// The pod that owns each pod IP. Pods can briefly share one (a finished or
    /// terminating pod and its replacement): a running pod beats a finished one, then the
    /// newest wins, so a reused IP is never named after the pod that left it.
    fn ip_owners(&self) -> BTreeMap<IpAddr, &PodRecord> {
        let mut owners: BTreeMap<IpAddr, &PodRecord> = BTreeMap::new();
        for pod in self.pods.records().filter(|pod| !pod.host_network) {
            for ip in &pod.ips {
                let replace = owners.get(ip).is_none_or(|held| {
                    (!pod.finished, &pod.created, &pod.name)
                        > (!held.finished, &held.created, &held.name)
                });
                if replace {
                    owners.insert(*ip, pod);
                }
            }
        }
        owners
    }

    /// Service names by backing pod (or bare address), per namespace. A pod backing
    /// several Services is named after the first by name, so the choice is stable.
    fn services_by_backend(&self) -> HashMap<(Arc<str>, BackendRef), Arc<str>> {
        let mut names: HashMap<(Arc<str>, BackendRef), Arc<str>> = HashMap::new();
        for slice in self.slices.records() {
            let Some(service) = &slice.service else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let backend = match &endpoint.pod {
                    Some(pod) => BackendRef::Pod(Arc::clone(pod)),
                    None => BackendRef::Ip(endpoint.ip),
                };
                names
                    .entry((Arc::clone(&slice.namespace), backend))
                    .and_modify(|held| {
                        if service < held {
                            *held = Arc::clone(service);
                        }
                    })
                    .or_insert_with(|| Arc::clone(service));
            }
        }
        names
    }

    /// Backends that are not pod IPs: host-network pods and bare addresses (the
    /// `kubernetes` Service's API servers, manual EndpointSlices). They share an address
    /// with their node or nothing at all, so they are named by address and port.
    fn name_other_backends(&self, snapshot: &mut Snapshot, owners: &BTreeMap<IpAddr, &PodRecord>) {
        let host_pods: HashMap<(&str, &str), &PodRecord> = self
            .pods
            .records()
            .filter(|pod| pod.host_network)
            .map(|pod| ((&*pod.namespace, &*pod.name), pod))
            .collect();
        let node_of: HashMap<IpAddr, &Arc<str>> = self
            .pods
            .records()
            .filter_map(|pod| Some((pod.host_ip?, pod.node.as_ref()?)))
            .collect();
        for slice in self.slices.records() {
            for endpoint in slice
                .endpoints
                .iter()
                .filter(|e| !owners.contains_key(&e.ip))
            {
                let host_pod = endpoint
                    .pod
                    .as_deref()
                    .and_then(|name| host_pods.get(&(&*slice.namespace, name)));
                let named = Arc::new(match host_pod {
                    Some(pod) => pod_endpoint(pod, slice.service.clone()),
                    None => Endpoint {
                        namespace: Some(Arc::clone(&slice.namespace)),
                        service: slice.service.clone(),
                        node: node_of.get(&endpoint.ip).map(|node| Arc::clone(node)),
                        ..Endpoint::default()
                    },
                });
                for port in &slice.ports {
                    snapshot
                        .host_ports
                        .insert((endpoint.ip, *port), Arc::clone(&named));
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BackendRef {
    Pod(Arc<str>),
    Ip(IpAddr),
}

fn pod_endpoint(pod: &PodRecord, service: Option<Arc<str>>) -> Endpoint {
    Endpoint {
        namespace: Some(Arc::clone(&pod.namespace)),
        pod: Some(Arc::clone(&pod.name)),
        workload: Some(Arc::clone(&pod.workload)),
        service,
        node: pod.node.clone(),
    }
}
