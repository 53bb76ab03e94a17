//! The master's link to a pod's agent, shared by the subresources the API
//! server proxies to the kubelet (`log`, `exec`, `portforward`): which
//! container a request means, a connection to the agent of the pod's node
//! (its address from the Node's `KeelAgent` address, mutual TLS with the
//! master's certificate and the node's server name), the agent's answer
//! head and errors, and the relay of a client's upgrade (WebSocket, or
//! SPDY for port-forward) to the agent.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keel_proto::api::{Node, Pod};
use keel_proto::pki;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::registry::Registry;

/// The address type under which agents publish their endpoint.
const AGENT_ADDRESS_TYPE: &str = "KeelAgent";

/// A connection to an agent: TLS, or plain TCP with `--insecure`.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The container a request names (`container=`), or the pod's only one.
pub fn container_of(pod: &Pod, asked: Option<&str>) -> Result<String, ApiError> {
    let name = &pod.metadata.name;
    let names: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    match asked {
        Some(c) if !c.is_empty() => {
            if !names.contains(&c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            Ok(c.to_string())
        }
        _ if names.len() == 1 => Ok(names[0].to_string()),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

/// Why the agent of `node` at `addr` could not be used.
pub fn unreachable(node: &str, addr: &str, e: String) -> ApiError {
    ApiError::unavailable(format!(
        "cannot reach the agent of node {node} at {addr}: {e}"
    ))
}

/// Connects to the agent of `pod`'s node, with `creds` (the master's own
/// certificate); returns the stream and the agent's address.
pub async fn dial(
    reg: &Registry,
    creds: &pki::Credentials,
    pod: &Pod,
) -> Result<(Box<dyn Stream>, String), ApiError> {
    let node_name = &pod.spec.node_name;
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {} is not scheduled to a node yet",
            pod.metadata.name
        )));
    }
    let node: Node = reg.get_t("", node_name).await?;
    let Some(addr) = node
        .status
        .addresses
        .iter()
        .find(|a| a.type_ == AGENT_ADDRESS_TYPE)
        .map(|a| a.address.clone())
    else {
        return Err(ApiError::unavailable(format!(
            "node {node_name} has no agent endpoint"
        )));
    };
    let fail = |e: String| unreachable(node_name, &addr, e);
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&addr))
        .await
        .map_err(|_| fail("connect timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    // Mutual TLS with the master's certificate; the agent must present the
    // node certificate of the node the pod is bound to.
    let s: Box<dyn Stream> = match &creds.tls {
        Some(t) => {
            let cfg = t.rustls_client().map_err(|e| fail(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(pki::node_server_name(node_name))
                .map_err(|e| fail(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
            Box::new(
                tokio::time::timeout(Duration::from_secs(3), tls.connect(name, tcp))
                    .await
                    .map_err(|_| fail("TLS handshake timed out".into()))?
                    .map_err(|e| fail(format!("TLS: {e}")))?,
            )
        }
        None => Box::new(tcp),
    };
    Ok((s, addr))
}

/// Reads the agent's answer head: its status code, the head itself, and
/// the bytes already read past it.
pub async fn read_head(
    s: &mut Box<dyn Stream>,
    unreachable: &(dyn Fn(String) -> ApiError + Sync),
) -> Result<(u16, String, Vec<u8>), ApiError> {
    keel_proto::https::read_head(s)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// The agent's error answer (`code`, body starting with `rest`) as the
/// API's error.
pub async fn agent_error(code: u16, rest: Vec<u8>, s: &mut Box<dyn Stream>) -> ApiError {
    let body = keel_proto::https::read_short_body(s, rest).await;
    let msg = String::from_utf8_lossy(&body).trim().to_string();
    match code {
        404 => ApiError::new(404, "NotFound", msg),
        400 => ApiError::bad_request(msg),
        c => ApiError::new(c, "InternalError", msg),
    }
}

/// An upgrade the master relays: how it is asked for, which request
/// headers go to the agent and which of its answer's come back.
pub struct Upgrade {
    method: &'static str,
    protocol: &'static str,
    forward: &'static [&'static str],
    answer: &'static [&'static str],
}

/// A WebSocket (exec, port-forward).
pub const WEBSOCKET: Upgrade = Upgrade {
    method: "GET",
    protocol: "websocket",
    forward: &[
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
    ],
    answer: &["Sec-WebSocket-Accept", "Sec-WebSocket-Protocol"],
};

/// A plain SPDY/3.1 upgrade (kubectl's port-forward fallback).
pub const SPDY: Upgrade = Upgrade {
    method: "POST",
    protocol: "SPDY/3.1",
    forward: &["x-stream-protocol-version"],
    answer: &["X-Stream-Protocol-Version"],
};

/// Whether the request asks for an upgrade of `kind`.
pub fn wants(kind: &Upgrade, headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(kind.protocol))
}

/// The client's upgrade, if the request asks for `kind`.
pub fn asks(kind: &Upgrade, headers: &HeaderMap, upgrade: Option<OnUpgrade>) -> Option<OnUpgrade> {
    upgrade.filter(|_| wants(kind, headers))
}

/// The client's upgrade, if the request asks for a WebSocket.
pub fn websocket(headers: &HeaderMap, upgrade: Option<OnUpgrade>) -> Option<OnUpgrade> {
    asks(&WEBSOCKET, headers, upgrade)
}

/// Relays a client's upgrade to `path` (with its query) on the agent of
/// `pod`'s node, as the API server does to the kubelet: the upgrade request
/// goes to the agent with the client's headers of that `kind` (so for a
/// WebSocket the agent's `Sec-WebSocket-Accept`, computed from the client's
/// own key, answers the client), the agent's `101` is the client's answer,
/// and then bytes are copied both ways until either side closes. `what`
/// names the session in logs.
#[allow(clippy::too_many_arguments)]
pub async fn relay_upgrade(
    reg: &Registry,
    creds: &pki::Credentials,
    pod: &Pod,
    kind: &Upgrade,
    path: &str,
    headers: &HeaderMap,
    upgrade: OnUpgrade,
    what: &'static str,
) -> Result<Response, ApiError> {
    let (mut s, addr) = dial(reg, creds, pod).await?;
    let fail = |e: String| unreachable(&pod.spec.node_name, &addr, e);
    let mut req = format!(
        "{} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: {}\r\nContent-Length: 0\r\n",
        kind.method, kind.protocol
    );
    for &h in kind.forward {
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
        .map_err(|e| fail(e.to_string()))?;
    let (code, head, rest) = read_head(&mut s, &fail).await?;
    if code != 101 {
        return Err(agent_error(code, rest, &mut s).await);
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(kind.protocol));
    for &name in kind.answer {
        if let Some(v) = keel_proto::https::header(&head, name)
            && let Ok(v) = HeaderValue::from_str(v)
        {
            h.insert(name, v);
        }
    }
    let pod_name = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
    tokio::spawn(async move {
        let client = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(pod = %pod_name, what, error = %e, "client upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        // What the agent sent right after its 101 goes first.
        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
            return;
        }
        match tokio::io::copy_bidirectional(&mut client, &mut s).await {
            Ok((up, down)) => tracing::info!(pod = %pod_name, what, up, down, "session ended"),
            Err(e) => tracing::info!(pod = %pod_name, what, error = %e, "session cut"),
        }
    });
    Ok(resp)
}
