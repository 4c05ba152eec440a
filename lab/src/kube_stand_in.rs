//! A stand-in for the Kubernetes API server: serves list and watch requests for pods,
//! Services, EndpointSlices, NetworkPolicies, Namespaces, Nodes and Events from objects a test
//! or the demo gives it, the way a real API server answers kube-rs watchers
//! (`GET <collection>` lists with a `resourceVersion`; `?watch=true&resourceVersion=N`
//! streams newline-delimited `{"type":"ADDED|MODIFIED|DELETED","object":…}` events after
//! N), and creates objects in a namespace (`POST`, as the agent's `--events` writes
//! Events: [`KubeStandIn::events`] reads them back).
//!
//! It also reviews bearer tokens as an API server does for the agent's `--api-auth kube`:
//! `POST` TokenReview (tokens registered with [`KubeStandIn::add_token`], which may be
//! expired) and SubjectAccessReview (`get` on non-resource URLs granted to a user or a
//! group with [`KubeStandIn::grant`], `*` at the end of a path matching any rest, as RBAC does).
//!
//! Lists of a namespace's collection and with a `labelSelector` are served, and
//! `pods/{name}/proxy/...` forwards to the pod (where [`KubeStandIn::route_pod`] sends
//! it), as for `probe-agent observe --cluster`.
//!
//! Tests change the cluster while the agent watches ([`KubeStandIn::apply`],
//! [`KubeStandIn::delete`]), cut the watches ([`KubeStandIn::drop_watches`]) or take the
//! server down ([`KubeStandIn::set_down`]), and read back which requests were made.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

mod pods;

/// The collections served: URL path, kind, list kind, apiVersion, namespaced.
const COLLECTIONS: [(&str, &str, &str, &str, bool); 7] = [
    ("/api/v1/pods", "Pod", "PodList", "v1", true),
    ("/api/v1/services", "Service", "ServiceList", "v1", true),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        true,
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "NetworkPolicyList",
        "networking.k8s.io/v1",
        true,
    ),
    (
        "/api/v1/namespaces",
        "Namespace",
        "NamespaceList",
        "v1",
        false,
    ),
    ("/api/v1/nodes", "Node", "NodeList", "v1", false),
    (
        "/apis/events.k8s.io/v1/events",
        "Event",
        "EventList",
        "events.k8s.io/v1",
        true,
    ),
];

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// One served request: method and path with query.
pub type RequestLine = (String, String);

#[derive(Default)]
struct Cluster {
    resource_version: u64,
    /// Objects by kind, then (namespace, name).
    objects: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    /// Every change by kind: (resourceVersion, event type, object).
    history: HashMap<&'static str, Vec<(u64, &'static str, Value)>>,
    requests: Vec<RequestLine>,
    /// Bearer tokens: token → (user, groups, expired).
    tokens: HashMap<String, (String, Vec<String>, bool)>,
    /// Non-resource URLs each user or group may `get`.
    grants: HashMap<String, Vec<String>>,
    /// Where `pods/{name}/proxy` of (namespace, name) goes instead of the pod's IP.
    proxy_routes: HashMap<(String, String), SocketAddr>,
}

impl Cluster {
    /// Stores `object` (added or replaced) under a new resourceVersion and records the
    /// change for watchers. Returns the resourceVersion and the object as stored.
    fn store(&mut self, kind: &'static str, mut object: Value) -> (u64, Value) {
        self.resource_version += 1;
        let rv = self.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let previous = self
            .objects
            .entry(kind)
            .or_default()
            .insert(key_of(&object), object.clone());
        let event = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.history
            .entry(kind)
            .or_default()
            .push((rv, event, object.clone()));
        (rv, object)
    }
}

struct Shared {
    cluster: Mutex<Cluster>,
    /// The latest resourceVersion: watch streams wake on it.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch stream (a dropped connection).
    cut: watch::Sender<u64>,
    /// Whether the server listens.
    up: watch::Sender<bool>,
}

impl Shared {
    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running stand-in; stops when dropped.
pub struct KubeStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KubeStandIn {
    /// Serves on an ephemeral loopback port.
    pub fn start() -> Result<Self> {
        Self::start_in_netns(None)
    }

    /// Serves on an ephemeral loopback port of the network namespace `netns` (by name,
    /// under /var/run/netns), e.g. a simulated node whose agent reaches "its" API server
    /// there, as a host-network pod reaches the real one over the node's network.
    pub fn start_in_netns(netns: Option<&str>) -> Result<Self> {
        let netns = netns.map(crate::netns_path);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            cluster: Mutex::new(Cluster::default()),
            changed: watch::channel(0).0,
            cut: watch::channel(0).0,
            up: watch::channel(true).0,
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let mut up = shared.up.subscribe();
        let thread = thread::Builder::new()
            .name("kube-stand-in".into())
            .spawn(move || {
                let bound = (|| -> Result<(std::os::fd::OwnedFd, SocketAddr)> {
                    if let Some(path) = &netns {
                        let file = std::fs::File::open(path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        // Only this thread moves: its sockets (and rebinds) live there.
                        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .with_context(|| format!("entering {}", path.display()))?;
                    }
                    reserve_port()
                })();
                // Held for the stand-in's life: while it is down nothing listens (clients
                // are refused) but no other socket can take the port it comes back on.
                let (_reserved, addr) = match bound {
                    Ok((reserved, addr)) => {
                        let _ = bound_tx.send(Ok(addr));
                        (reserved, addr)
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                runtime.block_on(async move {
                    loop {
                        // Down: nothing listens, so clients get "connection refused".
                        tokio::select! {
                            _ = up.wait_for(|up| *up) => {}
                            _ = &mut stopped => return,
                        }
                        let bound = match listen_on(addr) {
                            Ok(bound) => bound,
                            Err(err) => {
                                eprintln!("kube stand-in: cannot listen on {addr} again: {err}");
                                return;
                            }
                        };
                        let mut down = up.clone();
                        let stopping =
                            axum::serve(bound, app.clone()).with_graceful_shutdown(async move {
                                let _ = down.wait_for(|up| !*up).await;
                            });
                        tokio::select! {
                            _ = stopping => {}
                            _ = &mut stopped => return,
                        }
                    }
                });
            })?;
        let addr = bound_rx
            .recv()
            .context("the stand-in's thread ended before binding")??;
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at this server (plain HTTP, no credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {url}\n\
             users:\n- name: netprobe\n  user: {{}}\ncontexts:\n- name: stand-in\n  context:\n    \
             cluster: stand-in\n    user: netprobe\ncurrent-context: stand-in\n",
            url = self.url()
        );
        std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes a kubeconfig that points at this server and authenticates with `token`
    /// (what `probe-agent observe` sends to an agent).
    pub fn write_kubeconfig_with_token(&self, path: &Path, token: &str) -> Result<()> {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {url}\n\
             users:\n- name: netprobe\n  user:\n    token: {token}\ncontexts:\n- name: stand-in\n  context:\n    \
             cluster: stand-in\n    user: netprobe\ncurrent-context: stand-in\n",
            url = self.url()
        );
        std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// Adds or replaces an object (ADDED or MODIFIED for watchers). A `List` (as
    /// `kubectl get -o json` prints it) applies each item.
    pub fn apply(&self, object: Value) -> Result<()> {
        if object["kind"] == "List" || object["items"].is_array() {
            for item in object["items"].as_array().into_iter().flatten() {
                self.apply(item.clone())?;
            }
            return Ok(());
        }
        let kind = kind_of(&object)?;
        let (rv, _) = self.shared.cluster().store(kind, object);
        self.shared.changed.send_replace(rv);
        Ok(())
    }

    /// Applies every `*.json` file of `dir`, in name order.
    pub fn apply_dir(&self, dir: &Path) -> Result<()> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            self.apply(value)
                .with_context(|| format!("applying {}", file.display()))?;
        }
        Ok(())
    }

    /// Deletes an object (DELETED for watchers). Deleting what is not there is an error.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<()> {
        let (_, kind, _, _, namespaced) = collection_of_kind(kind)?;
        let namespace = if namespaced { namespace } else { "" };
        let mut cluster = self.shared.cluster();
        let Some(mut object) = cluster
            .objects
            .entry(kind)
            .or_default()
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            bail!("no {kind} {namespace}/{name} to delete");
        };
        cluster.resource_version += 1;
        let rv = cluster.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        cluster
            .history
            .entry(kind)
            .or_default()
            .push((rv, "DELETED", object));
        drop(cluster);
        self.shared.changed.send_replace(rv);
        Ok(())
    }

    /// Ends every open watch stream, as a dropped connection would.
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Takes the server off the network (open watches end, new connections are refused,
    /// as when the API server or the route to it is lost) or brings it back on the same
    /// address.
    pub fn set_down(&self, down: bool) {
        self.shared.up.send_replace(!down);
        if down {
            self.drop_watches();
        }
    }

    /// The Events created so far (`events.k8s.io/v1`, as the API server stored them),
    /// oldest first.
    pub fn events(&self) -> Vec<Value> {
        let cluster = self.shared.cluster();
        let mut events: Vec<Value> = cluster
            .objects
            .get("Event")
            .map(|events| events.values().cloned().collect())
            .unwrap_or_default();
        events.sort_by_key(|event| {
            event["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|rv| rv.parse::<u64>().ok())
        });
        events
    }

    /// Registers a bearer token for `user` in `groups` (TokenReview authenticates it).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let groups = groups.iter().map(ToString::to_string).collect();
        self.shared
            .cluster()
            .tokens
            .insert(token.to_string(), (user.to_string(), groups, false));
    }

    /// Makes a registered token expired: TokenReview refuses it from now on.
    pub fn expire_token(&self, token: &str) {
        if let Some(entry) = self.shared.cluster().tokens.get_mut(token) {
            entry.2 = true;
        }
    }

    /// Lets a user or a group (`system:serviceaccounts:monitoring`) `get` these
    /// non-resource URLs, as a ClusterRole with `nonResourceURLs` bound to it does.
    pub fn grant(&self, subject: &str, paths: &[&str]) {
        self.shared
            .cluster()
            .grants
            .entry(subject.to_string())
            .or_default()
            .extend(paths.iter().map(ToString::to_string));
    }

    /// How many TokenReviews and SubjectAccessReviews were asked for so far.
    pub fn reviews(&self) -> (usize, usize) {
        let cluster = self.shared.cluster();
        let count = |path: &str| {
            cluster
                .requests
                .iter()
                .filter(|(method, line)| method == "POST" && line.split('?').next() == Some(path))
                .count()
        };
        (count(TOKEN_REVIEWS), count(ACCESS_REVIEWS))
    }

    /// Sends what `pods/{name}/proxy` asks of pod `namespace/name` to `addr` (whatever
    /// port the request names): simulated nodes' agents listen on loopback ports, not
    /// on their pods' IPs.
    pub fn route_pod(&self, namespace: &str, name: &str, addr: SocketAddr) {
        let key = (namespace.to_string(), name.to_string());
        self.shared.cluster().proxy_routes.insert(key, addr);
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<RequestLine> {
        self.shared.cluster().requests.clone()
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.drop_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn kind_of(object: &Value) -> Result<&'static str> {
    let kind = object["kind"]
        .as_str()
        .context("object without a \"kind\"")?;
    Ok(collection_of_kind(kind)?.1)
}

fn collection_of_kind(
    kind: &str,
) -> Result<(&'static str, &'static str, &'static str, &'static str, bool)> {
    COLLECTIONS
        .into_iter()
        .find(|c| c.1 == kind)
        .with_context(|| format!("the stand-in does not serve {kind}"))
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&meta["namespace"]), text(&meta["name"]))
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    {
        let line = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let request = (method.to_string(), line.to_string());
        shared.cluster().requests.push(request);
    }
    if method == Method::POST && (uri.path() == TOKEN_REVIEWS || uri.path() == ACCESS_REVIEWS) {
        return review(&shared, uri.path(), &body);
    }
    if method == Method::POST {
        return create(&shared, uri.path(), &body);
    }
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "read-only stand-in",
        );
    }
    if pods::proxy_request(uri.path()).is_some() {
        return pods::proxy(&shared, uri.path(), uri.query(), &headers).await;
    }
    // A namespace's collection lists (not watches) that namespace's objects.
    let (collection, namespace) = match namespaced_collection(uri.path()) {
        Some((collection, namespace)) => (collection, Some(namespace)),
        None => (uri.path().to_string(), None),
    };
    let Some(&(_, kind, list_kind, api_version, _)) =
        COLLECTIONS.iter().find(|c| c.0 == collection)
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the stand-in does not serve this path",
        );
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let cluster = shared.cluster();
        let selector = query.get("labelSelector").map_or("", String::as_str);
        let items: Vec<&Value> = cluster
            .objects
            .get(kind)
            .into_iter()
            .flat_map(|objects| objects.values())
            .filter(|o| namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns))
            .filter(|o| pods::selects(selector, &o["metadata"]["labels"]))
            .collect();
        let body = json!({
            "kind": list_kind, "apiVersion": api_version,
            "metadata": {"resourceVersion": cluster.resource_version.to_string()},
            "items": items,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let namespace = namespace.map(str::to_string);
    let stream = watch_stream(shared, kind, namespace, since, timeout);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `POST /api/v1/namespaces/{ns}/{resource}` or `/apis/{group}/{version}/namespaces/{ns}/{resource}`:
/// stores the object as a real API server does (the name from `generateName` if need be,
/// uid and resourceVersion set; a taken name is 409) and answers 201 with it.
fn create(shared: &Shared, path: &str, body: &[u8]) -> Response {
    let Some((collection, namespace)) = namespaced_collection(path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the stand-in does not serve this path",
        );
    };
    let Some(&(_, kind, _, api_version, true)) = COLLECTIONS.iter().find(|c| c.0 == collection)
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the stand-in does not serve this path",
        );
    };
    let mut object: Value = match serde_json::from_slice(body) {
        Ok(object @ Value::Object(_)) => object,
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not a JSON object",
            );
        }
    };
    if object["kind"] != kind || object["apiVersion"] != api_version {
        let message = format!("this collection holds {api_version} {kind}");
        return status(StatusCode::BAD_REQUEST, "BadRequest", &message);
    }
    match object["metadata"]["namespace"].as_str() {
        None => object["metadata"]["namespace"] = json!(namespace),
        Some(given) if given == namespace => {}
        Some(_) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            );
        }
    }
    let mut cluster = shared.cluster();
    let name = match (
        object["metadata"]["name"].as_str(),
        object["metadata"]["generateName"].as_str(),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) => format!("{prefix}{:05x}", cluster.resource_version + 1),
        _ => {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name or metadata.generateName is required",
            );
        }
    };
    let taken = cluster
        .objects
        .get(kind)
        .is_some_and(|objects| objects.contains_key(&(namespace.to_string(), name.clone())));
    if taken {
        let message = format!("{kind} {name:?} already exists");
        return status(StatusCode::CONFLICT, "AlreadyExists", &message);
    }
    object["metadata"]["name"] = json!(name);
    object["metadata"]["uid"] = json!(format!(
        "00000000-0000-4000-8000-{:012x}",
        cluster.resource_version + 1
    ));
    let (rv, object) = cluster.store(kind, object);
    drop(cluster);
    shared.changed.send_replace(rv);
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        object.to_string(),
    )
        .into_response()
}

/// Answers a TokenReview or a SubjectAccessReview the way an API server does: the
/// object sent back (201) with its `status` filled in.
fn review(shared: &Shared, path: &str, body: &[u8]) -> Response {
    let Ok(mut object @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a JSON object",
        );
    };
    let cluster = shared.cluster();
    let spec = &object["spec"];
    let answer = if path == TOKEN_REVIEWS {
        let token = spec["token"].as_str().unwrap_or_default();
        match cluster.tokens.get(token) {
            Some((_, _, true)) => json!({
                "authenticated": false,
                "error": "[invalid bearer token, service account token has expired]",
            }),
            Some((user, groups, false)) => json!({
                "authenticated": true,
                "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups},
            }),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        }
    } else {
        let url = spec["nonResourceAttributes"]["path"]
            .as_str()
            .unwrap_or_default();
        let verb = spec["nonResourceAttributes"]["verb"]
            .as_str()
            .unwrap_or_default();
        let user = spec["user"].as_str().unwrap_or_default().to_string();
        let groups = spec["groups"].as_array().into_iter().flatten();
        let subjects = std::iter::once(user.clone())
            .chain(groups.filter_map(|g| g.as_str().map(ToString::to_string)));
        let allowed = verb == "get"
            && subjects
                .filter_map(|subject| cluster.grants.get(&subject))
                .flatten()
                .any(|granted| match granted.strip_suffix('*') {
                    Some(prefix) => url.starts_with(prefix),
                    None => url == granted,
                });
        if allowed {
            json!({"allowed": true, "reason": "allowed by the stand-in's grants"})
        } else {
            json!({"allowed": false, "reason": ""})
        }
    };
    object["status"] = answer;
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        object.to_string(),
    )
        .into_response()
}

/// The cluster-wide collection path and the namespace of a namespaced collection path
/// (`/apis/g/v/namespaces/ns/things` → `/apis/g/v/things`, `ns`).
fn namespaced_collection(path: &str) -> Option<(String, &str)> {
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let (namespace, resource) = rest.split_once('/')?;
    if namespace.is_empty() || resource.is_empty() || resource.contains('/') {
        return None;
    }
    Some((format!("{prefix}/{resource}"), namespace))
}

/// The events of `kind` (in `namespace`, if one) after `since`, then new ones as they
/// happen, until the timeout, a cut, the server going down or stopping. (A watch opened
/// just as the server goes down must end too, or the graceful shutdown waits for it.)
fn watch_stream(
    shared: Arc<Shared>,
    kind: &'static str,
    namespace: Option<String>,
    since: u64,
    timeout: Duration,
) -> impl futures_core::Stream<Item = Result<String, std::convert::Infallible>> {
    let mut changed = shared.changed.subscribe();
    let mut cut = shared.cut.subscribe();
    cut.mark_unchanged();
    let mut up = shared.up.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    async_stream::stream! {
        let mut sent = since;
        loop {
            let from = sent;
            let lines: Vec<String> = {
                let cluster = shared.cluster();
                cluster
                    .history
                    .get(kind)
                    .into_iter()
                    .flatten()
                    .filter(|(rv, _, _)| *rv > from)
                    .inspect(|(rv, _, _)| sent = sent.max(*rv))
                    .filter(|(_, _, object)| {
                        namespace.as_deref().is_none_or(|ns| object["metadata"]["namespace"] == ns)
                    })
                    .map(|(_, event, object)| {
                        format!("{}\n", json!({"type": event, "object": object}))
                    })
                    .collect()
            };
            for line in lines {
                yield Ok(line);
            }
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { break },
                _ = cut.changed() => break,
                _ = up.wait_for(|up| !*up) => break,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

/// A socket bound to a free loopback port with SO_REUSEPORT and never listening: it holds
/// the port for [`listen_on`], whose listeners share it, and refuses nothing by itself.
fn reserve_port() -> Result<(std::os::fd::OwnedFd, SocketAddr)> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, setsockopt, socket,
        sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    let any_port = SockaddrIn::new(127, 0, 0, 1, 0);
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &any_port)?;
    let bound: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok((fd, SocketAddr::from((bound.ip(), bound.port()))))
}

/// A listener on the port [`reserve_port`] holds.
fn listen_on(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
