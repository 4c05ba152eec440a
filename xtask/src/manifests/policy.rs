//! The security and operations policy of deploy/README.md, asserted on rendered objects.

use super::*;

/// The workspace's version: what `cargo xtask image` tags the image with
/// ([`image::tag`], the DaemonSet's image) and what every `app.kubernetes.io/version`
/// label must say. A version bump that leaves deploy/ behind fails the policy instead of
/// deploying an image that was never built or loaded into Kind.
const VERSION: &str = image::VERSION;

/// The recommended labels every object carries, with the values that must not vary.
const RECOMMENDED_LABELS: &[(&str, Option<&str>)] = &[
    ("app.kubernetes.io/name", Some("netprobe")),
    ("app.kubernetes.io/instance", Some("netprobe")),
    ("app.kubernetes.io/component", None),
    ("app.kubernetes.io/part-of", Some("netprobe")),
    ("app.kubernetes.io/version", Some(VERSION)),
    ("app.kubernetes.io/managed-by", Some("kustomize")),
];

/// Whether `tolerations` let a pod onto a node with this taint (Kubernetes' matching: an
/// empty key with `Exists` matches every key, an empty effect every effect).
fn tolerated(tolerations: &[Value], key: &str, value: &str, effect: &str) -> bool {
    tolerations.iter().any(|t| {
        let t_key = t["key"].as_str().unwrap_or("");
        let t_effect = t["effect"].as_str().unwrap_or("");
        let exists = t["operator"].as_str() == Some("Exists");
        (t_effect.is_empty() || t_effect == effect)
            && (t_key == key || (t_key.is_empty() && exists))
            && (exists || t["value"].as_str().unwrap_or("") == value)
    })
}

/// The policy of deploy/README.md, on the rendered objects.
pub fn policy(objects: &[Value], dashboard: &Value) -> Checks {
    let mut c = Checks::default();
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let want: BTreeSet<String> = [
        "Namespace/netprobe",
        "ServiceAccount/netprobe",
        "ClusterRole/netprobe",
        "ClusterRole/netprobe-reader",
        "ClusterRoleBinding/netprobe",
        "Role/netprobe-observer",
        "DaemonSet/netprobe",
        "Service/netprobe",
        "ConfigMap/netprobe-dashboard",
    ]
    .map(String::from)
    .into();
    // The base's objects, and the Prometheus Operator's two where its component is used.
    let mut want: BTreeSet<String> = want;
    if objects
        .iter()
        .any(|o| combinations::OPERATOR_KINDS.contains(&o["kind"].as_str().unwrap_or("")))
    {
        want.extend(
            combinations::OPERATOR_KINDS
                .iter()
                .map(|k| format!("{k}/netprobe")),
        );
    }
    c.eq("objects", &kinds, &want);

    // Labels and namespace, everywhere.
    let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"];
    for o in objects {
        let id = format!(
            "{} {}",
            o["kind"].as_str().unwrap_or("?"),
            o["metadata"]["name"].as_str().unwrap_or("?")
        );
        let mut label_sets = vec![(id.clone(), &o["metadata"]["labels"])];
        if o["kind"] == "DaemonSet" {
            label_sets.push((
                format!("{id} pod template"),
                &o["spec"]["template"]["metadata"]["labels"],
            ));
        }
        for (whose, labels) in label_sets {
            for (key, want) in RECOMMENDED_LABELS {
                let got = labels[key].as_str();
                c.check(
                    got.is_some_and(|g| !g.is_empty() && want.is_none_or(|w| g == w)),
                    || {
                        format!(
                            "{whose}: label {key} is {got:?}, want {}",
                            want.unwrap_or("set")
                        )
                    },
                );
            }
        }
        let namespace = o["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&o["kind"].as_str().unwrap_or("")) {
            c.eq(&format!("{id}: namespace"), namespace, None);
        } else {
            c.eq(&format!("{id}: namespace"), namespace, Some("netprobe"));
        }
    }
    let Ok(ds) = find(objects, "DaemonSet", "netprobe") else {
        return c;
    };

    // RBAC: read-only on exactly these resources, and creating Events (`--events`).
    if let Ok(role) = find(objects, "ClusterRole", "netprobe") {
        let mut grants = BTreeSet::new();
        for rule in role["rules"].as_array().into_iter().flatten() {
            c.check(
                rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                || format!("ClusterRole rule with resourceNames or nonResourceURLs: {rule}"),
            );
            for group in strings(rule.get("apiGroups")) {
                for resource in strings(rule.get("resources")) {
                    for verb in strings(rule.get("verbs")) {
                        grants.insert(format!("{group}/{resource}:{verb}"));
                    }
                }
            }
        }
        let mut want = BTreeSet::new();
        for (group, resource) in [
            ("", "pods"),
            ("", "services"),
            ("", "namespaces"),
            ("discovery.k8s.io", "endpointslices"),
            ("networking.k8s.io", "networkpolicies"),
        ] {
            for verb in ["get", "list", "watch"] {
                want.insert(format!("{group}/{resource}:{verb}"));
            }
        }
        // Each Event is created once, never patched (no series), read or deleted.
        want.insert("events.k8s.io/events:create".to_string());
        // --api-auth kube: reviews of who reads the agent's API (nothing is stored).
        want.insert("authentication.k8s.io/tokenreviews:create".to_string());
        want.insert("authorization.k8s.io/subjectaccessreviews:create".to_string());
        c.eq("ClusterRole grants (group/resource:verb)", &grants, &want);
    }
    // Readers of the agent's API get its paths, and nothing of the cluster.
    if let Ok(reader) = find(objects, "ClusterRole", "netprobe-reader") {
        c.eq(
            "ClusterRole netprobe-reader rules",
            &reader["rules"],
            &json!([{"nonResourceURLs": ["/v1/*", "/metrics"], "verbs": ["get"]}]),
        );
    }
    // Cluster-wide observe: the agent pods and their proxy, in the agents' namespace only.
    if let Ok(observer) = find(objects, "Role", "netprobe-observer") {
        c.eq(
            "Role netprobe-observer namespace",
            &observer["metadata"]["namespace"],
            &json!("netprobe"),
        );
        c.eq(
            "Role netprobe-observer rules",
            &observer["rules"],
            &json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]}
            ]),
        );
    }
    if let Ok(binding) = find(objects, "ClusterRoleBinding", "netprobe") {
        c.eq(
            "ClusterRoleBinding roleRef",
            (
                str_at(binding, "/roleRef/kind"),
                str_at(binding, "/roleRef/name"),
            ),
            (Some("ClusterRole"), Some("netprobe")),
        );
        c.eq(
            "ClusterRoleBinding subjects",
            &binding["subjects"],
            &json!([{"kind": "ServiceAccount", "name": "netprobe", "namespace": "netprobe"}]),
        );
    }

    // The DaemonSet.
    let pod = &ds["spec"]["template"]["spec"];
    c.eq(
        "DaemonSet serviceAccountName",
        str_at(pod, "/serviceAccountName"),
        Some("netprobe"),
    );
    c.eq("hostNetwork", pod["hostNetwork"].as_bool(), Some(true));
    c.eq(
        "dnsPolicy",
        str_at(pod, "/dnsPolicy"),
        Some("ClusterFirstWithHostNet"),
    );
    for shared in ["hostPID", "hostIPC"] {
        c.check(pod[shared].as_bool() != Some(true), || {
            format!("the pod shares the host's {shared}")
        });
    }
    c.eq(
        "priorityClassName",
        str_at(pod, "/priorityClassName"),
        Some("system-node-critical"),
    );
    c.eq(
        "terminationGracePeriodSeconds",
        pod["terminationGracePeriodSeconds"].as_i64(),
        Some(10),
    );
    c.eq(
        "updateStrategy",
        (
            str_at(ds, "/spec/updateStrategy/type"),
            ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
                .and_then(Value::as_i64),
        ),
        (Some("RollingUpdate"), Some(1)),
    );
    c.check(pod.get("volumes").is_none(), || {
        format!(
            "the pod has volumes (it needs none, no /sys/fs/bpf): {}",
            pod["volumes"]
        )
    });
    let tolerations = pod["tolerations"].as_array().map_or(&[][..], Vec::as_slice);
    for (key, value, effect) in [
        ("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
        ("node-role.kubernetes.io/master", "", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "", "NoExecute"),
        ("node.kubernetes.io/unreachable", "", "NoExecute"),
        ("dedicated", "gpu", "NoSchedule"),
    ] {
        c.check(tolerated(tolerations, key, value, effect), || {
            format!("the DaemonSet does not tolerate the taint {key}={value}:{effect}")
        });
    }
    let selector = &ds["spec"]["selector"]["matchLabels"];
    c.check(
        selector.as_object().is_some_and(|m| {
            !m.is_empty()
                && !m.contains_key("app.kubernetes.io/version")
                && m.iter()
                    .all(|(k, v)| ds["spec"]["template"]["metadata"]["labels"][k] == *v)
        }),
        || format!("DaemonSet selector {selector} must match the pod labels, without the version"),
    );

    let containers = pod["containers"].as_array().map_or(&[][..], Vec::as_slice);
    c.eq("containers", containers.len(), 1);
    c.check(pod.get("initContainers").is_none(), || {
        "the pod has init containers".into()
    });
    if let Some(k) = containers.first() {
        c.eq("image", str_at(k, "/image"), Some(image::tag().as_str()));
        c.eq(
            "imagePullPolicy",
            str_at(k, "/imagePullPolicy"),
            Some("IfNotPresent"),
        );
        c.eq("args", &k["args"], &json!(["run"]));
        let sc = &k["securityContext"];
        c.eq("privileged", sc["privileged"].as_bool(), Some(false));
        c.eq(
            "allowPrivilegeEscalation",
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
        );
        c.eq(
            "readOnlyRootFilesystem",
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
        );
        c.eq("runAsUser", sc["runAsUser"].as_i64(), Some(0));
        c.eq("runAsNonRoot", sc["runAsNonRoot"].as_bool(), Some(false));
        c.eq(
            "capabilities.drop",
            strings(sc.pointer("/capabilities/drop")),
            ["ALL".to_owned()].into(),
        );
        c.eq(
            "capabilities.add",
            strings(sc.pointer("/capabilities/add")),
            ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into(),
        );
        let seccomp = str_at(sc, "/seccompProfile/type")
            .or_else(|| str_at(pod, "/securityContext/seccompProfile/type"));
        c.eq("seccompProfile", seccomp, Some("RuntimeDefault"));
        c.check(k.get("volumeMounts").is_none(), || {
            "the container mounts volumes".into()
        });

        let env: BTreeMap<&str, &Value> = k["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e)))
            .collect();
        c.eq(
            "env NETPROBE_NODE_NAME",
            env.get("NETPROBE_NODE_NAME")
                .and_then(|e| str_at(e, "/valueFrom/fieldRef/fieldPath")),
            Some("spec.nodeName"),
        );
        c.eq(
            "env NETPROBE_KUBE",
            env.get("NETPROBE_KUBE").and_then(|e| str_at(e, "/value")),
            Some("auto"),
        );
        c.eq(
            "env NETPROBE_LISTEN",
            env.get("NETPROBE_LISTEN").and_then(|e| str_at(e, "/value")),
            Some("0.0.0.0:9810"),
        );
        // Writing Events is opt-in (deploy/README.md, "Operations"): the switch is in the
        // manifest, off.
        c.eq(
            "env NETPROBE_EVENTS",
            env.get("NETPROBE_EVENTS").and_then(|e| str_at(e, "/value")),
            Some("false"),
        );
        c.eq(
            "container ports",
            &k["ports"],
            &json!([{"name": "http", "containerPort": 9810, "protocol": "TCP"}]),
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            c.eq(
                probe,
                (
                    str_at(k, &format!("/{probe}/httpGet/path")),
                    k.pointer(&format!("/{probe}/httpGet/port")),
                ),
                (Some(path), Some(&json!("http"))),
            );
        }
        c.eq(
            "resources",
            &k["resources"],
            &json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}),
        );
    }

    // Service and ServiceMonitor find the agents.
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };
    if let Ok(svc) = find(objects, "Service", "netprobe") {
        c.check(selects(&svc["spec"]["selector"], pod_labels), || {
            "the Service does not select the DaemonSet's pods".into()
        });
        c.eq(
            "Service ports",
            &svc["spec"]["ports"],
            &json!([{"name": "http", "port": 9810, "targetPort": "http", "protocol": "TCP"}]),
        );
        if let Ok(sm) = find(objects, "ServiceMonitor", "netprobe") {
            c.check(
                selects(
                    &sm["spec"]["selector"]["matchLabels"],
                    &svc["metadata"]["labels"],
                ),
                || "the ServiceMonitor does not select the Service".into(),
            );
            let endpoints = sm["spec"]["endpoints"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            c.check(
                endpoints.len() == 1 && endpoints[0]["port"] == "http",
                || format!("ServiceMonitor endpoints: {endpoints:?}, want one on port http"),
            );
            // The agents check who scrapes: Prometheus sends its service account's token.
            c.check(
                endpoints.iter().all(|e| {
                    e["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
                }),
                || "the ServiceMonitor does not send Prometheus's service-account token".into(),
            );
            c.check(
                endpoints.iter().any(|e| {
                    e["relabelings"].as_array().into_iter().flatten().any(|r| {
                        r["sourceLabels"] == json!(["__meta_kubernetes_pod_node_name"])
                            && r["targetLabel"] == "node"
                            && r["action"].as_str().unwrap_or("replace") == "replace"
                    })
                }),
                || {
                    "the ServiceMonitor does not set `node` from __meta_kubernetes_pod_node_name"
                        .into()
                },
            );
        }
    }

    // Alerts: each says who fails to reach what, where, and what to run.
    if let Ok(rule) = find(objects, "PrometheusRule", "netprobe") {
        let mut names = BTreeSet::new();
        for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
            for r in group["rules"].as_array().into_iter().flatten() {
                let name = r["alert"].as_str().unwrap_or("(a recording rule)");
                names.insert(name.to_owned());
                let expr = r["expr"].as_str().unwrap_or("");
                let summary = str_at(r, "/annotations/summary").unwrap_or("");
                let description = str_at(r, "/annotations/description").unwrap_or("");
                c.check(
                    matches!(
                        str_at(r, "/labels/severity"),
                        Some("info" | "warning" | "critical")
                    ),
                    || format!("alert {name}: no severity label"),
                );
                let mut must_name = vec!["node"];
                if expr.contains("netprobe_verdicts_total") {
                    must_name.extend([
                        "src_namespace",
                        "src_workload",
                        "dst_namespace",
                        "dst_service",
                        "dst_port",
                    ]);
                } else if expr.contains("netprobe_dns_failures_total") {
                    must_name.extend(["src_namespace", "src_workload", "qname"]);
                }
                for label in must_name {
                    c.check(description.contains(&format!("$labels.{label}")), || {
                        format!("alert {name}: its description does not name $labels.{label}")
                    });
                }
                c.check(!summary.is_empty(), || format!("alert {name}: no summary"));
                c.check(description.contains("kubectl"), || {
                    format!("alert {name}: its description gives no command to run")
                });
            }
        }
        let want: BTreeSet<String> = [
            "NetprobeConnectionTimeouts",
            "NetprobeConnectionsRefused",
            "NetprobeServiceWithoutEndpoints",
            "NetprobeDNSNameNotFound",
            "NetprobeDNSTimeouts",
            "NetprobeEventsLost",
            "NetprobeAgentDown",
            "NetprobeAgentNotReady",
            "NetprobeNoInterfacesAttached",
        ]
        .map(String::from)
        .into();
        c.eq("alerts", &names, &want);
    }

    // The dashboard ConfigMap carries deploy/grafana/netprobe.json for Grafana's sidecar.
    if let Ok(cm) = find(objects, "ConfigMap", "netprobe-dashboard") {
        c.eq(
            "dashboard ConfigMap label grafana_dashboard",
            str_at(cm, "/metadata/labels/grafana_dashboard"),
            Some("1"),
        );
        let shipped: Option<Value> =
            str_at(cm, "/data/netprobe.json").and_then(|text| serde_json::from_str(text).ok());
        c.check(shipped.as_ref() == Some(dashboard), || {
            "the ConfigMap's netprobe.json is not deploy/grafana/netprobe.json".into()
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubectl kustomize deploy/` renders, put together without kubectl: the
    /// resources the kustomization lists, and the dashboard ConfigMap its generator makes.
    fn objects() -> Vec<Value> {
        let dir = deploy_dir();
        let kustomization: Value =
            parse_objects(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
                .unwrap()
                .remove(0);
        let mut objects = Vec::new();
        for file in kustomization["resources"].as_array().unwrap() {
            let text = std::fs::read_to_string(dir.join(file.as_str().unwrap())).unwrap();
            objects.extend(parse_objects(&text).unwrap());
        }
        objects.extend(operator_objects());
        let generator = &kustomization["configMapGenerator"][0];
        let file = generator["files"][0].as_str().unwrap();
        let key = Path::new(file).file_name().unwrap().to_str().unwrap();
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": generator["name"],
                "namespace": kustomization["namespace"],
                "labels": kustomization["generatorOptions"]["labels"],
            },
            "data": {key: std::fs::read_to_string(dir.join(file)).unwrap()},
        }));
        objects
    }

    /// What components/prometheus-operator adds: the resources its kustomization lists.
    fn operator_objects() -> Vec<Value> {
        let dir = combinations::component_dir(combinations::PROMETHEUS_OPERATOR);
        let component: Value =
            parse_objects(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
                .unwrap()
                .remove(0);
        assert_eq!(component["kind"], "Component");
        component["resources"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|file| {
                let text = std::fs::read_to_string(dir.join(file.as_str().unwrap())).unwrap();
                parse_objects(&text).unwrap()
            })
            .collect()
    }

    #[test]
    fn the_base_alone_has_only_built_in_kinds_and_follows_the_policy() {
        let operator = operator_objects();
        let base: Vec<Value> = objects()
            .into_iter()
            .filter(|o| !operator.contains(o))
            .collect();
        assert!(
            base.iter().all(|o| !o["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("monitoring.coreos.com/")),
            "{base:?}"
        );
        assert_eq!(problems(&base), Vec::<String>::new());
        // Half the component is a mistake.
        let mut half = base.clone();
        half.push(operator[0].clone());
        assert!(
            problems(&half).iter().any(|p| p.starts_with("objects")),
            "{:?}",
            problems(&half)
        );
        let with_seccomp = {
            let mut objects = objects();
            let ds = objects
                .iter_mut()
                .find(|o| o["kind"] == "DaemonSet")
                .unwrap();
            ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "Localhost", "localhostProfile": "profiles/netprobe.json"});
            objects
        };
        let all = objects();
        assert_eq!(
            combination_problems(&base, &all, &with_seccomp),
            Vec::<String>::new()
        );
        // An overlay that forgets the component, a component that changes the base.
        let mut changed = all.clone();
        changed[0]["metadata"]["labels"]["extra"] = json!("x");
        let p = combination_problems(&base, &changed, &with_seccomp);
        assert!(p.iter().any(|p| p.contains("changes the base")), "{p:?}");
    }

    /// The combinations' checks, with the base + seccomp and the base + both made from
    /// `with_seccomp` and the overlay taken as `operator`.
    fn combination_problems(
        base: &[Value],
        operator: &[Value],
        seccomp_on_operator: &[Value],
    ) -> Vec<String> {
        let names: Vec<String> = base
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect();
        let seccomp_only: Vec<Value> = seccomp_on_operator
            .iter()
            .filter(|o| names.contains(&o["kind"].as_str().unwrap().to_owned()))
            .cloned()
            .collect();
        combinations::combination_checks(
            base,
            operator,
            &seccomp_only,
            seccomp_on_operator,
            operator,
        )
        .problems()
        .to_vec()
    }

    fn problems(objects: &[Value]) -> Vec<String> {
        let dashboard = read_dashboard().unwrap();
        let mut c = policy(objects, &dashboard);
        c.merge(dashboard_checks(&dashboard));
        c.problems().to_vec()
    }

    fn mutated(pointer: &str, value: Value) -> Vec<String> {
        let mut objects = objects();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        // JSON pointer escapes: ~1 is '/', ~0 is '~'.
        let key = key.replace("~1", "/").replace("~0", "~");
        let (kind, parent) = parent.split_once(':').unwrap();
        let o = objects.iter_mut().find(|o| o["kind"] == kind).unwrap();
        let parent = o.pointer_mut(parent).unwrap();
        match parent {
            Value::Object(m) => {
                m.insert(key, value);
            }
            Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
            _ => panic!("{pointer}"),
        }
        problems(&objects)
    }

    #[test]
    fn the_manifests_follow_the_policy() {
        assert_eq!(problems(&objects()), Vec::<String>::new());
    }

    #[test]
    fn policy_violations_are_caught() {
        let sc = "DaemonSet:/spec/template/spec/containers/0/securityContext";
        for (pointer, value, expect) in [
            (format!("{sc}/privileged"), json!(true), "privileged"),
            (
                format!("{sc}/capabilities/add"),
                json!(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]),
                "capabilities.add",
            ),
            (
                format!("{sc}/capabilities/drop"),
                json!([]),
                "capabilities.drop",
            ),
            (
                format!("{sc}/readOnlyRootFilesystem"),
                json!(false),
                "readOnlyRootFilesystem",
            ),
            (
                "DaemonSet:/spec/template/spec/tolerations".into(),
                json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]),
                "control-plane",
            ),
            (
                "DaemonSet:/spec/template/spec/containers/0/readinessProbe/httpGet/path".into(),
                json!("/healthz"),
                "readinessProbe",
            ),
            (
                "ClusterRole:/rules/0/verbs".into(),
                json!(["get", "list", "watch", "create"]),
                "pods:create",
            ),
            (
                "ClusterRole:/rules/0/resources".into(),
                json!(["pods", "services", "namespaces", "secrets"]),
                "secrets",
            ),
            (
                "Service:/metadata/labels/app.kubernetes.io~1part-of".into(),
                json!("other"),
                "part-of",
            ),
            (
                "DaemonSet:/spec/template/spec/volumes".into(),
                json!([{"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}}]),
                "volumes",
            ),
        ] {
            let problems = mutated(&pointer, value);
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{pointer}: no problem mentions {expect:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_version_bump_needs_the_manifests_updated() {
        assert_eq!(
            image::tag(),
            format!("netprobe/probe-agent:{}", env!("CARGO_PKG_VERSION"))
        );
        // deploy/ left at another version than the workspace's: the image and every
        // version label are reported.
        let other = "netprobe/probe-agent:0.0.1";
        let problems = mutated(
            "DaemonSet:/spec/template/spec/containers/0/image",
            json!(other),
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("image:") && p.contains(other)),
            "{problems:?}"
        );
        for (pointer, whose) in [
            (
                "ConfigMap:/metadata/labels/app.kubernetes.io~1version",
                "ConfigMap netprobe-dashboard: label app.kubernetes.io/version",
            ),
            (
                "DaemonSet:/spec/template/metadata/labels/app.kubernetes.io~1version",
                "DaemonSet netprobe pod template: label app.kubernetes.io/version",
            ),
        ] {
            let problems = mutated(pointer, json!("0.0.1"));
            assert!(
                problems.iter().any(|p| p.starts_with(whose)),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let any_no_schedule = [json!({"operator": "Exists", "effect": "NoSchedule"})];
        assert!(tolerated(&any_no_schedule, "a", "", "NoSchedule"));
        assert!(!tolerated(&any_no_schedule, "a", "", "NoExecute"));
        let keyed = [json!({"key": "a", "value": "x", "effect": "NoSchedule"})];
        assert!(tolerated(&keyed, "a", "x", "NoSchedule"));
        assert!(!tolerated(&keyed, "a", "y", "NoSchedule"));
        assert!(!tolerated(&keyed, "b", "x", "NoSchedule"));
    }

    #[test]
    fn alert_rules_are_read_from_the_prometheusrule() {
        let objects = objects();
        let rules = alert_rules(find(&objects, "PrometheusRule", "netprobe").unwrap()).unwrap();
        assert_eq!(rules.len(), 9);
        assert!(rules.iter().all(|r| !r.expr.is_empty()));
    }
}
