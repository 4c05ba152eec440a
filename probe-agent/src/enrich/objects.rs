//! The parts of Kubernetes objects the directory needs, and how they become records.
//!
//! Pods are decoded into [`PodView`], a partial Pod with only the fields naming needs:
//! a cluster's pods are read in full once at start (10,000 pods × a whole `PodSpec` is
//! tens of MiB of transient JSON), and only these fields are ever allocated. Services
//! and EndpointSlices are small and use the k8s-openapi types.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::{Namespace, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::Deserialize;

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

pub fn object_key(meta: &ObjectMeta) -> ObjectKey {
    (
        meta.namespace.as_deref().unwrap_or_default().into(),
        meta.name.as_deref().unwrap_or_default().into(),
    )
}

/// What the directory keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `metadata.uid`: what `kubectl describe pod` matches its Events on.
    pub uid: Option<Arc<str>>,
    pub workload: Arc<str>,
    pub node: Option<Arc<str>>,
    pub host_ip: Option<IpAddr>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// `Succeeded` or `Failed`: its IP is free for a new pod.
    pub finished: bool,
    /// RFC 3339 creation time; newer pods win an IP.
    pub created: String,
    /// What Service selectors and NetworkPolicy podSelectors match.
    pub labels: BTreeMap<String, String>,
    /// The ports its containers declare.
    pub ports: Vec<DeclaredPort>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
}

/// A container port a pod declares (`spec.containers[].ports[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
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
        let (namespace, name) = object_key(&pod.metadata);
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = status
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
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| {
                Some(DeclaredPort {
                    name: p.name.as_deref().map(Arc::from),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: p.protocol.as_deref().unwrap_or("TCP").into(),
                })
            })
            .collect();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True");
        Self {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
            ready,
            workload: workload_of(&pod.metadata, &name),
            namespace,
            name,
            uid: pod.metadata.uid.as_deref().map(Arc::from),
            node: spec.node_name.as_deref().map(Arc::from),
            host_ip: status.host_ip.as_deref().and_then(|ip| ip.parse().ok()),
            ips,
            host_network: spec.host_network.unwrap_or(false),
            finished: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        }
    }
}

/// The workload that owns a pod: Deployment (through its ReplicaSet), StatefulSet,
/// DaemonSet, Job (CronJob for the Jobs it creates); the pod itself when it has no controller (bare or static pods).
///
/// A ReplicaSet created by a Deployment is named `<deployment>-<pod-template-hash>` and
/// its pods carry that hash as a label, so the Deployment is found without reading
/// ReplicaSets (which the agent's ClusterRole does not allow).
fn workload_of(meta: &ObjectMeta, pod_name: &Arc<str>) -> Arc<str> {
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
                Some(deployment) if !deployment.is_empty() => deployment.into(),
                _ => owner.name.as_str().into(),
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
                cronjob.into()
            }
            _ => owner.name.as_str().into(),
        },
        // A static (mirror) pod is "owned" by its Node: the pod is the workload.
        "Node" => Arc::clone(pod_name),
        _ => owner.name.as_str().into(),
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
        let (namespace, name) = object_key(&service.metadata);
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
                        Err(_) => TargetPort::Name(name.as_str().into()),
                    },
                };
                Some(ServicePortRecord {
                    name: p.name.as_deref().map(Arc::from),
                    port,
                    protocol: p.protocol.as_deref().unwrap_or("TCP").into(),
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
        let (namespace, _) = object_key(&slice.metadata);
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("kubernetes.io/service-name"))
            .map(|name| Arc::from(name.as_str()));
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
                    .map(Arc::from);
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
    pub labels: BTreeMap<String, String>,
}

impl From<&Namespace> for NamespaceRecord {
    fn from(namespace: &Namespace) -> Self {
        let (_, name) = object_key(&namespace.metadata);
        let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| name.to_string());
        Self { name, labels }
    }
}
