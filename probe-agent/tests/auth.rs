//! `--api-auth kube` against the Kubernetes API stand-in, over real sockets: who may read
//! the API is what TokenReview and SubjectAccessReview say, answers are cached, and an API
//! that cannot answer denies (no root needed).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lab::kube_stand_in::KubeStandIn;
use probe_agent::{
    config::KubeMode,
    enrich::{self, KubeOptions},
    metrics::Metrics,
    serve::{
        self, AppState, ServeOptions,
        auth::{Auth, KubeAuth},
    },
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{broadcast, oneshot},
};

mod common;

use common::{Empty, TempDir, dechunk};

struct Agent {
    addr: SocketAddr,
    api: KubeStandIn,
    metrics: Arc<Metrics>,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

/// An API server on loopback checking tokens with the stand-in, allowed answers kept
/// for `allow_ttl`, denials for 10 s.
async fn agent(tag: &str, allow_ttl: Duration) -> Agent {
    let api = KubeStandIn::start().unwrap();
    let dir = std::env::temp_dir().join(format!("netprobe-auth-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let client = enrich::client(&KubeOptions {
        mode: KubeMode::Auto,
        kubeconfig: Some(kubeconfig),
    })
    .await
    .unwrap()
    .expect("a client");
    let auth = Auth::Kube(Arc::new(KubeAuth::new(
        client,
        allow_ttl,
        Duration::from_secs(10),
    )));
    let metrics = Arc::new(Metrics::default());
    let state = AppState::new(
        Arc::new(Empty(broadcast::channel(4).0)),
        Arc::clone(&metrics),
    )
    .with_auth(auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve::serve_with(
        listener,
        state,
        ServeOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    // Alice reads everything, Prometheus (by its service account's group) the metrics.
    api.add_token("alice-token", "alice", &["system:authenticated"]);
    api.grant("alice", &["/v1/*", "/metrics"]);
    api.add_token(
        "prometheus-token",
        "system:serviceaccount:monitoring:prometheus",
        &["system:serviceaccounts:monitoring", "system:authenticated"],
    );
    api.grant("system:serviceaccounts:monitoring", &["/metrics"]);
    api.add_token("mallory-token", "mallory", &["system:authenticated"]);
    Agent {
        addr,
        api,
        metrics,
        _stop: stop,
        _dir: TempDir(dir),
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn error(&self) -> String {
        let body: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body));
        body["error"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head[9..12].parse().unwrap();
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: dechunk(body),
    }
}

#[tokio::test]
async fn a_user_granted_the_path_reads_it_and_others_are_forbidden() {
    let agent = agent("allowed", Duration::from_secs(60)).await;
    let allowed = get(agent.addr, "/v1/verdicts?limit=5", Some("alice-token")).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let body: Value = serde_json::from_str(&allowed.body).unwrap();
    assert_eq!(body["verdicts"], serde_json::json!([]));

    let metrics = get(agent.addr, "/metrics", Some("prometheus-token")).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("netprobe_ready"), "{}", metrics.body);
    // Prometheus's group is granted /metrics only.
    let flows = get(agent.addr, "/v1/flows", Some("prometheus-token")).await;
    assert_eq!(flows.status, 403);

    let forbidden = get(agent.addr, "/v1/verdicts", Some("mallory-token")).await;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.head.contains("content-type: application/json"));
    assert_eq!(
        forbidden.error(),
        "user \"mallory\" may not get /v1/verdicts (bind the netprobe-reader ClusterRole)"
    );
}

#[tokio::test]
async fn no_token_or_an_unknown_or_expired_one_is_401() {
    let agent = agent("unauthenticated", Duration::from_secs(60)).await;
    let none = get(agent.addr, "/v1/verdicts", None).await;
    assert_eq!(none.status, 401);
    assert!(
        none.head.contains("www-authenticate: bearer"),
        "{}",
        none.head
    );
    assert_eq!(
        none.error(),
        "a bearer token is required (Authorization: Bearer <token>)"
    );
    let basic = {
        let mut stream = TcpStream::connect(agent.addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWxpY2U6eA==\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        raw
    };
    assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");

    let unknown = get(agent.addr, "/v1/verdicts", Some("forged")).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.error(),
        "invalid bearer token: invalid bearer token"
    );

    agent.api.add_token("old-token", "alice", &[]);
    agent.api.expire_token("old-token");
    let expired = get(agent.addr, "/v1/verdicts", Some("old-token")).await;
    assert_eq!(expired.status, 401);
    assert!(
        expired.error().contains("token has expired"),
        "{}",
        expired.body
    );

    // The kubelet's probes need no token.
    assert_eq!(get(agent.addr, "/healthz", None).await.status, 200);
    assert_eq!(get(agent.addr, "/readyz", None).await.status, 200);
    assert_eq!(agent.api.reviews(), (2, 0), "{:?}", agent.api.requests());
}

#[tokio::test]
async fn answers_are_cached_allowed_and_denied_until_they_expire() {
    let agent = agent("cached", Duration::from_millis(500)).await;
    for _ in 0..3 {
        assert_eq!(
            get(agent.addr, "/v1/verdicts", Some("alice-token"))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        agent.api.reviews(),
        (1, 1),
        "three requests, one review of each kind"
    );
    for _ in 0..3 {
        assert_eq!(
            get(agent.addr, "/v1/verdicts", Some("mallory-token"))
                .await
                .status,
            403
        );
        assert_eq!(
            get(agent.addr, "/v1/verdicts", Some("forged")).await.status,
            401
        );
    }
    assert_eq!(agent.api.reviews(), (3, 2), "denials are cached too");
    // Another path is another question.
    assert_eq!(
        get(agent.addr, "/metrics", Some("alice-token"))
            .await
            .status,
        200
    );
    assert_eq!(agent.api.reviews(), (4, 3));
    // Past its time to live, an allowed answer is asked again: a removed binding is seen.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(agent.addr, "/v1/verdicts", Some("alice-token"))
            .await
            .status,
        200
    );
    assert_eq!(agent.api.reviews(), (5, 4));
    // Every decision is counted, cached or not.
    let exposition = agent.metrics.encode();
    for (result, n) in [
        ("allowed", 5),
        ("forbidden", 3),
        ("unauthenticated", 3),
        ("unavailable", 0),
    ] {
        let series = format!("netprobe_api_auth_total{{result=\"{result}\"}} {n}\n");
        assert!(exposition.contains(&series), "{series} in {exposition}");
    }
}

#[tokio::test]
async fn an_api_that_cannot_answer_denies_and_says_so() {
    let agent = agent("unavailable", Duration::from_secs(60)).await;
    assert_eq!(
        get(agent.addr, "/v1/verdicts", Some("alice-token"))
            .await
            .status,
        200
    );
    agent.api.set_down(true);
    let started = Instant::now();
    let down = get(agent.addr, "/v1/flows", Some("alice-token")).await;
    assert_eq!(down.status, 503, "{}", down.body);
    let error = down.error();
    // A pooled connection may still carry the TokenReview; the next review cannot connect.
    assert!(
        error.starts_with("cannot check the bearer token: the Kubernetes API is unavailable (")
            && error.contains("Review failed:"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded by the review timeout"
    );
    // What was allowed before stays allowed for its time to live; probes stay open.
    assert_eq!(
        get(agent.addr, "/v1/verdicts", Some("alice-token"))
            .await
            .status,
        200
    );
    assert_eq!(get(agent.addr, "/readyz", None).await.status, 200);
    // Failures are not cached: once the stand-in listens again (it rebinds in its own
    // thread), the request is answered, well before a denial's 10 s would run out.
    agent.api.set_down(false);
    let back = Instant::now();
    loop {
        let answer = get(agent.addr, "/v1/flows", Some("alice-token")).await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(back.elapsed() < Duration::from_secs(3), "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `probe-agent observe` with its arguments; (success, stdout, stderr).
async fn observe(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_probe-agent"))
        .arg("observe")
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn observe_sends_the_kubeconfig_token_or_the_one_it_is_given() {
    let agent = agent("observe", Duration::from_secs(60)).await;
    let server = format!("http://{}", agent.addr);
    let kubeconfig = agent._dir.0.join("alice.kubeconfig");
    agent
        .api
        .write_kubeconfig_with_token(&kubeconfig, "alice-token")
        .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let (ok, stdout, stderr) = observe(&["--server", &server, "--kubeconfig", kubeconfig]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("LAST SEEN  VERDICT"), "{stdout}");

    let (ok, _, stderr) = observe(&["--server", &server, "--token", "mallory-token"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("answered 403 Forbidden: user \"mallory\" may not get /v1/verdicts"),
        "{stderr}"
    );
    let token_file = agent._dir.0.join("token");
    std::fs::write(&token_file, "alice-token\n").unwrap();
    let (ok, _, stderr) = observe(&[
        "--server",
        &server,
        "--token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{stderr}");
    // No token anywhere: the agent says what it wants.
    let (ok, _, stderr) = observe(&["--server", &server]).await;
    assert!(!ok);
    assert!(
        stderr.contains("answered 401 Unauthorized: a bearer token is required"),
        "{stderr}"
    );
}
