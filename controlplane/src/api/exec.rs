//! The `exec` subresource (`GET|POST /api/v1/namespaces/{ns}/pods/{name}
//! /exec?command=...&container=&stdin=&stdout=&stderr=&tty=`), which
//! `kubectl exec` opens as a WebSocket (`v5.channel.k8s.io`/`v4`). As the
//! Kubernetes API server does for the kubelet, the master checks the pod
//! and container, forwards the upgrade request to the agent of the pod's
//! node and splices the two connections (`node_link::relay_upgrade`).
//! The channel protocol itself is the agent's (`keel_agent::exec`). RBAC
//! sees `create pods/exec`, for GET as for POST. SPDY, kubectl's older
//! transport, is not served: a request without a WebSocket upgrade is a 400.

use axum::http::HeaderMap;
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use keel_proto::api::Pod;
use keel_proto::pki;

use super::node_link;
use crate::error::ApiError;
use crate::registry::Registry;
use keel_proto::percent_encode as encode;

/// Whether a query value turns a stream on.
fn on(q: &str, key: &str) -> bool {
    form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == key && matches!(&*v, "true" | "1"))
}

/// Serves an exec request for pod `ns/name`: `query` is the raw query
/// string (it repeats `command`), `upgrade` the client connection's
/// upgrade once the `101` is sent.
pub async fn serve(
    reg: &Registry,
    creds: &pki::Credentials,
    ns: &str,
    name: &str,
    query: &str,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    let mut container = None;
    let mut command = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "container" => container = Some(v.into_owned()),
            "command" => command = true,
            _ => {}
        }
    }
    if !command {
        return Err(ApiError::bad_request("you must specify a command to run"));
    }
    if !["stdin", "stdout", "stderr"].iter().any(|k| on(query, k)) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let pod: Pod = reg.get_t(ns, name).await?;
    let container = node_link::container_of(&pod, container.as_deref())?;
    // The request's own errors first: kubectl retries a failed WebSocket
    // upgrade over SPDY, and its user should see why the first failed.
    let Some(upgrade) = node_link::websocket(headers, upgrade) else {
        return Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not served",
        ));
    };
    let path = format!(
        "/exec/{}/{}/{}?{query}",
        encode(ns),
        encode(name),
        encode(&container),
    );
    node_link::relay_upgrade(
        reg,
        creds,
        &pod,
        &node_link::WEBSOCKET,
        &path,
        headers,
        upgrade,
        "exec",
    )
    .await
}
