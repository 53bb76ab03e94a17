//! The `log` subresource (`GET /api/v1/namespaces/{ns}/pods/{name}/log
//! ?container=&follow=&tailLines=`): the master finds the pod's node, reads
//! the agent's endpoint from the Node's addresses (type `KeelAgent`) and
//! streams the agent's `/containerLogs/...` answer back, as the Kubernetes
//! API server proxies to the kubelet.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_proto::api::Pod;
use keel_proto::pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::node_link;
use crate::error::ApiError;
use crate::registry::Registry;
use keel_proto::percent_encode as encode;

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
    let container = node_link::container_of(&pod, q.get("container").map(String::as_str))?;
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
    let path = format!(
        "/containerLogs/{}/{}/{}?{}",
        encode(ns),
        encode(name),
        encode(&container),
        query.join("&")
    );
    let (mut s, addr) = node_link::dial(reg, creds, &pod).await?;
    let unreachable = |e: String| node_link::unreachable(&pod.spec.node_name, &addr, e);
    // HTTP/1.0: the agent closes the connection after the body, which
    // delimits it, so a followed log streams until either side stops.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (code, _head, rest) = node_link::read_head(&mut s, &unreachable).await?;
    if code != 200 {
        return Err(node_link::agent_error(code, rest, &mut s).await);
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
