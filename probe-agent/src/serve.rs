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
    model::{Cause, Flow, FlowEvent, InterfaceStatus, NodeVerdict, Verdict, VerdictKind},
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

/// The part of a verdict filter that a flow, its verdict and its cause decide: the tracker
/// holds these as they are, so it asks this first and builds the verdicts of only the
/// flows that pass (a question few flows answer then reads the table, not builds it).
pub type HeadFilter<'a> = dyn Fn(&Flow, VerdictKind, Option<Cause>) -> bool + 'a;

/// What the API serves; the tracker implements it.
pub trait FlowSource: Send + Sync + 'static {
    /// Verdicts accepted by `head` and then `keep`: the `limit` with the newest last_seen,
    /// returned oldest first.
    fn verdicts(
        &self,
        head: &HeadFilter,
        keep: &dyn Fn(&Verdict) -> bool,
        limit: usize,
    ) -> Vec<Verdict>;
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
        let head = |flow: &Flow, verdict, cause: Option<Cause>| {
            filter.matches_head(flow, verdict, cause)
                && cause.is_none_or(|cause| !folded.contains(&cause))
        };
        // The head was asked before the verdict was built: what is left is names and time.
        let keep = |v: &Verdict| filter.matches_built(v);
        (source.verdicts(&head, &keep, limit), node)
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
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
