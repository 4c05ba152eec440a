//! What the stand-in does for pods beyond list and watch: label selectors on lists (as
//! `kubectl get pods -l` asks) and the `pods/{name}/proxy` subresource, which forwards a
//! request to the pod's port the way the API server does for `observe --cluster`.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Shared, status};

/// Whether `labels` (an object's `metadata.labels`) match a label selector: terms
/// `k=v`, `k==v`, `k!=v`, `k` and `!k`, all of them (set-based terms are not served).
pub(super) fn selects(selector: &str, labels: &Value) -> bool {
    let label = |key: &str| labels.get(key.trim()).and_then(Value::as_str);
    selector
        .split(',')
        .map(str::trim)
        .filter(|term| !term.is_empty())
        .all(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                label(key) != Some(value.trim())
            } else if let Some((key, value)) = term.split_once('=') {
                let value = value.strip_prefix('=').unwrap_or(value);
                label(key) == Some(value.trim())
            } else if let Some(key) = term.strip_prefix('!') {
                label(key).is_none()
            } else {
                label(term).is_some()
            }
        })
}

/// `(namespace, pod, port, rest)` of `/api/v1/namespaces/{ns}/pods/[scheme:]{pod}[:port]/proxy{rest}`.
pub(super) fn proxy_request(path: &str) -> Option<(&str, &str, Option<&str>, bool, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once("/pods/")?;
    let (target, rest) = rest.split_once("/proxy")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let (https, target) = match target.split_once(':') {
        Some(("https", target)) => (true, target),
        Some(("http", target)) => (false, target),
        _ => (false, target),
    };
    let (pod, port) = match target.split_once(':') {
        Some((pod, port)) => (pod, Some(port)),
        None => (target, None),
    };
    Some((namespace, pod, port, https, rest))
}

/// Forwards `GET …/pods/{pod}/proxy{rest}?{query}` to the pod: to the address a test
/// routed it to ([`super::KubeStandIn::route_pod`]), else its `status.podIP` and the port
/// asked. As the API server does, the caller's `Authorization` is not passed on (other
/// headers are: [`PASSED`], what `observe --cluster` sends the agent), the
/// answer (status, type, body, streamed) is passed back as it is, and a pod that cannot
/// be reached is a 503 Status.
pub(super) async fn proxy(
    shared: &Shared,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let Some((namespace, pod, port, https, rest)) = proxy_request(path) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "not a pods/proxy path");
    };
    let target = {
        let cluster = shared.cluster();
        let key = (namespace.to_string(), pod.to_string());
        let Some(object) = cluster.objects.get("Pod").and_then(|pods| pods.get(&key)) else {
            let message = format!("pods \"{pod}\" not found");
            return status(StatusCode::NOT_FOUND, "NotFound", &message);
        };
        let routed = cluster.proxy_routes.get(&key).copied();
        routed.or_else(|| {
            let ip = object["status"]["podIP"].as_str()?.parse().ok()?;
            Some(SocketAddr::new(ip, port.unwrap_or("80").parse().ok()?))
        })
    };
    let unavailable = |message: String| {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &message,
        )
    };
    let Some(target) = target else {
        return unavailable(format!("pod {pod} has no IP address"));
    };
    if https {
        return unavailable("the stand-in proxies plain HTTP only".into());
    }
    let path_and_query = match (rest, query) {
        ("", Some(query)) => format!("/?{query}"),
        ("", None) => "/".to_string(),
        (rest, Some(query)) => format!("{rest}?{query}"),
        (rest, None) => rest.to_string(),
    };
    match forward(target, &path_and_query, headers).await {
        Ok(response) => response,
        Err(e) => unavailable(format!(
            "error trying to reach service: dial tcp {target}: {e}"
        )),
    }
}

/// The request headers the stand-in passes on (a real API server passes all but its own).
pub(super) const PASSED: [&str; 2] = ["accept", "x-netprobe-authorization"];

async fn forward(
    target: SocketAddr,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Response, String> {
    let connect = tokio::net::TcpStream::connect(target);
    let stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "i/o timeout".to_string())?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
            _ => format!("connect: {e}"),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::get(path_and_query).header(header::HOST, target.to_string());
    for name in PASSED.map(HeaderName::from_static) {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let request = request.body(Body::empty()).map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = answer.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    let passed: HashMap<_, _> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name == header::CONTENT_TYPE || *name == header::WWW_AUTHENTICATE)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    response.headers_mut().extend(passed);
    Ok(response.into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors_match_as_the_api_server_does() {
        let labels = json!({"app.kubernetes.io/name": "netprobe", "tier": "agent"});
        assert!(selects("", &labels));
        assert!(selects("app.kubernetes.io/name=netprobe", &labels));
        assert!(selects("app.kubernetes.io/name==netprobe,tier", &labels));
        assert!(selects("tier!=web,!missing", &labels));
        assert!(!selects(
            "app.kubernetes.io/name=netprobe,tier=web",
            &labels
        ));
        assert!(!selects("missing", &labels));
        assert!(!selects("!tier", &labels));
        assert!(!selects("tier=agent", &Value::Null));
    }

    #[test]
    fn proxy_paths_name_the_pod_port_and_rest() {
        assert_eq!(
            proxy_request("/api/v1/namespaces/netprobe/pods/agent-a:9810/proxy/v1/verdicts"),
            Some(("netprobe", "agent-a", Some("9810"), false, "/v1/verdicts"))
        );
        assert_eq!(
            proxy_request("/api/v1/namespaces/ns/pods/https:agent-b:9443/proxy"),
            Some(("ns", "agent-b", Some("9443"), true, ""))
        );
        assert_eq!(
            proxy_request("/api/v1/namespaces/ns/pods/agent-c/proxy/healthz"),
            Some(("ns", "agent-c", None, false, "/healthz"))
        );
        assert_eq!(proxy_request("/api/v1/namespaces/ns/pods/agent/log"), None);
        assert_eq!(proxy_request("/api/v1/pods"), None);
    }
}
