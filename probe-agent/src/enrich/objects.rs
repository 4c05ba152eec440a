//! The parts of Kubernetes objects the directory needs, and how they become records.
//!
//! Pods are decoded into [`PodView`], a partial Pod with only the fields naming needs:
//! a cluster's pods are read in full once at start (10,000 pods × a whole `PodSpec` is
//! tens of MiB of transient JSON), and only these fields are ever allocated. Services
//! and EndpointSlices are small and use the k8s-openapi types.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::{Namespace, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    jiff::Timestamp,
};
use serde::Deserialize;
use smallvec::SmallVec;

use super::intern::{self, Label, Pool};

/// A Pod, as far as naming goes (`v1/Pod`; unknown fields are skipped while decoding).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodView {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpecView>,
    #[serde(default)]
    pub status: Option<PodStatusView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Vec<ContainerView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerView {
    #[serde(default)]
    pub ports: Vec<ContainerPortView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPortView {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: i32,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodConditionView {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusView {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIpView>>,
    #[serde(default)]
    pub conditions: Vec<PodConditionView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodIpView {
    pub ip: String,
}

impl k8s_openapi::Resource for PodView {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for PodView {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Namespace and name: how objects of one kind are told apart.
pub type ObjectKey = (Arc<str>, Arc<str>);

/// The key of an object: the same texts as its record holds (see [`intern`]).
pub fn object_key(meta: &ObjectMeta) -> ObjectKey {
    intern::with(|pool| key_in(pool, meta))
}

fn key_in(pool: &mut Pool, meta: &ObjectMeta) -> ObjectKey {
    (
        pool.text(meta.namespace.as_deref().unwrap_or_default()),
        pool.text(meta.name.as_deref().unwrap_or_default()),
    )
}

/// What the directory keeps of a pod. A cluster holds thousands: what pods share (texts,
/// label sets, port lists) is held once for all of them (see [`intern`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `metadata.uid`: what `kubectl describe pod` matches its Events on.
    pub uid: Option<Uid>,
    pub workload: Arc<str>,
    pub node: Option<Arc<str>>,
    pub host_ip: Option<IpAddr>,
    /// One for most pods (two when dual-stack): held inline.
    pub ips: SmallVec<[IpAddr; 1]>,
    pub host_network: bool,
    /// `Succeeded` or `Failed`: its IP is free for a new pod.
    pub finished: bool,
    /// `metadata.creationTimestamp` (none sorts first); newer pods win an IP.
    pub created: Option<Timestamp>,
    /// What Service selectors and NetworkPolicy podSelectors match.
    pub labels: Labels,
    /// The ports its containers declare.
    pub ports: Arc<[DeclaredPort]>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
}

/// An object's labels, sorted by key: a label set is held once for all the records that
/// carry it (a workload's pods), its keys and values shared with every other set.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[Label]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|at| &*self.0[at].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn new_in<'a>(pool: &mut Pool, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut labels: Vec<Label> = labels
            .into_iter()
            .map(|(k, v)| (pool.text(k), pool.text(v)))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        // A key given twice keeps its last value, as a map would.
        labels.reverse();
        labels.dedup_by(|later, earlier| later.0 == earlier.0);
        labels.reverse();
        Self(pool.labels(&labels))
    }
}

impl Default for Labels {
    fn default() -> Self {
        intern::with(|pool| Self(pool.labels(&[])))
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(labels: &BTreeMap<String, String>) -> Self {
        intern::with(|pool| Labels::new_in(pool, labels.iter().map(|(k, v)| (&**k, &**v))))
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Labels {
    fn from_iter<T: IntoIterator<Item = (&'a str, &'a str)>>(labels: T) -> Self {
        intern::with(|pool| Labels::new_in(pool, labels))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A `metadata.uid`. The API server makes them UUIDs, kept as their 16 bytes; any other
/// text (or a UUID not written the canonical lowercase way) is kept as it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Uid {
    Uuid([u8; 16]),
    Text(Arc<str>),
}

impl Uid {
    pub fn new(text: &str) -> Self {
        Self::parse_uuid(text).map_or_else(|| Self::Text(text.into()), Self::Uuid)
    }

    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex, exactly.
    fn parse_uuid(text: &str) -> Option<[u8; 16]> {
        let text = text.as_bytes();
        if text.len() != 36 {
            return None;
        }
        let mut bytes = [0; 16];
        let mut digits = text
            .iter()
            .enumerate()
            .filter(|(at, _)| !matches!(at, 8 | 13 | 18 | 23));
        for byte in &mut bytes {
            let mut nibble = || match digits.next()?.1 {
                d @ b'0'..=b'9' => Some(d - b'0'),
                d @ b'a'..=b'f' => Some(d - b'a' + 10),
                _ => None,
            };
            *byte = (nibble()? << 4) | nibble()?;
        }
        [8, 13, 18, 23]
            .iter()
            .all(|&at| text[at] == b'-')
            .then_some(bytes)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Uuid(bytes) => {
                for (at, byte) in bytes.iter().enumerate() {
                    if matches!(at, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A container port a pod declares (`spec.containers[].ports[]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeclaredPort {
    pub name: Option<Arc<str>>,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP` (Kubernetes' default is TCP).
    pub protocol: Arc<str>,
}

impl DeclaredPort {
    pub fn describe(ports: &[DeclaredPort]) -> String {
        if ports.is_empty() {
            return "none".into();
        }
        ports
            .iter()
            .map(|p| match &p.name {
                Some(name) => format!("{}/{} ({name})", p.port, p.protocol),
                None => format!("{}/{}", p.port, p.protocol),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl From<&PodView> for PodRecord {
    fn from(pod: &PodView) -> Self {
        intern::with(|pool| Self::new_in(pool, pod))
    }
}

impl PodRecord {
    fn new_in(pool: &mut Pool, pod: &PodView) -> Self {
        let (namespace, name) = key_in(pool, &pod.metadata);
        let default_spec = PodSpecView::default();
        let spec = pod.spec.as_ref().unwrap_or(&default_spec);
        let default_status = PodStatusView::default();
        let status = pod.status.as_ref().unwrap_or(&default_status);
        let mut ips: SmallVec<[IpAddr; 1]> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        let ports: Vec<DeclaredPort> = spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| {
                Some(DeclaredPort {
                    name: p.name.as_deref().map(|name| pool.text(name)),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: pool.text(p.protocol.as_deref().unwrap_or("TCP")),
                })
            })
            .collect();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True");
        let labels = pod.metadata.labels.iter().flatten();
        Self {
            labels: Labels::new_in(pool, labels.map(|(k, v)| (&**k, &**v))),
            ports: pool.ports(&ports),
            ready,
            workload: workload_of(pool, &pod.metadata, &name),
            namespace,
            name,
            uid: pod.metadata.uid.as_deref().map(Uid::new),
            node: spec.node_name.as_deref().map(|node| pool.text(node)),
            host_ip: status.host_ip.as_deref().and_then(|ip| ip.parse().ok()),
            ips,
            host_network: spec.host_network.unwrap_or(false),
            finished: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// The workload that owns a pod: Deployment (through its ReplicaSet), StatefulSet,
/// DaemonSet, Job (CronJob for the Jobs it creates); the pod itself when it has no controller (bare or static pods).
///
/// A ReplicaSet created by a Deployment is named `<deployment>-<pod-template-hash>` and
/// its pods carry that hash as a label, so the Deployment is found without reading
/// ReplicaSets (which the agent's ClusterRole does not allow).
fn workload_of(pool: &mut Pool, meta: &ObjectMeta, pod_name: &Arc<str>) -> Arc<str> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next());
    let Some(owner) = owner else {
        return Arc::clone(pod_name);
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get("pod-template-hash"));
            match hash.and_then(|hash| owner.name.strip_suffix(&format!("-{hash}"))) {
                Some(deployment) if !deployment.is_empty() => pool.text(deployment),
                _ => pool.text(&owner.name),
            }
        }
        // A CronJob names each of its Jobs `<cronjob>-<scheduled time in minutes since
        // the epoch>`: the CronJob is the workload, so a label value is not minted per run.
        "Job" => match owner.name.rsplit_once('-') {
            Some((cronjob, minutes))
                if !cronjob.is_empty()
                    && minutes.len() >= 8
                    && minutes.bytes().all(|b| b.is_ascii_digit()) =>
            {
                pool.text(cronjob)
            }
            _ => pool.text(&owner.name),
        },
        // A static (mirror) pod is "owned" by its Node: the pod is the workload.
        "Node" => Arc::clone(pod_name),
        _ => pool.text(&owner.name),
    }
}

/// What the directory keeps of a Service: the virtual IPs that name it, and where it
/// sends traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub cluster_ips: Vec<IpAddr>,
    /// `None` for a Service without a selector (its EndpointSlices are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePortRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortRecord {
    pub name: Option<Arc<str>>,
    pub port: u16,
    pub protocol: Arc<str>,
    pub target_port: TargetPort,
}

/// `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(Arc<str>),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(port) => write!(f, "{port}"),
            Self::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl From<&Service> for ServiceRecord {
    fn from(service: &Service) -> Self {
        intern::with(|pool| Self::new_in(pool, service))
    }
}

impl ServiceRecord {
    fn new_in(pool: &mut Pool, service: &Service) -> Self {
        let (namespace, name) = key_in(pool, &service.metadata);
        let spec = service.spec.clone().unwrap_or_default();
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            // Headless Services have "None": not an address.
            .filter_map(|ip| ip.parse().ok())
            .collect();
        cluster_ips.sort();
        cluster_ips.dedup();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target_port = match &p.target_port {
                    // Absent: the same as `port`.
                    None => TargetPort::Number(port),
                    Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                    Some(IntOrString::String(name)) => match name.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(pool.text(name)),
                    },
                };
                Some(ServicePortRecord {
                    name: p.name.as_deref().map(|name| pool.text(name)),
                    port,
                    protocol: pool.text(p.protocol.as_deref().unwrap_or("TCP")),
                    target_port,
                })
            })
            .collect();
        Self {
            namespace,
            name,
            cluster_ips,
            // An empty selector selects nothing for a Service (endpoints are manual).
            selector: spec.selector.filter(|s| !s.is_empty()),
            ports,
        }
    }
}

/// What the directory keeps of an EndpointSlice: which addresses (and, for host-network
/// pods sharing the node's address, which ports) back which Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRecord {
    pub namespace: Arc<str>,
    pub service: Option<Arc<str>>,
    pub ports: Vec<u16>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    /// The pod behind the address (`targetRef`), if it is one.
    pub pod: Option<Arc<str>>,
    pub ready: bool,
}

impl From<&EndpointSlice> for SliceRecord {
    fn from(slice: &EndpointSlice) -> Self {
        intern::with(|pool| Self::new_in(pool, slice))
    }
}

impl SliceRecord {
    fn new_in(pool: &mut Pool, slice: &EndpointSlice) -> Self {
        let (namespace, _) = key_in(pool, &slice.metadata);
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("kubernetes.io/service-name"))
            .map(|name| pool.text(name));
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| port.port.and_then(|p| u16::try_from(p).ok()))
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flat_map(|endpoint| {
                let pod = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|target| target.kind.as_deref() == Some("Pod"))
                    .and_then(|target| target.name.as_deref())
                    .map(|name| pool.text(name));
                // Absent "ready" means ready (discovery.k8s.io/v1 EndpointConditions).
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|ip| ip.parse().ok())
                    .map(move |ip| SliceEndpoint {
                        ip,
                        pod: pod.clone(),
                        ready,
                    })
            })
            .collect();
        Self {
            namespace,
            service,
            ports,
            endpoints,
        }
    }
}

/// What the directory keeps of a Namespace: the labels NetworkPolicy namespaceSelectors
/// match (`kubernetes.io/metadata.name` included, as the API server sets it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub name: Arc<str>,
    pub labels: Labels,
}

impl NamespaceRecord {
    /// The labels of a namespace not (yet) known: the one the API server sets on every
    /// namespace, so selecting a namespace by name still works.
    pub fn default_labels(name: &str) -> Labels {
        Labels::from_iter([("kubernetes.io/metadata.name", name)])
    }
}

impl From<&Namespace> for NamespaceRecord {
    fn from(namespace: &Namespace) -> Self {
        intern::with(|pool| {
            let (_, name) = key_in(pool, &namespace.metadata);
            let given = namespace.metadata.labels.iter().flatten();
            // The API server's own label first: a value the namespace gives comes later
            // and wins (see `Labels::new_in`).
            let labels = [("kubernetes.io/metadata.name", &*name)]
                .into_iter()
                .chain(given.map(|(k, v)| (&**k, &**v)));
            let labels = Labels::new_in(pool, labels);
            Self { name, labels }
        })
    }
}
