//! The HTTP API (docs/api.md): JSON for people and scripts, NDJSON for
//! `follow`, OpenMetrics text for scrapers. Handlers only filter and serialize; the
//! tracker behind [`FlowSource`] owns the data. Who may read is [`auth`]'s to decide;
//! how long and how much a connection may hold is `conn`'s; HTTPS is [`tls`]'s.

pub mod auth;
mod conn;
mod query;
pub mod tls;

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    BoxError, Json, Router,
    body::{Body, Bytes},
    error_handling::HandleErrorLayer,
    extract::{FromRequestParts, Query, Request, State},
    http::{
        HeaderMap, Method, StatusCode, Uri,
        header::{
            ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
            WWW_AUTHENTICATE,
        },
        request::Parts,
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tower::ServiceBuilder;

use self::auth::{Auth, Decision};
pub use self::conn::ServeOptions;
pub use self::query::{DEFAULT_LIMIT, Filter, MAX_LIMIT, QueryError, parameter_names};
use crate::{
    metrics::{self, AuthResult, Metrics},
    model::{Cause, FlowEvent, InterfaceStatus, NodeVerdict, Verdict},
};

/// Concurrent `follow=true` streams; each holds a connection and a broadcast receiver.
pub const MAX_FOLLOWERS: usize = 256;

/// What one client may ask of the API, so that no request (or flood of requests) can
/// take the memory or the CPU the probe needs during the incident it should explain.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Path and query, in bytes: filters fit in far less; longer is a 414.
    pub max_uri_bytes: usize,
    /// Requests being answered at once; beyond, a 503 at once (no queue). A follow
    /// stream counts only until its response starts.
    pub max_concurrent: usize,
    /// Time to start answering; beyond, a 503.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_concurrent: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

pub use crate::metrics::{OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";

/// What the API serves; the tracker implements it.
pub trait FlowSource: Send + Sync + 'static {
    /// Verdicts accepted by `keep`: the `limit` with the newest last_seen, returned oldest first.
    fn verdicts(&self, keep: &dyn Fn(&Verdict) -> bool, limit: usize) -> Vec<Verdict>;
    /// Recent-ring events accepted by `keep`: the newest `limit`, returned oldest first.
    fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent>;
    /// Every new FlowEvent from now on (for `follow=true`).
    fn subscribe(&self) -> broadcast::Receiver<FlowEvent>;
    fn interfaces(&self) -> Vec<InterfaceStatus>;
    /// Ok once programs are loaded and attached; Err(reason) before.
    fn readiness(&self) -> Result<(), String>;
    /// Node-level verdicts (a node-wide failure going on, or recently ended).
    fn node_verdicts(&self) -> Vec<NodeVerdict> {
        Vec::new()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub source: Arc<dyn FlowSource>,
    pub metrics: Arc<Metrics>,
    followers: Arc<Semaphore>,
    /// Table scans run one at a time (see [`scan`]).
    scans: Arc<Semaphore>,
    /// Turns true when the server shuts down, so follow streams end instead of holding up
    /// graceful shutdown forever.
    closing: watch::Sender<bool>,
    limits: Limits,
    auth: Auth,
    /// Verdicts and events held by answers not yet sent (see [`ANSWER_BUDGET`]).
    answers: Arc<Semaphore>,
}

/// Items (verdicts, events) that answers being sent may hold at once: three full
/// `limit=10000` answers. A client that never reads holds its share until the write
/// timeout drops it; past the budget, big answers get a 503 and small ones still fit.
pub const ANSWER_BUDGET: usize = 32_768;

impl AppState {
    pub fn new(source: Arc<dyn FlowSource>, metrics: Arc<Metrics>) -> Self {
        Self {
            source,
            metrics,
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            scans: Arc::new(Semaphore::new(1)),
            closing: watch::Sender::new(false),
            limits: Limits::default(),
            auth: Auth::None,
            answers: Arc::new(Semaphore::new(ANSWER_BUDGET)),
        }
    }

    /// Checks every request but `/healthz` and `/readyz` with `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// The API is read-only: every route is a GET, and nothing reads a body.
pub fn app(state: AppState) -> Router {
    let limits = state.limits;
    let auth = (state.auth.clone(), Arc::clone(&state.metrics));
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/verdicts", get(verdicts))
        .route("/v1/flows", get(flows))
        .route("/v1/interfaces", get(interfaces))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(auth, authenticate));
    routes
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                // Global: one budget for all routes and connections.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent,
                ))
                .timeout(limits.timeout),
        )
        .layer(middleware::from_fn_with_state(limits, reject_oversized))
}

/// Answers what no route should see: an oversized URI (414) or a request body (413).
async fn reject_oversized(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_bytes > limits.max_uri_bytes {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!(
                "request URI of {uri_bytes} bytes; at most {} are accepted",
                limits.max_uri_bytes
            ),
        )
        .into_response();
    }
    let headers = request.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if has_body {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the API is read-only: requests carry no body",
        )
        .into_response();
    }
    next.run(request).await
}

/// Paths the kubelet probes: open to anyone, they tell nothing about flows.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Where a request that comes through the API server's pods/proxy carries its bearer
/// token: the API server takes `Authorization` for itself and does not pass it on.
pub const PROXIED_AUTHORIZATION: &str = "x-netprobe-authorization";

/// Lets a request through only if its bearer token's user may `get` its path.
async fn authenticate(
    State((auth, metrics)): State<(Auth, Arc<Metrics>)>,
    request: Request,
    next: Next,
) -> Response {
    let Auth::Kube(kube) = auth else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_string();
    if OPEN_PATHS.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let token = [
        headers.get(AUTHORIZATION),
        headers.get(PROXIED_AUTHORIZATION),
    ]
    .into_iter()
    .flatten()
    .find_map(|value| auth::bearer_token(value.to_str().ok()?));
    let Some(token) = token else {
        metrics.api_auth(AuthResult::Unauthenticated);
        return unauthorized("a bearer token is required (Authorization: Bearer <token>)");
    };
    match kube.check(token, &path).await {
        Ok(Decision::Allowed { user }) => {
            metrics.api_auth(AuthResult::Allowed);
            tracing::debug!(user, path, "API request allowed");
            next.run(request).await
        }
        Ok(Decision::Unauthenticated(reason)) => {
            metrics.api_auth(AuthResult::Unauthenticated);
            unauthorized(&reason)
        }
        Ok(Decision::Forbidden(reason)) => {
            metrics.api_auth(AuthResult::Forbidden);
            ApiError::new(StatusCode::FORBIDDEN, reason).into_response()
        }
        Err(unavailable) => {
            metrics.api_auth(AuthResult::Unavailable);
            tracing::warn!("{unavailable}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, unavailable.to_string()).into_response()
        }
    }
}

fn unauthorized(reason: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, reason).into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The concurrency and time limits' errors, as JSON answers.
async fn overloaded(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long to answer; narrow it with filters or a smaller limit",
        )
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests at once; try again",
        )
    } else {
        tracing::error!(%error, "API request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "request failed")
    }
}

/// Serves until `shutdown` resolves, then ends follow streams and waits for in-flight
/// requests (the caller bounds that wait), with the default [`ServeOptions`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServeOptions::default(), shutdown).await
}

/// [`serve`] with the connection limits, timeouts and TLS of `options`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    conn::accept_loop(listener, app(state), options, closing, shutdown).await
}

/// An error answer: `{"error": "<message>"}` with a 4xx/5xx status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, err.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[derive(Serialize)]
struct StatusBody {
    status: &'static str,
}

#[derive(Serialize)]
struct InterfacesBody {
    interfaces: Vec<InterfaceStatus>,
}

/// The query string as a [`Filter`], or a 400 saying what is wrong with it.
struct Params(Filter);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, err.body_text()))?;
        Ok(Self(Filter::parse(pairs)?))
    }
}

/// Runs a tracker query off the async workers: it scans a table of up to 65,536 flows
/// under the tracker's lock. One scan at a time, so however hard the API is hammered, the
/// tracker gets the lock at least every other turn and keeps up with the kernel.
async fn scan<T: Send + 'static>(
    scans: &Arc<Semaphore>,
    query: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = scans
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    tokio::task::spawn_blocking(query).await.map_err(|err| {
        tracing::error!(%err, "flow source query failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "flow source query failed",
        )
    })
}

async fn healthz() -> Json<StatusBody> {
    Json(StatusBody { status: "ok" })
}

async fn readyz(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    state
        .source
        .readiness()
        .map(|()| Json(StatusBody { status: "ready" }))
        .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))
}

async fn verdicts(
    State(state): State<AppState>,
    Params(filter): Params,
) -> Result<Response, ApiError> {
    if filter.follow.is_some() {
        return Err(QueryError::NotSupported {
            param: "follow",
            context: "on /v1/verdicts",
        }
        .into());
    }
    let source = state.source;
    let limit = filter.limit();
    let share = answer_share(&state.answers, limit)?;
    let (verdicts, node) = scan(&state.scans, move || {
        let node = source.node_verdicts();
        let folded: Vec<Cause> = if filter.expand == Some(true) {
            Vec::new()
        } else {
            node.iter()
                .map(|n| n.cause)
                .filter(|cause| !filter.names_cause(*cause))
                .collect()
        };
        let keep = |v: &Verdict| {
            filter.matches_verdict(v) && v.cause.is_none_or(|cause| !folded.contains(&cause))
        };
        (source.verdicts(&keep, limit), node)
    })
    .await?;
    let node = serde_json::to_string(&node).map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("node verdicts: {err}"),
        )
    })?;
    Ok(listing(
        "verdicts",
        verdicts,
        format!(",\"node\":{node}}}"),
        share,
    ))
}

async fn flows(
    State(state): State<AppState>,
    Params(filter): Params,
) -> Result<Response, ApiError> {
    if filter.follow == Some(true) {
        return follow(state, filter);
    }
    let source = state.source;
    let limit = filter.limit();
    let share = answer_share(&state.answers, limit)?;
    let flows = scan(&state.scans, move || {
        source.events(&|e| filter.matches_event(e), limit)
    })
    .await?;
    Ok(listing("flows", flows, "}".to_string(), share))
}

/// Reserves room for an answer of up to `limit` items in [`ANSWER_BUDGET`], before the
/// scan (a refused request costs no scan).
fn answer_share(answers: &Arc<Semaphore>, limit: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    Arc::clone(answers)
        .try_acquire_many_owned(limit)
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many large answers are being sent; try again, or ask for a smaller limit",
            )
        })
}

/// Items serialized per body chunk.
const CHUNK_ITEMS: usize = 64;

/// `{"<key>":[item,...]<tail>` as a body serialized a chunk at a time while the client
/// reads, so the JSON text of a large answer is never whole in memory. `share` (its
/// unused part given back now) is held until the body is sent or dropped.
fn listing<T: Serialize + Send + 'static>(
    key: &'static str,
    items: Vec<T>,
    tail: String,
    mut share: OwnedSemaphorePermit,
) -> Response {
    drop(share.split(share.num_permits().saturating_sub(items.len())));
    struct Listing<T> {
        head: Option<Bytes>,
        items: std::vec::IntoIter<T>,
        first: bool,
        tail: Option<Bytes>,
        _share: OwnedSemaphorePermit,
    }
    let state = Listing {
        head: Some(Bytes::from(format!("{{\"{key}\":["))),
        items: items.into_iter(),
        first: true,
        tail: Some(Bytes::from(format!("]{tail}"))),
        _share: share,
    };
    let chunks = futures::stream::unfold(state, |mut state| async move {
        if let Some(head) = state.head.take() {
            return Some((Ok(head), state));
        }
        let mut chunk = Vec::new();
        for item in state.items.by_ref().take(CHUNK_ITEMS) {
            if !std::mem::take(&mut state.first) {
                chunk.push(b',');
            }
            if let Err(err) = serde_json::to_writer(&mut chunk, &item) {
                tracing::error!(%err, "cannot serialize an answer");
                return Some((Err(err), state));
            }
        }
        if !chunk.is_empty() {
            return Some((Ok(Bytes::from(chunk)), state));
        }
        let tail = state.tail.take()?;
        Some((Ok(tail), state))
    });
    (
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// A follow stream's state; dropping it (client gone, server closing) frees its slot.
struct Follower {
    events: broadcast::Receiver<FlowEvent>,
    filter: Filter,
    closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

impl Follower {
    /// The next matching event as one NDJSON line; `None` ends the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let event = tokio::select! {
                _ = self.closing.wait_for(|&closing| closing) => return None,
                event = self.events.recv() => event,
            };
            match event {
                Ok(event) if self.filter.matches_event(&event) => {
                    match serde_json::to_vec(&event) {
                        Ok(mut line) => {
                            line.push(b'\n');
                            return Some(line.into());
                        }
                        Err(err) => tracing::warn!(%err, "cannot serialize flow event"),
                    }
                }
                Ok(_) => {}
                // A slow client skips what it missed rather than slowing the tracker.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "follow stream lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn follow(state: AppState, filter: Filter) -> Result<Response, ApiError> {
    // The stream only carries events from now on, so a limit would mean nothing.
    if filter.limit.is_some() {
        return Err(QueryError::NotSupported {
            param: "limit",
            context: "with follow=true",
        }
        .into());
    }
    let slot = state.followers.try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many follow streams (at most {MAX_FOLLOWERS}); try again later"),
        )
    })?;
    let follower = Follower {
        events: state.source.subscribe(),
        filter,
        closing: state.closing.subscribe(),
        _slot: slot,
    };
    let lines = futures::stream::unfold(follower, |mut follower| async move {
        let line = follower.next_line().await?;
        Some((Ok::<_, Infallible>(line), follower))
    });
    Ok((
        [(CONTENT_TYPE, NDJSON_CONTENT_TYPE)],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn interfaces(State(state): State<AppState>) -> Json<InterfacesBody> {
    Json(InterfacesBody {
        interfaces: state.source.interfaces(),
    })
}

/// OpenMetrics for Prometheus (it asks for it), Prometheus's text format for others.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    (
        [(CONTENT_TYPE, format.content_type())],
        state.metrics.encode_as(format),
    )
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed on {}", uri.path()),
    )
}

/// A tracker stand-in and fixed data, shared by the HTTP tests here and `observe`'s.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::{net::SocketAddr, sync::Mutex};

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::model::{
        AttachMode, Counts, DnsSummary, Endpoint, Flow, FlowEventKind, Protocol, VerdictKind,
    };

    /// A tracker stand-in holding fixed verdicts and events, and a live channel small
    /// enough to make a follower lag.
    pub(crate) struct TestSource {
        pub(crate) verdicts: Vec<Verdict>,
        pub(crate) events: Vec<FlowEvent>,
        pub(crate) live: broadcast::Sender<FlowEvent>,
        pub(crate) ready: Mutex<Result<(), String>>,
    }

    /// The newest `limit` of `items` by `time`, oldest first, as the trait asks.
    fn newest<T: Clone>(
        items: &[T],
        keep: impl Fn(&T) -> bool,
        limit: usize,
        time: fn(&T) -> DateTime<Utc>,
    ) -> Vec<T> {
        let mut kept: Vec<T> = items.iter().filter(|item| keep(item)).cloned().collect();
        kept.sort_by_key(time);
        kept.split_off(kept.len().saturating_sub(limit))
    }

    impl FlowSource for TestSource {
        fn verdicts(&self, keep: &dyn Fn(&Verdict) -> bool, limit: usize) -> Vec<Verdict> {
            newest(&self.verdicts, keep, limit, |v| v.last_seen)
        }
        fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
            newest(&self.events, keep, limit, |e| e.time)
        }
        fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
            self.live.subscribe()
        }
        fn interfaces(&self) -> Vec<InterfaceStatus> {
            vec![InterfaceStatus {
                name: "veth3f2a".into(),
                ifindex: 7,
                mode: AttachMode::Tcx,
                attached_at: at("2026-11-23T09:59:00Z"),
                events: 12,
            }]
        }
        fn readiness(&self) -> Result<(), String> {
            self.ready.lock().unwrap().clone()
        }
    }

    pub(crate) fn at(time: &str) -> DateTime<Utc> {
        time.parse().unwrap()
    }

    pub(crate) fn flow(protocol: Protocol, src: &str, dst: &str) -> Flow {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        Flow {
            protocol,
            src_ip: src.ip(),
            src_port: src.port(),
            dst_ip: dst.ip(),
            dst_port: dst.port(),
        }
    }

    pub(crate) fn endpoint(
        namespace: &str,
        pod: Option<&str>,
        workload: Option<&str>,
        service: Option<&str>,
    ) -> Option<Arc<Endpoint>> {
        Some(Arc::new(Endpoint {
            namespace: Some(namespace.into()),
            pod: pod.map(Into::into),
            workload: workload.map(Into::into),
            service: service.map(Into::into),
            node: None,
        }))
    }

    pub(crate) fn verdict(flow: Flow, kind: VerdictKind, reason: &str, last_seen: &str) -> Verdict {
        Verdict {
            flow,
            verdict: kind,
            reason: reason.into(),
            cause: None,
            next: None,
            counts: Counts::default(),
            first_seen: at("2026-11-23T10:00:00.123Z"),
            last_seen: at(last_seen),
            interface: "veth3f2a".into(),
            src: None,
            dst: None,
            dns: None,
            backend: None,
        }
    }

    /// Four verdicts, stored out of order; tests name them by source port:
    /// 41234 TIMEOUT (10:00:03), 50000 REFUSED (:05), 53001 NXDOMAIN (:07), 40000 OK (:09).
    pub(crate) fn fixture_verdicts() -> Vec<Verdict> {
        let checkout = endpoint(
            "production",
            Some("checkout-api-5d4e3c2f-abc12"),
            Some("checkout-api"),
            None,
        );
        let timeout = Verdict {
            counts: Counts {
                syn: 3,
                ..Counts::default()
            },
            src: checkout.clone(),
            dst: endpoint("production", None, None, Some("payment-service")),
            ..verdict(
                flow(Protocol::Tcp, "10.244.1.5:41234", "10.96.45.123:8080"),
                VerdictKind::Timeout,
                "3 SYNs in 3.0s and no answer",
                "2026-11-23T10:00:03.130Z",
            )
        };
        let refused = Verdict {
            counts: Counts {
                syn: 1,
                rst: 1,
                ..Counts::default()
            },
            src: endpoint("staging", Some("web-0"), Some("web"), None),
            ..verdict(
                flow(Protocol::Tcp, "10.244.1.6:50000", "10.244.2.7:80"),
                VerdictKind::Refused,
                "SYN answered by RST",
                "2026-11-23T10:00:05Z",
            )
        };
        let nxdomain = Verdict {
            counts: Counts {
                dns_queries: 1,
                dns_responses: 1,
                ..Counts::default()
            },
            src: checkout,
            dst: endpoint(
                "kube-system",
                Some("coredns-5d78c9869d-abcde"),
                Some("coredns"),
                Some("kube-dns"),
            ),
            dns: Some(DnsSummary {
                id: 4711,
                qname: "flagsmith-postgresql.flagsmith.svc.cluster.local.".into(),
                qtype: "A".into(),
                rcode: Some("NXDOMAIN".into()),
            }),
            ..verdict(
                flow(Protocol::Udp, "10.244.1.5:53001", "10.96.0.10:53"),
                VerdictKind::Nxdomain,
                "name does not exist",
                "2026-11-23T10:00:07Z",
            )
        };
        let ok = Verdict {
            counts: Counts {
                syn: 1,
                syn_ack: 1,
                ..Counts::default()
            },
            ..verdict(
                flow(Protocol::Tcp, "[fd00::5]:40000", "[fd00::9]:443"),
                VerdictKind::Ok,
                "handshake completed",
                "2026-11-23T10:00:09Z",
            )
        };
        vec![nxdomain, timeout, ok, refused]
    }

    pub(crate) fn event_of(v: &Verdict, event: FlowEventKind) -> FlowEvent {
        FlowEvent {
            time: v.last_seen,
            flow: v.flow,
            event,
            verdict: v.verdict,
            reason: v.reason.clone(),
            cause: v.cause,
            next: v.next.clone(),
            interface: v.interface.clone(),
            src: v.src.clone(),
            dst: v.dst.clone(),
            dns: v.dns.clone(),
        }
    }

    pub(crate) fn fixture_events() -> Vec<FlowEvent> {
        let kinds = [
            FlowEventKind::DnsResponse,
            FlowEventKind::Timeout,
            FlowEventKind::SynAck,
            FlowEventKind::Rst,
        ];
        fixture_verdicts()
            .iter()
            .zip(kinds)
            .map(|(v, kind)| event_of(v, kind))
            .collect()
    }

    pub(crate) fn source() -> Arc<TestSource> {
        Arc::new(TestSource {
            verdicts: fixture_verdicts(),
            events: fixture_events(),
            live: broadcast::channel(2).0,
            ready: Mutex::new(Err("programs not attached yet".into())),
        })
    }

    pub(crate) fn state(source: &Arc<TestSource>) -> AppState {
        AppState::new(source.clone(), Arc::new(Metrics::default()))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
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

    /// A source whose verdict scans take `delay`, like a table of a million flows.
    struct SlowSource {
        inner: Arc<TestSource>,
        delay: Duration,
    }

    impl FlowSource for SlowSource {
        fn verdicts(&self, keep: &dyn Fn(&Verdict) -> bool, limit: usize) -> Vec<Verdict> {
            std::thread::sleep(self.delay);
            self.inner.verdicts(keep, limit)
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
        let source = Arc::new(SlowSource {
            inner: source(),
            delay,
        });
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
}
