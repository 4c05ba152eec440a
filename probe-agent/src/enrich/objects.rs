//! The parts of Kubernetes objects the directory needs, and how they become records.
//!
//! Pods are decoded into [`PodView`], a partial Pod with only the fields naming needs:
//! a cluster's pods are read in full once at start (10,000 pods × a whole `PodSpec` is
//! tens of MiB of transient JSON), and only these fields are ever allocated. Services
//! and EndpointSlices are small and use the k8s-openapi types.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
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
    pub workload: Arc<str>,
    pub node: Option<Arc<str>>,
    pub host_ip: Option<IpAddr>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// `Succeeded` or `Failed`: its IP is free for a new pod.
    pub finished: bool,
    /// RFC 3339 creation time; newer pods win an IP.
    pub created: String,
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
        Self {
            workload: workload_of(&pod.metadata, &name),
            namespace,
            name,
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
/// DaemonSet, Job; the pod itself when it has no controller (bare or static pods).
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
        // A static (mirror) pod is "owned" by its Node: the pod is the workload.
        "Node" => Arc::clone(pod_name),
        _ => owner.name.as_str().into(),
    }
}

/// What the directory keeps of a Service: the virtual IPs that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub cluster_ips: Vec<IpAddr>,
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
        Self {
            namespace,
            name,
            cluster_ips,
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
