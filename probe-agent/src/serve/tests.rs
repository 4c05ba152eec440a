//! The API's routes, limits and errors, against the tracker stand-in of [`super::fixtures`].

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::ServiceExt;

use super::{fixtures::*, *};
use crate::model::VerdictKind;

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json", "body: {}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn request(app: &Router, method: Method, uri: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(app: &Router, uri: &str) -> Answer {
    request(app, Method::GET, uri).await
}

async fn get_json(app: &Router, uri: &str) -> (StatusCode, Value) {
    let answer = get(app, uri).await;
    (answer.status, answer.json())
}

/// Source ports of the items under `key` in a list answer, in answer order.
fn ports(body: &Value, key: &str) -> Vec<u64> {
    body[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {body}"))
        .iter()
        .map(|item| item["flow"]["src_port"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = app(state(&source()));
    let answer = get(&app, "/healthz").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.body, r#"{"status":"ok"}"#);
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_until_ready() {
    let source = source();
    let app = app(state(&source));
    let before = get(&app, "/readyz").await;
    assert_eq!(before.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(before.body, r#"{"error":"programs not attached yet"}"#);

    *source.ready.lock().unwrap() = Ok(());
    let after = get(&app, "/readyz").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body, r#"{"status":"ready"}"#);
}

#[tokio::test]
async fn verdicts_are_served_in_the_design_shape_oldest_first() {
    let app = app(state(&source()));
    let (status, body) = get_json(&app, "/v1/verdicts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ports(&body, "verdicts"), [41234, 50000, 53001, 40000]);
    assert_eq!(
        body["verdicts"][0],
        json!({
            "flow": {"protocol": "TCP", "src_ip": "10.244.1.5", "src_port": 41234,
                     "dst_ip": "10.96.45.123", "dst_port": 8080},
            "verdict": "TIMEOUT",
            "backend": null,
            "cause": null,
            "next": null,
            "reason": "3 SYNs in 3.0s and no answer",
            "counts": {"syn": 3, "syn_ack": 0, "rst": 0, "icmp_unreachable": 0,
                       "dns_queries": 0, "dns_responses": 0},
            "first_seen": "2026-11-23T10:00:00.123Z",
            "last_seen": "2026-11-23T10:00:03.130Z",
            "interface": "veth3f2a",
            "src": {"namespace": "production", "pod": "checkout-api-5d4e3c2f-abc12", "workload": "checkout-api"},
            "dst": {"namespace": "production", "service": "payment-service"},
            "dns": null
        })
    );
    assert_eq!(
        body["verdicts"][2]["dns"],
        json!({"id": 4711, "qname": "flagsmith-postgresql.flagsmith.svc.cluster.local.",
               "qtype": "A", "rcode": "NXDOMAIN"})
    );
    assert_eq!(body["verdicts"][3]["src"], Value::Null);
}

#[tokio::test]
async fn flows_are_the_event_ring_oldest_first() {
    let app = app(state(&source()));
    let (status, body) = get_json(&app, "/v1/flows").await;
    assert_eq!(status, StatusCode::OK);
    let mut expected = fixture_events();
    expected.sort_by_key(|e| e.time);
    assert_eq!(body, json!({ "flows": expected }));
    assert_eq!(body["flows"][1]["event"], "RST");
    assert_eq!(body["flows"][1]["time"], "2026-11-23T10:00:05Z");
}

#[tokio::test]
async fn every_filter_selects_on_verdicts_and_flows() {
    let app = app(state(&source()));
    let cases: &[(&str, &[u64])] = &[
        ("verdict=timeout,REFUSED", &[41234, 50000]),
        ("verdict=NXDOMAIN", &[53001]),
        ("verdict=DNS_TIMEOUT", &[]),
        ("protocol=UDP", &[53001]),
        ("protocol=tcp", &[41234, 50000, 40000]),
        ("src_ip=10.244.1.5", &[41234, 53001]),
        ("src_ip=10.244.9.9", &[]),
        ("dst_ip=10.96.0.10", &[53001]),
        ("dst_ip=10.244.1.5", &[]),
        ("ip=10.244.2.7", &[50000]),
        ("ip=10.244.1.6", &[50000]),
        ("ip=fd00::9", &[40000]),
        ("ip=fd00::6", &[]),
        ("port=53", &[53001]),
        ("port=41234", &[]),
        ("namespace=kube-system", &[53001]),
        ("namespace=production", &[41234, 53001]),
        ("namespace=default", &[]),
        ("pod=coredns-*", &[53001]),
        ("pod=web-%3F", &[50000]),
        ("pod=payment*", &[]),
        ("since=2026-11-23T10:00:07Z", &[53001, 40000]),
        ("since=2026-11-23T11:00:07.001%2B01:00", &[40000]),
        ("since=1s", &[]),
        ("since=100000days", &[41234, 50000, 53001, 40000]),
        ("limit=2", &[53001, 40000]),
        ("limit=10000", &[41234, 50000, 53001, 40000]),
        (
            "verdict=TIMEOUT,NXDOMAIN&namespace=production&protocol=udp",
            &[53001],
        ),
        ("follow=false&port=80", &[50000]),
    ];
    for (query, expected) in cases {
        // `follow` is only a /v1/flows parameter.
        if !query.starts_with("follow") {
            let (status, body) = get_json(&app, &format!("/v1/verdicts?{query}")).await;
            assert_eq!(status, StatusCode::OK, "verdicts?{query}: {body}");
            assert_eq!(ports(&body, "verdicts"), *expected, "verdicts?{query}");
        }
        let (status, body) = get_json(&app, &format!("/v1/flows?{query}")).await;
        assert_eq!(status, StatusCode::OK, "flows?{query}: {body}");
        assert_eq!(ports(&body, "flows"), *expected, "flows?{query}");
    }
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_json_error_naming_them() {
    let app = app(state(&source()));
    let verdicts = "a comma-separated list of OK, PENDING, TIMEOUT, REFUSED, RESET, UNREACHABLE, NXDOMAIN, SERVFAIL, DNS_REFUSED, DNS_ERROR, DNS_TIMEOUT, ABORTED";
    let cases: Vec<(&str, String)> = vec![
        ("verdict=TIMEOUT,NOPE", format!("invalid verdict \"NOPE\": expected {verdicts}")),
        ("verdict", format!("invalid verdict \"\": expected {verdicts}")),
        ("protocol=sctp", "invalid protocol \"sctp\": expected tcp or udp".into()),
        ("src_ip=10.1", "invalid src_ip \"10.1\": expected an IPv4 or IPv6 address".into()),
        ("dst_ip=::g", "invalid dst_ip \"::g\": expected an IPv4 or IPv6 address".into()),
        ("ip=localhost", "invalid ip \"localhost\": expected an IPv4 or IPv6 address".into()),
        ("port=70000", "invalid port \"70000\": expected a port number from 0 to 65535".into()),
        ("namespace=", "invalid namespace \"\": expected a namespace name".into()),
        ("pod=a%5B", "invalid pod \"a[\": expected a glob pattern such as checkout-*".into()),
        ("since=yesterday", "invalid since \"yesterday\": expected a duration such as 30s or 5m, or an RFC 3339 time".into()),
        ("since=2026-13-01T00:00:00Z", "invalid since \"2026-13-01T00:00:00Z\": expected a duration such as 30s or 5m, or an RFC 3339 time".into()),
        ("limit=0", "invalid limit \"0\": expected a number from 1 to 10000".into()),
        ("limit=10001", "invalid limit \"10001\": expected a number from 1 to 10000".into()),
        ("limit=many", "invalid limit \"many\": expected a number from 1 to 10000".into()),
        ("port=80&port=443", "query parameter \"port\" given more than once".into()),
        ("colour=red", "unknown query parameter \"colour\" (known: verdict, cause, protocol, src_ip, dst_ip, ip, port, namespace, pod, src_namespace, src_pod, src_workload, dst_namespace, dst_pod, dst_service, since, limit, follow, expand)".into()),
    ];
    for (query, message) in &cases {
        for path in ["/v1/verdicts", "/v1/flows"] {
            let (status, body) = get_json(&app, &format!("{path}?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}");
            assert_eq!(body, json!({ "error": message }), "{path}?{query}");
        }
    }
    let only_flows: &[(&str, &str)] = &[
        (
            "/v1/verdicts?follow=true",
            "query parameter \"follow\" is not supported on /v1/verdicts",
        ),
        (
            "/v1/flows?follow=yes",
            "invalid follow \"yes\": expected true or false",
        ),
        (
            "/v1/flows?follow=true&limit=5",
            "query parameter \"limit\" is not supported with follow=true",
        ),
    ];
    for (uri, message) in only_flows {
        let (status, body) = get_json(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body, json!({ "error": message }), "{uri}");
    }
}

#[tokio::test]
async fn interfaces_are_listed() {
    let app = app(state(&source()));
    let (status, body) = get_json(&app, "/v1/interfaces").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"interfaces": [{"name": "veth3f2a", "ifindex": 7, "mode": "tcx",
                               "attached_at": "2026-11-23T09:59:00Z", "events": 12}]})
    );
}

#[tokio::test]
async fn metrics_serve_the_openmetrics_text() {
    let state = state(&source());
    state.metrics.verdict_reached(&fixture_verdicts()[1]);
    state.metrics.set_attached_interfaces(1);
    let app = app(state.clone());
    // Without asking for OpenMetrics (curl, promtool): Prometheus's text format.
    let text = get(&app, "/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    assert_eq!(text.content_type, TEXT_CONTENT_TYPE);
    assert_eq!(text.body, state.metrics.encode_as(metrics::Format::Text));
    assert!(!text.body.contains("# EOF"));
    // What Prometheus asks for.
    let request = Request::builder()
        .uri("/metrics")
        .header(
            ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CONTENT_TYPE].to_str().unwrap(),
        OPENMETRICS_CONTENT_TYPE
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer = Answer {
        status: StatusCode::OK,
        content_type: OPENMETRICS_CONTENT_TYPE.to_owned(),
        body: String::from_utf8(body.to_vec()).unwrap(),
    };
    assert_eq!(answer.body, state.metrics.encode());
    assert!(answer.body.contains(
        "\nnetprobe_verdicts_total{verdict=\"TIMEOUT\",src_namespace=\"production\",src_workload=\"checkout-api\",dst_namespace=\"production\",dst_workload=\"\",dst_service=\"payment-service\",dst_port=\"8080\"} 1\n"
    ));
    assert!(answer.body.contains("\nnetprobe_attached_interfaces 1\n"));
    assert!(answer.body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = app(state(&source()));
    let missing = get(&app, "/v2/verdicts?x=1").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json(),
        json!({"error": "no route for GET /v2/verdicts"})
    );
    let wrong = request(&app, Method::POST, "/healthz").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong.json(),
        json!({"error": "method POST not allowed on /healthz"})
    );
}

/// The next chunk of a streaming body, as text.
async fn next_chunk(body: &mut Body) -> Option<String> {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a chunk within 5 s")?
        .unwrap();
    Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
}

async fn open_follow(app: &Router, query: &str) -> Response {
    let uri = format!("/v1/flows?follow=true{query}");
    let request = Request::get(uri).body(Body::empty()).unwrap();
    app.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn follow_streams_matching_events_as_ndjson_lines() {
    let source = source();
    let app = app(state(&source));
    let response = open_follow(&app, "&verdict=REFUSED").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], NDJSON_CONTENT_TYPE);
    let mut body = response.into_body();

    let events = fixture_events();
    let refused = events
        .iter()
        .find(|e| e.verdict == VerdictKind::Refused)
        .unwrap();
    let other = events
        .iter()
        .find(|e| e.verdict != VerdictKind::Refused)
        .unwrap();
    source.live.send(other.clone()).unwrap();
    source.live.send(refused.clone()).unwrap();
    let line = next_chunk(&mut body).await.unwrap();
    assert_eq!(
        line,
        format!("{}\n", serde_json::to_string(refused).unwrap())
    );
    assert!(line.starts_with(r#"{"time":"2026-11-23T10:00:05Z","flow":{"protocol":"TCP","src_ip":"10.244.1.6","src_port":50000,"#));
}

#[tokio::test]
async fn a_lagging_follower_skips_what_it_missed_and_goes_on() {
    let source = source();
    let app = app(state(&source));
    let mut body = open_follow(&app, "").await.into_body();
    // The channel holds 2: of 5 events sent before the stream reads, the first 3 are lost.
    let events = fixture_events();
    let sent: Vec<FlowEvent> = events.iter().chain(&events).take(5).cloned().collect();
    for event in &sent {
        source.live.send(event.clone()).unwrap();
    }
    for event in &sent[3..] {
        let line = next_chunk(&mut body).await.unwrap();
        assert_eq!(line, format!("{}\n", serde_json::to_string(event).unwrap()));
    }
    source.live.send(sent[0].clone()).unwrap();
    let line = next_chunk(&mut body).await.unwrap();
    assert_eq!(
        line,
        format!("{}\n", serde_json::to_string(&sent[0]).unwrap())
    );
}

#[tokio::test]
async fn follow_streams_are_capped_and_a_dropped_one_frees_its_slot() {
    let source = source();
    let state = state(&source);
    let app = app(state.clone());
    let mut streams = Vec::new();
    for _ in 0..MAX_FOLLOWERS {
        let response = open_follow(&app, "").await;
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    assert_eq!(source.live.receiver_count(), MAX_FOLLOWERS);
    let refused = get(&app, "/v1/flows?follow=true").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.json(),
        json!({"error": "too many follow streams (at most 256); try again later"})
    );

    // A client going away drops its body: the receiver and the slot go with it.
    streams.pop();
    assert_eq!(source.live.receiver_count(), MAX_FOLLOWERS - 1);
    assert_eq!(state.followers.available_permits(), 1);
    assert_eq!(open_follow(&app, "").await.status(), StatusCode::OK);
    // Plain listings are not limited by the follow cap.
    assert_eq!(get(&app, "/v1/flows").await.status, StatusCode::OK);
}

/// Sends a raw HTTP/1.1 GET and returns the connection after the response headers.
async fn raw_get(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: netprobe\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    (conn, String::from_utf8(head).unwrap())
}

/// Waits until `done` holds, for at most 5 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn over_tcp_a_disconnect_frees_the_slot_and_shutdown_ends_streams() {
    let source = source();
    let state = state(&source);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async {
        stopped.await.ok();
    }));

    let (mut conn, head) = raw_get(addr, "/v1/flows?follow=true").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/x-ndjson\r\n"),
        "{head}"
    );
    let event = fixture_events().remove(0);
    source.live.send(event.clone()).unwrap();
    let line = format!("{}\n", serde_json::to_string(&event).unwrap());
    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
    let mut got = vec![0; chunk.len()];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), chunk);

    // A client that goes away while nothing happens costs nothing for long.
    let (idle, _) = raw_get(addr, "/v1/flows?follow=true").await;
    eventually("two followers", || {
        state.followers.available_permits() == MAX_FOLLOWERS - 2
    })
    .await;
    drop(idle);
    eventually("the idle follower's slot", || {
        state.followers.available_permits() == MAX_FOLLOWERS - 1
    })
    .await;

    // Shutdown ends the open stream (chunked terminator, then close) and serve returns.
    stop.send(()).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("stream ends on shutdown")
        .unwrap();
    assert_eq!(String::from_utf8(rest).unwrap(), "0\r\n\r\n");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(state.followers.available_permits(), MAX_FOLLOWERS);
}

/// The fixtures' source, watched: its verdict scans take `delay` (like a table of a
/// million flows) and count the verdicts built, those `keep` is asked of.
struct WatchedSource {
    inner: Arc<TestSource>,
    delay: Duration,
    built: AtomicUsize,
}

impl WatchedSource {
    fn new(delay: Duration) -> Self {
        Self {
            inner: source(),
            delay,
            built: AtomicUsize::new(0),
        }
    }
}

impl FlowSource for WatchedSource {
    fn verdicts(
        &self,
        head: &HeadFilter,
        keep: &dyn Fn(&Verdict) -> bool,
        limit: usize,
    ) -> Vec<Verdict> {
        std::thread::sleep(self.delay);
        let counted = |v: &Verdict| {
            self.built.fetch_add(1, Ordering::Relaxed);
            keep(v)
        };
        self.inner.verdicts(head, &counted, limit)
    }
    fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
        self.inner.events(keep, limit)
    }
    fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.inner.subscribe()
    }
    fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.inner.interfaces()
    }
    fn readiness(&self) -> Result<(), String> {
        self.inner.readiness()
    }
}

fn limited_app(limits: Limits, delay: Duration) -> Router {
    let source = Arc::new(WatchedSource::new(delay));
    app(AppState::new(source, Arc::new(Metrics::default())).with_limits(limits))
}

#[tokio::test]
async fn oversized_uris_and_request_bodies_are_refused_with_json() {
    let app = app(state(&source()));
    let long = format!("/v1/verdicts?pod={}", "a".repeat(20_000));
    let answer = get(&app, &long).await;
    assert_eq!(answer.status, StatusCode::URI_TOO_LONG);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("at most 8192"),
        "{}",
        answer.body
    );
    // Just under the limit is answered (and a pod glob that long matches nothing).
    let fits = format!("/v1/verdicts?pod={}", "a".repeat(8000));
    assert_eq!(get(&app, &fits).await.status, StatusCode::OK);

    let with_body = Request::builder()
        .uri("/v1/verdicts")
        .header(CONTENT_LENGTH, "5")
        .body(Body::from("hello"))
        .unwrap();
    let response = app.clone().oneshot(with_body).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("read-only"));
    // Writes are not routes.
    let answer = request(&app, Method::POST, "/v1/verdicts").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_with_a_503() {
    let limits = Limits {
        timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let app = limited_app(limits, Duration::from_millis(600));
    let started = Instant::now();
    let (status, json) = get_json(&app, "/v1/verdicts").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json["error"].as_str().unwrap().contains("too long"));
    assert!(started.elapsed() < Duration::from_millis(500));
    // Routes that do not scan are unaffected.
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_with_a_503() {
    let limits = Limits {
        max_concurrent: 2,
        ..Limits::default()
    };
    let app = limited_app(limits, Duration::from_millis(400));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, "/v1/verdicts").await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, json) = get_json(&app, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("too many requests")
    );
    for answer in slow {
        assert_eq!(answer.await.unwrap(), StatusCode::OK);
    }
    // The budget is back once they are answered.
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_verdict_filter_is_asked_before_any_verdict_is_built() {
    let watched = Arc::new(WatchedSource::new(Duration::ZERO));
    let all = &watched.inner.verdicts;
    let refused = all
        .iter()
        .filter(|v| v.verdict == VerdictKind::Refused)
        .count();
    assert!(0 < refused && refused < all.len());
    let app = app(AppState::new(
        Arc::clone(&watched) as Arc<dyn FlowSource>,
        Arc::new(Metrics::default()),
    ));
    let answer = get(&app, "/v1/verdicts?verdict=REFUSED").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["verdicts"].as_array().unwrap().len(), refused);
    // Only the refused flows' verdicts were built, not every flow's.
    assert_eq!(watched.built.load(Ordering::Relaxed), refused);
}
