//! The `log` subresource (`GET /api/v1/namespaces/{ns}/pods/{name}/log
//! ?container=&follow=&tailLines=`): the master finds the pod's node, reads
//! the agent's endpoint from the Node's addresses (type `KeelAgent`) and
//! streams the agent's `/containerLogs/...` answer back, as the Kubernetes
//! API server proxies to the kubelet.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_proto::api::{Node, Pod};
use keel_proto::pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::registry::Registry;
use keel_proto::percent_encode as encode;

/// The address type under which agents publish their endpoint.
const AGENT_ADDRESS_TYPE: &str = "KeelAgent";

/// A connection to an agent: TLS, or plain TCP with `--insecure`.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Serves `GET .../pods/{name}/log` (routed by `route::parse`), dialing the
/// agent with `creds` (the master's own certificate).
pub async fn serve(
    reg: &Registry,
    creds: &pki::Credentials,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pod: Pod = reg.get_t(ns, name).await?;
    let names: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let container = match q.get("container").map(String::as_str) {
        Some(c) if !c.is_empty() => {
            if !names.contains(&c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.to_string()
        }
        _ if names.len() == 1 => names[0].to_string(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    let mut query = Vec::new();
    if let Some(t) = q.get("tailLines") {
        let n: u64 = t
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid tailLines {t:?}")))?;
        query.push(format!("tailLines={n}"));
    }
    if matches!(q.get("follow").map(String::as_str), Some("true" | "1")) {
        query.push("follow=true".into());
    }
    if matches!(q.get("previous").map(String::as_str), Some("true" | "1")) {
        query.push("previous=true".into());
    }
    if pod.spec.node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} is not scheduled to a node yet"
        )));
    }
    let node: Node = reg.get_t("", &pod.spec.node_name).await?;
    let Some(addr) = node
        .status
        .addresses
        .iter()
        .find(|a| a.type_ == AGENT_ADDRESS_TYPE)
        .map(|a| a.address.clone())
    else {
        return Err(ApiError::unavailable(format!(
            "node {} has no agent endpoint",
            pod.spec.node_name
        )));
    };
    let path = format!(
        "/containerLogs/{}/{}/{}?{}",
        encode(ns),
        encode(name),
        encode(&container),
        query.join("&")
    );
    let unreachable = |e: String| {
        ApiError::unavailable(format!(
            "cannot reach the agent of node {} at {addr}: {e}",
            pod.spec.node_name
        ))
    };
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&addr))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    // Mutual TLS with the master's certificate; the agent must present the
    // node certificate of the node the pod is bound to.
    let mut s: Box<dyn Stream> = match &creds.tls {
        Some(t) => {
            let cfg = t.rustls_client().map_err(|e| unreachable(e.to_string()))?;
            let name =
                rustls::pki_types::ServerName::try_from(pki::node_server_name(&pod.spec.node_name))
                    .map_err(|e| unreachable(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
            Box::new(
                tokio::time::timeout(Duration::from_secs(3), tls.connect(name, tcp))
                    .await
                    .map_err(|_| unreachable("TLS handshake timed out".into()))?
                    .map_err(|e| unreachable(format!("TLS: {e}")))?,
            )
        }
        None => Box::new(tcp),
    };
    // HTTP/1.0: the agent closes the connection after the body, which
    // delimits it, so a followed log streams until either side stops.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 << 10 {
            return Err(unreachable("malformed answer".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if n == 0 {
            return Err(unreachable("connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(502);
    let rest = buf[head_end..].to_vec();
    if code != 200 {
        let mut body = rest;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut chunk = [0u8; 4096];
            while body.len() < 64 << 10 {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(match code {
            404 => ApiError::new(404, "NotFound", msg),
            c => ApiError::new(c, "InternalError", msg),
        });
    }
    let stream = futures::stream::unfold((Some(rest), s), |(first, mut s)| async move {
        if let Some(f) = first.filter(|f| !f.is_empty()) {
            return Some((Ok::<Bytes, std::io::Error>(Bytes::from(f)), (None, s)));
        }
        let mut chunk = vec![0u8; 16 << 10];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), (None, s)))
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response())
}
