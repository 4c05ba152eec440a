use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde_json::{Value, json};

use super::{
    Directory, Labels, NamespaceRecord, Uid,
    objects::{PodRecord, PodView, ServiceRecord, SliceRecord, object_key},
};

fn pod(namespace: &str, name: &str, ip: &str, created: &str, extra: Value) -> PodView {
    let mut value = json!({
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "hostIP": "172.18.0.3", "podIP": ip, "podIPs": [{"ip": ip}]},
    });
    if created.is_empty() {
        value["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("creationTimestamp");
    }
    merge(&mut value, extra);
    serde_json::from_value(value).unwrap()
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

fn add(directory: &mut Directory, pod: &PodView) {
    directory
        .pods
        .apply(object_key(&pod.metadata), PodRecord::from(pod));
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn owned_by(kind: &str, name: &str) -> Value {
    json!({"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}
    ]}})
}

#[test]
fn workloads_come_from_the_controller_and_through_replica_sets() {
    let record = |extra| PodRecord::from(&pod("ns", "p-1", "10.0.0.1", "", extra));
    let mut rs = owned_by("ReplicaSet", "checkout-api-5d4e3c2f9b");
    merge(
        &mut rs,
        json!({"metadata": {"labels": {"pod-template-hash": "5d4e3c2f9b"}}}),
    );
    assert_eq!(&*record(rs).workload, "checkout-api");
    // A ReplicaSet without the Deployment's hash label is its own workload.
    assert_eq!(
        &*record(owned_by("ReplicaSet", "legacy-rs")).workload,
        "legacy-rs"
    );
    assert_eq!(&*record(owned_by("StatefulSet", "db")).workload, "db");
    assert_eq!(
        &*record(owned_by("DaemonSet", "kindnet")).workload,
        "kindnet"
    );
    assert_eq!(&*record(owned_by("Job", "report-1")).workload, "report-1");
    // A CronJob's Job: `<cronjob>-<minutes since the epoch>`.
    assert_eq!(
        &*record(owned_by("Job", "nightly-report-29400000")).workload,
        "nightly-report"
    );
    assert_eq!(
        &*record(owned_by("Job", "migrate-v2")).workload,
        "migrate-v2"
    );
    // Bare and static (mirror) pods are their own workload.
    assert_eq!(&*record(json!({})).workload, "p-1");
    assert_eq!(&*record(owned_by("Node", "node-a")).workload, "p-1");
}

#[test]
fn the_newest_running_pod_owns_a_shared_ip() {
    let mut directory = Directory::default();
    let old = pod(
        "a",
        "old",
        "10.0.0.9",
        "2026-01-01T00:00:00Z",
        json!({"status": {"phase": "Succeeded"}}),
    );
    let new = pod("b", "new", "10.0.0.9", "2026-01-02T00:00:00Z", json!({}));
    add(&mut directory, &new);
    add(&mut directory, &old);
    let owner = |d: &Directory| d.snapshot().source(ip("10.0.0.9")).unwrap().pod.clone();
    assert_eq!(owner(&directory).as_deref(), Some("new"));
    // Running beats finished even when the finished one is newer.
    let finished_newer = pod(
        "c",
        "finished-newer",
        "10.0.0.9",
        "2026-01-03T00:00:00Z",
        json!({"status": {"phase": "Failed"}}),
    );
    add(&mut directory, &finished_newer);
    assert_eq!(owner(&directory).as_deref(), Some("new"));
    directory.pods.delete(&object_key(&new.metadata));
    assert_eq!(owner(&directory).as_deref(), Some("finished-newer"));
}

#[test]
fn a_relist_replaces_what_was_known_only_when_complete() {
    let mut directory = Directory::default();
    let gone = pod("a", "gone", "10.0.0.1", "", json!({}));
    let kept = pod("a", "kept", "10.0.0.2", "", json!({}));
    add(&mut directory, &gone);
    add(&mut directory, &kept);
    directory.pods.relist_start();
    directory
        .pods
        .relist_apply(object_key(&kept.metadata), PodRecord::from(&kept));
    // Mid-relist the old names still serve.
    assert!(directory.snapshot().source(ip("10.0.0.1")).is_some());
    directory.pods.relist_done();
    assert!(directory.snapshot().source(ip("10.0.0.1")).is_none());
    assert!(directory.snapshot().source(ip("10.0.0.2")).is_some());
}

#[test]
fn services_name_their_cluster_ips_and_backends() {
    let mut directory = Directory::default();
    let backend = pod("shop", "api-0", "10.0.0.5", "", json!({}));
    add(&mut directory, &backend);
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"]},
    }))
    .unwrap();
    directory
        .services
        .apply(object_key(&service.metadata), ServiceRecord::from(&service));
    let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "api-headless", "namespace": "shop"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"]},
    }))
    .unwrap();
    assert!(ServiceRecord::from(&headless).cluster_ips.is_empty());
    for (name, service) in [("b-second", "zz"), ("a-first", "api")] {
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.5"],
                           "targetRef": {"kind": "Pod", "name": "api-0", "namespace": "shop"}}],
        }))
        .unwrap();
        directory
            .slices
            .apply(object_key(&slice.metadata), SliceRecord::from(&slice));
    }
    let snapshot = directory.snapshot();
    for vip in ["10.96.0.5", "fd00::5"] {
        let named = snapshot.destination(ip(vip), 80).unwrap();
        assert_eq!(named.service.as_deref(), Some("api"));
        assert_eq!(named.pod, None);
    }
    // Backing two Services: named after the first by name, every time.
    let pod = snapshot.destination(ip("10.0.0.5"), 8080).unwrap();
    assert_eq!(pod.service.as_deref(), Some("api"));
    assert_eq!(pod.pod.as_deref(), Some("api-0"));
}

#[test]
fn ten_thousand_pods_snapshot_in_bounded_time_and_size() {
    let mut directory = Directory::default();
    for i in 0..10_000u32 {
        let ip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
        let mut rs = owned_by("ReplicaSet", &format!("app-{}-7c9f8b6d4", i % 500));
        merge(
            &mut rs,
            json!({"metadata": {"labels": {"pod-template-hash": "7c9f8b6d4"}}}),
        );
        let view = pod(
            &format!("ns-{}", i % 50),
            &format!("app-{}-7c9f8b6d4-{i:05}", i % 500),
            &ip,
            "2026-01-01T00:00:00Z",
            rs,
        );
        add(&mut directory, &view);
    }
    let started = std::time::Instant::now();
    let snapshot = directory.snapshot();
    let took = started.elapsed();
    // One entry per pod IP plus the node address: no growth beyond what exists.
    assert_eq!(snapshot.len(), 10_001);
    assert_eq!(
        snapshot
            .source(ip("10.100.0.15"))
            .and_then(|e| e.workload.clone())
            .as_deref(),
        Some("app-15")
    );
    // Generous for a debug build on a busy CI core; release is ~10× faster.
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
}

#[test]
fn a_host_network_pod_behind_a_service_is_named_by_its_port() {
    let mut directory = Directory::default();
    let exporter = pod(
        "monitoring",
        "node-exporter-x7k2p",
        "172.18.0.3",
        "",
        json!({"spec": {"hostNetwork": true}}),
    );
    add(&mut directory, &exporter);
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "node-exporter-abcde", "namespace": "monitoring",
                     "labels": {"kubernetes.io/service-name": "node-exporter"}},
        "addressType": "IPv4",
        "ports": [{"port": 9100}],
        "endpoints": [{"addresses": ["172.18.0.3"],
                       "targetRef": {"kind": "Pod", "name": "node-exporter-x7k2p"}}],
    }))
    .unwrap();
    directory
        .slices
        .apply(object_key(&slice.metadata), SliceRecord::from(&slice));
    let snapshot = directory.snapshot();
    let named = snapshot.destination(ip("172.18.0.3"), 9100).unwrap();
    assert_eq!(named.pod.as_deref(), Some("node-exporter-x7k2p"));
    assert_eq!(named.service.as_deref(), Some("node-exporter"));
    // The node's address on other ports, and as a source, is the node.
    for end in [
        snapshot.destination(ip("172.18.0.3"), 22).unwrap(),
        snapshot.source(ip("172.18.0.3")).unwrap(),
    ] {
        assert_eq!(
            (end.node.as_deref(), end.pod.as_deref()),
            (Some("node-a"), None)
        );
    }
}

#[test]
fn pods_share_what_they_have_in_common() {
    let web = |name: &str, ip: &str| {
        pod(
            "shop",
            name,
            ip,
            "",
            json!({
                "metadata": {"labels": {"app": "web", "tier": "front"}},
                "spec": {"containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080}
                ]}]},
            }),
        )
    };
    let (a, b) = (web("web-a", "10.0.0.1"), web("web-b", "10.0.0.2"));
    let (record_a, record_b) = (PodRecord::from(&a), PodRecord::from(&b));
    assert!(Arc::ptr_eq(&record_a.namespace, &record_b.namespace));
    assert!(Arc::ptr_eq(
        &record_a.node.unwrap(),
        &record_b.node.unwrap()
    ));
    assert!(Arc::ptr_eq(&record_a.ports, &record_b.ports));
    assert_eq!(record_a.labels, record_b.labels);
    // The directory's key holds the record's own texts.
    let (namespace, name) = object_key(&a.metadata);
    assert!(Arc::ptr_eq(&namespace, &record_a.namespace));
    assert!(Arc::ptr_eq(&name, &record_a.name));
    // Nothing is lost: labels by key, ports as declared.
    assert_eq!(record_a.labels.get("tier"), Some("front"));
    assert_eq!(record_a.labels.get("zone"), None);
    assert_eq!(
        record_a.labels.iter().collect::<Vec<_>>(),
        [("app", "web"), ("tier", "front")]
    );
    assert_eq!(
        super::DeclaredPort::describe(&record_a.ports),
        "8080/TCP (http)"
    );
}

#[test]
fn labels_are_sorted_and_a_namespace_is_selected_by_its_name() {
    let labels = Labels::from(&BTreeMap::from([
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "1".to_string()),
    ]));
    assert_eq!(labels.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
    assert_eq!(
        Labels::from_iter([("k", "old"), ("k", "new")]).get("k"),
        Some("new")
    );
    assert!(Labels::default().is_empty());
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {"env": "prod"}}}))
            .unwrap();
    let record = NamespaceRecord::from(&namespace);
    assert_eq!(
        record.labels.get("kubernetes.io/metadata.name"),
        Some("shop")
    );
    assert_eq!(record.labels.get("env"), Some("prod"));
    // A value the namespace gives itself is kept.
    let renamed: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "given"}}
    }))
    .unwrap();
    assert_eq!(
        NamespaceRecord::from(&renamed)
            .labels
            .get("kubernetes.io/metadata.name"),
        Some("given")
    );
    assert_eq!(
        NamespaceRecord::default_labels("shop").get("kubernetes.io/metadata.name"),
        Some("shop")
    );
}

#[test]
fn uids_read_back_as_written() {
    for text in [
        "c0ffee00-0000-4000-8000-000000000001",
        "C0FFEE00-0000-4000-8000-000000000001",
        "c0ffee00000040008000000000000001",
        "5e0a-9",
        "",
    ] {
        assert_eq!(Uid::new(text).to_string(), text);
    }
    assert!(matches!(
        Uid::new("c0ffee00-0000-4000-8000-000000000001"),
        Uid::Uuid(_)
    ));
    assert!(matches!(Uid::new("5e0a-9"), Uid::Text(_)));
    let record = PodRecord::from(&pod(
        "a",
        "p",
        "10.0.0.1",
        "",
        json!({"metadata": {"uid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789"}}),
    ));
    assert_eq!(
        record.uid.map(|uid| uid.to_string()).as_deref(),
        Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789")
    );
}
