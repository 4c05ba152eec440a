//! The agent binary with `--api-auth kube` on a simulated node whose Kubernetes API is the
//! stand-in: the wiring from flags to answers (the cases themselves are in tests/auth.rs,
//! without root), and that `kube` without an API configuration does not start open.

use std::{process::Command, time::Duration};

use lab::kube_stand_in::KubeStandIn;

use crate::e2e::{Agent, node};

/// (status, `error` or body) of GET `path` with an optional bearer token.
fn get(agent: &Agent, path: &str, token: Option<&str>) -> (u16, String) {
    let request = ureq::get(&format!("{}{path}", agent.base))
        .config()
        .http_status_as_error(false)
        .build();
    let request = match token {
        Some(token) => request.header("Authorization", format!("Bearer {token}")),
        None => request,
    };
    let mut answer = request.call().expect("an answer");
    let status = answer.status().as_u16();
    let body = answer.body_mut().read_to_string().unwrap();
    let error = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    (status, error.unwrap_or(body))
}

#[test]
fn the_agent_asks_the_api_server_who_reads() {
    let node = node("aa");
    let api = KubeStandIn::start_in_netns(Some(node.netns())).expect("the API stand-in");
    let kubeconfig = std::env::temp_dir().join(format!("netprobe-aa-{}.kubeconfig", node.prefix()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.add_token("alice-token", "alice", &["system:authenticated"]);
    api.grant("alice", &["/v1/*", "/metrics"]);
    api.add_token("bob-token", "bob", &["system:authenticated"]);
    let agent = Agent::start(
        &node,
        &[
            "--api-auth",
            "kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--api-auth-cache-ttl",
            "1s",
        ],
    );
    assert_eq!(get(&agent, "/readyz", None).0, 200);
    assert_eq!(get(&agent, "/healthz", None).0, 200);
    assert_eq!(
        get(&agent, "/v1/verdicts", None),
        (
            401,
            "a bearer token is required (Authorization: Bearer <token>)".to_string()
        )
    );
    assert_eq!(get(&agent, "/v1/verdicts", Some("alice-token")).0, 200);
    assert_eq!(get(&agent, "/metrics", Some("alice-token")).0, 200);
    assert_eq!(
        get(&agent, "/metrics", Some("bob-token")),
        (
            403,
            "user \"bob\" may not get /metrics (bind the netprobe-reader ClusterRole)".to_string()
        )
    );
    let observe = Command::new(env!("CARGO_BIN_EXE_probe-agent"))
        .args(["observe", "--server", &agent.base, "--token", "alice-token"])
        .env("HOME", "/nonexistent")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        observe.status.success(),
        "{}",
        String::from_utf8_lossy(&observe.stderr)
    );

    // Fail closed: the API gone, a token not cached is refused, and the error says why.
    api.set_down(true);
    std::thread::sleep(Duration::from_millis(1100));
    let (status, error) = get(&agent, "/v1/flows", Some("alice-token"));
    assert_eq!(status, 503, "{error}");
    assert!(
        error.starts_with("cannot check the bearer token: the Kubernetes API is unavailable"),
        "{error}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn kube_auth_without_an_api_does_not_start() {
    let node = node("an");
    let out = Command::new(env!("CARGO_BIN_EXE_probe-agent"))
        .args(["run", "--listen", "127.0.0.1:0", "--api-auth", "kube"])
        .arg("--netns")
        .arg(node.netns_path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--api-auth kube needs the Kubernetes API (in a cluster, or --kubeconfig)"),
        "{stderr}"
    );
}
