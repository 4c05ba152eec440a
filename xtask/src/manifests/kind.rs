//! deploy/kind/cluster.yaml as the READMEs rely on it, and what the READMEs say of the
//! image and the Kind cluster.

use super::*;

/// The fields of Kind's `kind.x-k8s.io/v1alpha4` Cluster, of its nodes and of its
/// `networking` (Kind decodes its config strictly: anything else is an error).
const KIND_CLUSTER_FIELDS: &[&str] = &[
    "kind",
    "apiVersion",
    "name",
    "nodes",
    "networking",
    "featureGates",
    "runtimeConfig",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
    "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
];

const KIND_NODE_FIELDS: &[&str] = &[
    "role",
    "image",
    "extraMounts",
    "extraPortMappings",
    "labels",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
];

const KIND_NETWORKING_FIELDS: &[&str] = &[
    "ipFamily",
    "apiServerPort",
    "apiServerAddress",
    "podSubnet",
    "serviceSubnet",
    "disableDefaultCNI",
    "kubeProxyMode",
    "dnsSearch",
];

/// The nodes the README's quick start promises: "1 control plane + 2 workers" (three
/// agents, one on the tainted control plane; pod-to-pod traffic that crosses nodes).
const KIND_ROLES: &[&str] = &["control-plane", "worker", "worker"];

/// deploy/kind/cluster.yaml, as the README's quick start relies on it: a Kind v1alpha4
/// Cluster named like the `--name` of `kind load` ([`image::KIND_CLUSTER`]), its nodes,
/// kindnet (its host-side interfaces are `veth…`, which the agent's default globs match)
/// and kube-proxy (its reject of a Service port without endpoints is the UNREACHABLE the
/// quick start shows). No unknown fields.
pub fn kind_cluster_checks(text: &str) -> Checks {
    let mut c = Checks::default();
    let what = "kind/cluster.yaml";
    let docs = match parse_objects(text) {
        Ok(docs) => docs,
        Err(e) => {
            c.check(false, || format!("{what}: not YAML: {e:#}"));
            return c;
        }
    };
    c.eq(&format!("{what}: documents"), docs.len(), 1);
    let Some(cluster) = docs.first() else {
        return c;
    };
    let strict = |c: &mut Checks, whose: &str, v: &Value, known: &[&str]| {
        let Some(map) = v.as_object() else {
            c.check(false, || format!("{whose}: not a mapping: {v}"));
            return;
        };
        for key in map.keys() {
            c.check(known.contains(&key.as_str()), || {
                format!("{whose}: unknown field {key:?} (Kind knows {known:?})")
            });
        }
    };
    strict(&mut c, what, cluster, KIND_CLUSTER_FIELDS);
    c.eq(
        &format!("{what}: apiVersion"),
        str_at(cluster, "/apiVersion"),
        Some("kind.x-k8s.io/v1alpha4"),
    );
    c.eq(
        &format!("{what}: kind"),
        str_at(cluster, "/kind"),
        Some("Cluster"),
    );
    c.eq(
        &format!("{what}: name (kind load ... --name, context kind-<name>)"),
        str_at(cluster, "/name"),
        Some(image::KIND_CLUSTER),
    );
    let nodes = cluster["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    for (i, node) in nodes.iter().enumerate() {
        strict(
            &mut c,
            &format!("{what}: nodes[{i}]"),
            node,
            KIND_NODE_FIELDS,
        );
    }
    let roles: Vec<&str> = nodes
        .iter()
        .map(|n| n["role"].as_str().unwrap_or("(none)"))
        .collect();
    c.eq(&format!("{what}: node roles"), roles.as_slice(), KIND_ROLES);
    if let Some(networking) = cluster.get("networking") {
        strict(
            &mut c,
            &format!("{what}: networking"),
            networking,
            KIND_NETWORKING_FIELDS,
        );
        c.check(networking["disableDefaultCNI"] != true, || {
            format!(
                "{what}: disableDefaultCNI: the quick start relies on kindnet's veth… interfaces"
            )
        });
        c.check(networking["kubeProxyMode"] != "none", || {
            format!("{what}: kubeProxyMode none: the quick start relies on kube-proxy")
        });
    }
    c
}

/// What a README says of the image and the Kind cluster: every `netprobe/probe-agent:<n…>`
/// is this version's tag, and every `kind` command names the cluster of
/// deploy/kind/cluster.yaml (`--name`, `--config`).
pub fn doc_checks(doc: &str, text: &str) -> Checks {
    let mut c = Checks::default();
    let tag = image::tag();
    let prefix = format!("{}:", image::REPOSITORY);
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{doc}:{}", n + 1);
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        for (i, _) in line.match_indices(&prefix) {
            let rest = &line[i + prefix.len()..];
            // `netprobe/probe-agent:<version>` is a placeholder, not a version.
            if rest.starts_with(|ch: char| ch.is_ascii_digit()) {
                let named: String = rest
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || ".-+".contains(*ch))
                    .collect();
                c.check(format!("{prefix}{named}") == tag, || {
                    format!(
                        "{at}: names the image {prefix}{named}, but cargo xtask image builds {tag}"
                    )
                });
            }
        }
        // A kind command: on a line of a code block or between backticks; up to a comment.
        for segment in line.split('`') {
            let words: Vec<&str> = segment
                .split_whitespace()
                .take_while(|w| !w.starts_with('#'))
                .collect();
            let Some(start) = words.windows(2).position(|w| {
                w[0] == "kind" && ["create", "delete", "load", "get", "export"].contains(&w[1])
            }) else {
                continue;
            };
            let words = &words[start..];
            let flag = |name: &str| {
                let i = words.iter().position(|w| *w == name)?;
                words.get(i + 1).copied()
            };
            if words.contains(&"--name") {
                c.eq(
                    &format!("{at}: kind --name"),
                    flag("--name"),
                    Some(image::KIND_CLUSTER),
                );
            } else if words[1] == "load" && in_code {
                // Without --name, kind loads into the cluster named "kind" (prose may
                // name the command without its arguments).
                c.check(false, || {
                    format!("{at}: `kind load` without --name {}", image::KIND_CLUSTER)
                });
            }
            if words.get(1..3) == Some(&["create", "cluster"][..]) {
                c.eq(
                    &format!("{at}: kind create cluster --config"),
                    flag("--config"),
                    Some("deploy/kind/cluster.yaml"),
                );
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_cluster_is_what_the_readme_says() {
        let text = std::fs::read_to_string(kind_cluster_path()).unwrap();
        assert_eq!(kind_cluster_checks(&text).problems(), &[] as &[String]);
        for (from, to, expect) in [
            ("name: netprobe", "name: kind", "name"),
            (
                "  - role: worker\n  - role: worker",
                "  - role: worker",
                "node roles",
            ),
            (
                "  - role: control-plane",
                "  - role: control-plane\n  - role: control-plane",
                "node roles",
            ),
            (
                "kind.x-k8s.io/v1alpha4",
                "kind.x-k8s.io/v1alpha3",
                "apiVersion",
            ),
            ("kind: Cluster", "kind: Config", "kind"),
            (
                "kind: Cluster",
                "kind: Cluster\nnodeGroups: 2",
                "nodeGroups",
            ),
            (
                "  - role: control-plane",
                "  - role: control-plane\n    replicas: 3",
                "replicas",
            ),
            (
                "name: netprobe",
                "name: netprobe\nnetworking:\n  disableDefaultCNI: true",
                "disableDefaultCNI",
            ),
            (
                "name: netprobe",
                "name: netprobe\nnetworking:\n  kubeProxyMode: none",
                "kubeProxyMode",
            ),
            (
                "name: netprobe",
                "name: netprobe\nnetworking:\n  podSubnets: 10.0.0.0/16",
                "podSubnets",
            ),
            (
                "name: netprobe",
                "name: netprobe\n---\nkind: Cluster",
                "documents",
            ),
        ] {
            assert!(text.contains(from), "{from:?}");
            let problems = kind_cluster_checks(&text.replacen(from, to, 1))
                .problems()
                .to_vec();
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{to:?}: no problem mentions {expect:?}: {problems:?}"
            );
        }
        // Fields Kind has are fine.
        let with_more = text.replacen(
            "name: netprobe",
            "name: netprobe\nnetworking:\n  kubeProxyMode: ipvs\n  podSubnet: 10.244.0.0/16\nfeatureGates: {}",
            1,
        );
        assert_eq!(kind_cluster_checks(&with_more).problems(), &[] as &[String]);
        assert!(!kind_cluster_checks("nodes: [").problems().is_empty());
    }

    #[test]
    fn the_docs_name_this_version_and_the_kind_cluster() {
        let root = util::workspace_root();
        for doc in [root.join("README.md"), deploy_dir().join("README.md")] {
            let text = std::fs::read_to_string(&doc).unwrap();
            assert_eq!(
                doc_checks("doc", &text).problems(),
                &[] as &[String],
                "{}",
                doc.display()
            );
        }
        let tag = image::tag();
        let good = format!(
            "```sh\nkind create cluster --config deploy/kind/cluster.yaml   # named \"netprobe\"\n\
             kind load image-archive t.tar --name netprobe\n```\n\
             tagged `{tag}` or `netprobe/probe-agent:<version>`; `kind load image-archive` in prose\n"
        );
        assert_eq!(doc_checks("X", &good).problems(), &[] as &[String]);
        let bad = "```sh\nkind load image-archive t.tar\nkind load image-archive t.tar --name kind\n\
                   kind create cluster\n```\nrun netprobe/probe-agent:0.0.1, \
                   `kind load image-archive t.tar --name other`\n";
        let problems = doc_checks("X", bad).problems().to_vec();
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(
            problems[0].starts_with("X:2: `kind load` without --name"),
            "{problems:?}"
        );
        assert!(
            problems[3].contains("netprobe/probe-agent:0.0.1"),
            "{problems:?}"
        );
    }
}
