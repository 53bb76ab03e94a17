//! The `exec` subresource (`GET|POST /api/v1/namespaces/{ns}/pods/{name}
//! /exec?command=...&container=&stdin=&stdout=&stderr=&tty=`), which
//! `kubectl exec` opens as a WebSocket (`v5.channel.k8s.io`/`v4`). As the
//! Kubernetes API server does for the kubelet, the master checks the pod
//! and container, forwards the upgrade request to the agent of the pod's
//! node (mutual TLS), answers the client with the agent's `101` (its
//! `Sec-WebSocket-Accept` is computed from the client's own key, which is
//! forwarded as is), and then copies bytes both ways until either side
//! closes. The channel protocol itself is the agent's (`keel_agent::exec`).
//! RBAC sees `create pods/exec`, for GET as for POST. SPDY, kubectl's
//! older transport, is not served: a request without a WebSocket upgrade
//! is a 400.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keel_proto::api::Pod;
use keel_proto::pki;
use tokio::io::AsyncWriteExt;

use super::node_link;
use crate::error::ApiError;
use crate::registry::Registry;
use keel_proto::percent_encode as encode;

/// The request headers forwarded to the agent with the upgrade.
const FORWARDED: [&str; 3] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
];

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
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(upgrade) = upgrade.filter(|_| websocket) else {
        return Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not served",
        ));
    };
    let (mut s, addr) = node_link::dial(reg, creds, &pod).await?;
    let unreachable = |e: String| node_link::unreachable(&pod.spec.node_name, &addr, e);
    let mut req = format!(
        "GET /exec/{}/{}/{}?{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
        encode(ns),
        encode(name),
        encode(&container),
    );
    for h in FORWARDED {
        for v in headers.get_all(h) {
            let v = v
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("header {h} is not printable ASCII")))?;
            req.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (code, head, rest) = node_link::read_head(&mut s, &unreachable).await?;
    if code != 101 {
        return Err(node_link::agent_error(code, rest, &mut s).await);
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    for name in ["Sec-WebSocket-Accept", "Sec-WebSocket-Protocol"] {
        if let Some(v) = keel_proto::https::header(&head, name)
            && let Ok(v) = HeaderValue::from_str(v)
        {
            h.insert(name, v);
        }
    }
    let pod_name = format!("{ns}/{name}");
    tokio::spawn(async move {
        let client = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(pod = %pod_name, error = %e, "exec client upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        // What the agent sent right after its 101 goes first.
        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
            return;
        }
        match tokio::io::copy_bidirectional(&mut client, &mut s).await {
            Ok((up, down)) => tracing::info!(pod = %pod_name, up, down, "exec session ended"),
            Err(e) => tracing::info!(pod = %pod_name, error = %e, "exec session cut"),
        }
    });
    Ok(resp)
}
