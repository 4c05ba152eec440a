use serde_json::{Value, json};

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::NetworkPolicy, apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{rules::selects, *};
use crate::enrich::{Labels, NamespaceRecord, PodView};

const POSTGRES: &str = "10.0.1.5";
const CHECKOUT: &str = "10.0.1.7";
const STAGING_CHECKOUT: &str = "10.0.2.7";
const STAGING_BATCH: &str = "10.0.2.8";
const PROMETHEUS: &str = "10.0.3.9";
const OUTSIDE: &str = "192.168.1.1";
const NODE: &str = "172.18.0.3";

fn pod(namespace: &str, name: &str, ip: &str, labels: Value, ports: Value) -> PodRecord {
    let view: PodView = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "hostIP": NODE, "podIP": ip},
    }))
    .unwrap();
    PodRecord::from(&view)
}

fn namespace(name: &str, labels: Value) -> NamespaceRecord {
    let namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap();
    NamespaceRecord::from(&namespace)
}

fn policy(namespace: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

/// production: postgres-0 (port 5432 named "pg") and a checkout pod; staging (env=staging):
/// checkout and batch pods; monitoring: prometheus. `policies` as given.
fn cluster(policies: Vec<NetworkPolicy>) -> ClusterView {
    let mut view = ClusterView::default();
    let pods = [
        pod(
            "production",
            "postgres-0",
            POSTGRES,
            json!({"app": "postgres"}),
            json!([{"name": "pg", "containerPort": 5432}]),
        ),
        pod(
            "production",
            "checkout-5d4e3c2f9b-abc12",
            CHECKOUT,
            json!({"app": "checkout"}),
            json!([]),
        ),
        pod(
            "staging",
            "checkout-7f6e5d4c3b-xyz89",
            STAGING_CHECKOUT,
            json!({"app": "checkout"}),
            json!([]),
        ),
        pod(
            "staging",
            "batch-0",
            STAGING_BATCH,
            json!({"app": "batch"}),
            json!([]),
        ),
        pod(
            "monitoring",
            "prometheus-0",
            PROMETHEUS,
            json!({"app": "prometheus"}),
            json!([]),
        ),
    ];
    for pod in pods.map(Arc::new) {
        for ip in &pod.ips {
            view.pod_by_ip.insert(*ip, Arc::clone(&pod));
        }
        view.pods
            .entry(Arc::clone(&pod.namespace))
            .or_default()
            .push(pod);
    }
    for record in [
        namespace("production", json!({"env": "production"})),
        namespace("staging", json!({"env": "staging"})),
        namespace("monitoring", json!({"team": "observability"})),
    ] {
        view.namespaces
            .insert(Arc::clone(&record.name), Arc::new(record));
    }
    for policy in policies {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        view.policies
            .entry(namespace.into())
            .or_default()
            .push(Arc::new(policy));
    }
    view
}

fn peer<'v>(view: &'v ClusterView, ip: &str) -> Peer<'v> {
    let ip: IpAddr = ip.parse().unwrap();
    Peer {
        ip,
        pod: view.pod_by_ip.get(&ip).map(|pod| &**pod),
    }
}

fn check(view: &ClusterView, src: &str, dst: &str, protocol: Protocol, port: u16) -> PolicyOutcome {
    evaluate(view, &peer(view, src), &peer(view, dst), protocol, port)
}

fn tcp(view: &ClusterView, src: &str, dst: &str, port: u16) -> PolicyOutcome {
    check(view, src, dst, Protocol::Tcp, port)
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn allowed(ingress: &[&str], egress: &[&str]) -> PolicyOutcome {
    PolicyOutcome::Allowed {
        ingress: names(ingress),
        egress: names(egress),
    }
}

fn ingress_denied(namespace: &str, pod: &str, policies: &[&str]) -> PolicyOutcome {
    PolicyOutcome::IngressDenied {
        namespace: namespace.into(),
        pod: pod.into(),
        policies: names(policies),
    }
}

fn egress_denied(namespace: &str, pod: &str, policies: &[&str]) -> PolicyOutcome {
    PolicyOutcome::EgressDenied {
        namespace: namespace.into(),
        pod: pod.into(),
        policies: names(policies),
    }
}

fn default_deny_db() -> NetworkPolicy {
    policy(
        "production",
        "default-deny-db",
        json!({"podSelector": {"matchLabels": {"app": "postgres"}}, "policyTypes": ["Ingress"]}),
    )
}

/// Admits `from` into postgres-0 on `ports`.
fn allow_db(from: Value, ports: Value) -> NetworkPolicy {
    policy(
        "production",
        "allow-db",
        json!({
            "podSelector": {"matchLabels": {"app": "postgres"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": from, "ports": ports}],
        }),
    )
}

#[test]
fn default_deny_ingress_names_the_policy() {
    let view = cluster(vec![default_deny_db()]);
    let outcome = tcp(&view, CHECKOUT, POSTGRES, 5432);
    assert_eq!(
        outcome,
        ingress_denied("production", "postgres-0", &["default-deny-db"])
    );
    assert!(outcome.is_denied());
    assert_eq!(
        outcome.reason(
            &peer(&view, CHECKOUT),
            &peer(&view, POSTGRES),
            Protocol::Tcp,
            5432
        ),
        "NetworkPolicy production/default-deny-db selects postgres-0 for ingress and no \
         rule admits production/checkout-5d4e3c2f9b-abc12 on TCP 5432"
    );
    assert_eq!(
        outcome.next().as_deref(),
        Some("kubectl describe networkpolicy default-deny-db -n production")
    );
}

#[test]
fn an_empty_pod_selector_isolates_every_pod_of_the_namespace() {
    let deny_all = policy(
        "production",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let view = cluster(vec![deny_all]);
    assert_eq!(
        tcp(&view, PROMETHEUS, CHECKOUT, 8080),
        ingress_denied("production", "checkout-5d4e3c2f9b-abc12", &["deny-all"])
    );
}

#[test]
fn an_empty_rule_admits_everything() {
    for rule in [json!({}), json!({"from": [], "ports": []})] {
        let allow_all = policy(
            "production",
            "allow-all",
            json!({"podSelector": {}, "ingress": [rule]}),
        );
        let view = cluster(vec![default_deny_db(), allow_all]);
        assert_eq!(
            tcp(&view, OUTSIDE, POSTGRES, 5432),
            allowed(&["allow-all"], &[])
        );
    }
}

#[test]
fn a_policy_without_a_spec_denies_all_ingress() {
    let bare: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "bare", "namespace": "production"},
    }))
    .unwrap();
    let view = cluster(vec![bare]);
    assert_eq!(
        tcp(&view, PROMETHEUS, POSTGRES, 5432),
        ingress_denied("production", "postgres-0", &["bare"])
    );
    assert!(!tcp(&view, POSTGRES, PROMETHEUS, 9090).is_denied());
}

#[test]
fn every_isolating_policy_is_named_when_none_admits() {
    let other = policy(
        "production",
        "allow-metrics",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]}],
        }),
    );
    let view = cluster(vec![default_deny_db(), other]);
    let outcome = tcp(&view, CHECKOUT, POSTGRES, 5432);
    assert_eq!(
        outcome,
        ingress_denied(
            "production",
            "postgres-0",
            &["default-deny-db", "allow-metrics"]
        )
    );
    assert_eq!(
        outcome.reason(
            &peer(&view, CHECKOUT),
            &peer(&view, POSTGRES),
            Protocol::Tcp,
            5432
        ),
        "NetworkPolicies production/default-deny-db, production/allow-metrics select \
         postgres-0 for ingress and none of their rules admits \
         production/checkout-5d4e3c2f9b-abc12 on TCP 5432"
    );
    assert_eq!(
        outcome.next().as_deref(),
        Some("kubectl describe networkpolicy default-deny-db -n production")
    );
}

#[test]
fn a_pod_selector_admits_its_pods_in_the_policy_namespace_only() {
    let allow = allow_db(
        json!([{"podSelector": {"matchLabels": {"app": "checkout"}}}]),
        json!([{"port": 5432}]),
    );
    let view = cluster(vec![default_deny_db(), allow]);
    let outcome = tcp(&view, CHECKOUT, POSTGRES, 5432);
    assert_eq!(outcome, allowed(&["allow-db"], &[]));
    assert!(!outcome.is_denied());
    assert_eq!(outcome.next(), None);
    assert_eq!(
        outcome.reason(
            &peer(&view, CHECKOUT),
            &peer(&view, POSTGRES),
            Protocol::Tcp,
            5432
        ),
        "NetworkPolicies allow this traffic (ingress: allow-db; egress: not isolated), so \
         the drop is elsewhere"
    );
    // Same labels, other namespace.
    assert_eq!(
        tcp(&view, STAGING_CHECKOUT, POSTGRES, 5432),
        ingress_denied("production", "postgres-0", &["default-deny-db", "allow-db"])
    );
}

#[test]
fn a_namespace_selector_matches_by_metadata_name() {
    let allow = allow_db(
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
        json!([]),
    );
    let view = cluster(vec![allow]);
    assert_eq!(
        tcp(&view, PROMETHEUS, POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
    assert!(tcp(&view, STAGING_CHECKOUT, POSTGRES, 5432).is_denied());
    // The policy's own namespace is not implied.
    assert!(tcp(&view, CHECKOUT, POSTGRES, 5432).is_denied());
}

#[test]
fn a_namespace_not_yet_known_still_has_its_name_label() {
    let allow = allow_db(
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
        json!([]),
    );
    let mut view = cluster(vec![allow]);
    view.namespaces.clear();
    assert_eq!(
        tcp(&view, PROMETHEUS, POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
}

#[test]
fn pod_and_namespace_selectors_in_one_entry_must_both_match() {
    let allow = allow_db(
        json!([{
            "namespaceSelector": {"matchLabels": {"env": "staging"}},
            "podSelector": {"matchLabels": {"app": "checkout"}},
        }]),
        json!([]),
    );
    let view = cluster(vec![allow]);
    assert_eq!(
        tcp(&view, STAGING_CHECKOUT, POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
    assert!(tcp(&view, STAGING_BATCH, POSTGRES, 5432).is_denied());
    assert!(tcp(&view, CHECKOUT, POSTGRES, 5432).is_denied());
}

#[test]
fn pod_and_namespace_selectors_in_two_entries_are_either() {
    let allow = allow_db(
        json!([
            {"namespaceSelector": {"matchLabels": {"env": "staging"}}},
            {"podSelector": {"matchLabels": {"app": "checkout"}}},
        ]),
        json!([]),
    );
    let view = cluster(vec![allow]);
    for src in [STAGING_CHECKOUT, STAGING_BATCH, CHECKOUT] {
        assert_eq!(
            tcp(&view, src, POSTGRES, 5432),
            allowed(&["allow-db"], &[]),
            "{src}"
        );
    }
    assert!(tcp(&view, PROMETHEUS, POSTGRES, 5432).is_denied());
}

#[test]
fn an_ip_block_admits_its_range_minus_the_exceptions() {
    let allow = allow_db(
        json!([
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.2.0/24"]}},
            {"ipBlock": {"cidr": "fd00::1/64"}},
        ]),
        json!([]),
    );
    let view = cluster(vec![allow]);
    assert_eq!(
        tcp(&view, CHECKOUT, POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
    assert!(tcp(&view, STAGING_CHECKOUT, POSTGRES, 5432).is_denied());
    assert_eq!(
        tcp(&view, "fd00::5", POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
    assert!(tcp(&view, "fd00:0:0:1::5", POSTGRES, 5432).is_denied());
    let outcome = tcp(&view, OUTSIDE, POSTGRES, 5432);
    assert!(outcome.is_denied());
    // An address that is no pod is named by itself.
    assert!(
        outcome
            .reason(
                &peer(&view, OUTSIDE),
                &peer(&view, POSTGRES),
                Protocol::Tcp,
                5432
            )
            .ends_with("no rule admits 192.168.1.1 on TCP 5432")
    );
}

#[test]
fn selectors_never_match_an_address_that_is_no_pod() {
    let allow = allow_db(json!([{"namespaceSelector": {}}]), json!([]));
    let view = cluster(vec![allow]);
    assert_eq!(
        tcp(&view, PROMETHEUS, POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
    assert!(tcp(&view, OUTSIDE, POSTGRES, 5432).is_denied());
}

#[test]
fn a_named_port_is_the_destination_pods_port_of_that_protocol() {
    let allow = allow_db(json!([]), json!([{"port": "pg"}]));
    let view = cluster(vec![allow]);
    assert_eq!(
        tcp(&view, CHECKOUT, POSTGRES, 5432),
        allowed(&["allow-db"], &[])
    );
    assert!(tcp(&view, CHECKOUT, POSTGRES, 5433).is_denied());
    // "pg" is declared for TCP.
    assert!(check(&view, CHECKOUT, POSTGRES, Protocol::Udp, 5432).is_denied());
}

#[test]
fn end_port_makes_an_inclusive_range() {
    let allow = allow_db(json!([]), json!([{"port": 5000, "endPort": 5999}]));
    let view = cluster(vec![allow]);
    for port in [5000, 5432, 5999] {
        assert!(!tcp(&view, CHECKOUT, POSTGRES, port).is_denied(), "{port}");
    }
    for port in [4999, 6000] {
        assert!(tcp(&view, CHECKOUT, POSTGRES, port).is_denied(), "{port}");
    }
}

#[test]
fn a_rule_for_udp_does_not_admit_tcp() {
    let allow = allow_db(json!([]), json!([{"protocol": "UDP", "port": 5432}]));
    let view = cluster(vec![allow]);
    assert!(tcp(&view, CHECKOUT, POSTGRES, 5432).is_denied());
    assert_eq!(
        check(&view, CHECKOUT, POSTGRES, Protocol::Udp, 5432),
        allowed(&["allow-db"], &[])
    );
}

#[test]
fn a_port_without_a_number_admits_every_port_of_its_protocol() {
    let allow = allow_db(json!([]), json!([{"protocol": "UDP"}]));
    let view = cluster(vec![allow]);
    assert!(!check(&view, CHECKOUT, POSTGRES, Protocol::Udp, 53).is_denied());
    assert!(tcp(&view, CHECKOUT, POSTGRES, 53).is_denied());
}

#[test]
fn default_deny_egress_names_the_policy_and_the_destination() {
    let deny = policy(
        "production",
        "deny-egress",
        json!({"podSelector": {"matchLabels": {"app": "checkout"}}, "policyTypes": ["Egress"]}),
    );
    let view = cluster(vec![deny]);
    let outcome = tcp(&view, CHECKOUT, POSTGRES, 5432);
    assert_eq!(
        outcome,
        egress_denied("production", "checkout-5d4e3c2f9b-abc12", &["deny-egress"])
    );
    assert_eq!(
        outcome.reason(
            &peer(&view, CHECKOUT),
            &peer(&view, POSTGRES),
            Protocol::Tcp,
            5432
        ),
        "NetworkPolicy production/deny-egress selects checkout-5d4e3c2f9b-abc12 for egress \
         and no rule lets it reach production/postgres-0 on TCP 5432"
    );
    assert_eq!(
        outcome.next().as_deref(),
        Some("kubectl describe networkpolicy deny-egress -n production")
    );
    // Egress isolation holds for destinations outside the cluster too.
    assert!(tcp(&view, CHECKOUT, OUTSIDE, 443).is_denied());
}

#[test]
fn an_egress_rule_admits_its_destination() {
    let allow = policy(
        "production",
        "checkout-to-db",
        json!({
            "podSelector": {"matchLabels": {"app": "checkout"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"podSelector": {"matchLabels": {"app": "postgres"}}}],
                "ports": [{"port": "pg"}],
            }],
        }),
    );
    let view = cluster(vec![allow]);
    assert_eq!(
        tcp(&view, CHECKOUT, POSTGRES, 5432),
        allowed(&[], &["checkout-to-db"])
    );
    assert!(tcp(&view, CHECKOUT, PROMETHEUS, 9090).is_denied());
}

#[test]
fn absent_policy_types_mean_ingress_and_egress_when_there_are_egress_rules() {
    let checkout_out = policy(
        "production",
        "checkout-out",
        json!({
            "podSelector": {"matchLabels": {"app": "checkout"}},
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "postgres"}}}]}],
        }),
    );
    let view = cluster(vec![checkout_out]);
    assert_eq!(
        tcp(&view, CHECKOUT, POSTGRES, 5432),
        allowed(&[], &["checkout-out"])
    );
    assert_eq!(
        tcp(&view, CHECKOUT, PROMETHEUS, 9090),
        egress_denied("production", "checkout-5d4e3c2f9b-abc12", &["checkout-out"])
    );
    // Ingress is implied, with no ingress rules: nothing gets in.
    assert_eq!(
        tcp(&view, PROMETHEUS, CHECKOUT, 8080),
        ingress_denied("production", "checkout-5d4e3c2f9b-abc12", &["checkout-out"])
    );
}

#[test]
fn absent_policy_types_without_egress_rules_leave_egress_alone() {
    for spec in [
        json!({"podSelector": {"matchLabels": {"app": "checkout"}}}),
        json!({"podSelector": {"matchLabels": {"app": "checkout"}}, "egress": []}),
    ] {
        let view = cluster(vec![policy("production", "checkout-in", spec)]);
        assert_eq!(tcp(&view, CHECKOUT, POSTGRES, 5432), allowed(&[], &[]));
        assert!(tcp(&view, PROMETHEUS, CHECKOUT, 8080).is_denied());
    }
}

#[test]
fn ingress_is_reported_before_egress() {
    let deny_egress = policy(
        "production",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let view = cluster(vec![default_deny_db(), deny_egress]);
    assert_eq!(
        tcp(&view, CHECKOUT, POSTGRES, 5432),
        ingress_denied("production", "postgres-0", &["default-deny-db"])
    );
}

#[test]
fn without_policies_everything_is_allowed() {
    let view = cluster(Vec::new());
    let outcome = tcp(&view, CHECKOUT, POSTGRES, 5432);
    assert_eq!(outcome, allowed(&[], &[]));
    assert_eq!(
        outcome.reason(
            &peer(&view, CHECKOUT),
            &peer(&view, POSTGRES),
            Protocol::Tcp,
            5432
        ),
        "No NetworkPolicy isolates either end, so the drop is elsewhere"
    );
    assert_eq!(outcome.next(), None);
}

#[test]
fn without_a_known_pod_policy_cannot_be_evaluated() {
    let view = cluster(vec![default_deny_db()]);
    let outcome = tcp(&view, OUTSIDE, "10.9.9.9", 80);
    assert_eq!(outcome, PolicyOutcome::Unknown);
    assert!(!outcome.is_denied());
    assert_eq!(outcome.next(), None);
    assert_eq!(
        outcome.reason(
            &peer(&view, OUTSIDE),
            &peer(&view, "10.9.9.9"),
            Protocol::Tcp,
            80
        ),
        "Neither 192.168.1.1 nor 10.9.9.9 is a known pod, so NetworkPolicy cannot be evaluated"
    );
}

#[test]
fn a_policy_in_another_namespace_does_not_apply() {
    let staging_deny = policy(
        "staging",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let view = cluster(vec![staging_deny]);
    assert_eq!(tcp(&view, CHECKOUT, POSTGRES, 5432), allowed(&[], &[]));
    assert!(tcp(&view, CHECKOUT, STAGING_CHECKOUT, 8080).is_denied());
}

#[test]
fn traffic_from_the_pods_own_node_is_always_allowed() {
    let view = cluster(vec![default_deny_db()]);
    let outcome = tcp(&view, NODE, POSTGRES, 5432);
    assert_eq!(outcome, allowed(&[], &[]));
    assert_eq!(
        outcome.reason(
            &peer(&view, NODE),
            &peer(&view, POSTGRES),
            Protocol::Tcp,
            5432
        ),
        "NetworkPolicies allow this traffic (ingress: from the pod's own node, always \
         allowed; egress: not isolated), so the drop is elsewhere"
    );
    assert!(tcp(&view, "172.18.0.4", POSTGRES, 5432).is_denied());
}

#[test]
fn a_host_network_pod_is_its_node_to_policy() {
    let view = cluster(vec![default_deny_db()]);
    let mut host = pod("kube-system", "agent", "172.18.0.4", json!({}), json!([]));
    host.host_network = true;
    let src = Peer {
        ip: "172.18.0.4".parse().unwrap(),
        pod: Some(&host),
    };
    let dst = peer(&view, POSTGRES);
    assert!(evaluate(&view, &src, &dst, Protocol::Tcp, 5432).is_denied());
    let outside = peer(&view, OUTSIDE);
    assert_eq!(
        evaluate(&view, &src, &outside, Protocol::Tcp, 443),
        PolicyOutcome::Unknown
    );
}

#[test]
fn label_selector_operators() {
    let labels = BTreeMap::from([
        ("app".to_string(), "web".to_string()),
        ("tier".to_string(), "front".to_string()),
    ]);
    let selects_with = |selector: Value| {
        let selector: LabelSelector = serde_json::from_value(selector).unwrap();
        selects(&selector, &Labels::from(&labels))
    };
    let expression = |key: &str, operator: &str, values: &[&str]| {
        selects_with(json!({"matchExpressions": [
            {"key": key, "operator": operator, "values": values}
        ]}))
    };
    assert!(selects_with(json!({})));
    assert!(selects_with(json!({"matchLabels": {"app": "web"}})));
    assert!(!selects_with(
        json!({"matchLabels": {"app": "web", "tier": "back"}})
    ));
    assert!(expression("app", "In", &["api", "web"]));
    assert!(!expression("app", "In", &["api"]));
    assert!(!expression("zone", "In", &["a"]));
    assert!(expression("app", "NotIn", &["api"]));
    assert!(!expression("app", "NotIn", &["web"]));
    assert!(expression("zone", "NotIn", &["a"]));
    assert!(expression("tier", "Exists", &[]));
    assert!(!expression("zone", "Exists", &[]));
    assert!(expression("zone", "DoesNotExist", &[]));
    assert!(!expression("tier", "DoesNotExist", &[]));
    assert!(!expression("app", "Matches", &["web"]));
    // matchLabels AND matchExpressions.
    assert!(!selects_with(json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}],
    })));
}

#[test]
fn a_match_expression_pod_selector_selects_the_subject() {
    let deny = policy(
        "production",
        "deny-stateful",
        json!({
            "podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["postgres", "redis"]}
            ]},
            "policyTypes": ["Ingress"],
        }),
    );
    let view = cluster(vec![deny]);
    assert!(tcp(&view, CHECKOUT, POSTGRES, 5432).is_denied());
    assert!(!tcp(&view, POSTGRES, CHECKOUT, 8080).is_denied());
}
