//! The agent's port-forward endpoint (kubelet's `/portForward/{ns}/{pod}`),
//! which the masters proxy `kubectl port-forward` to: a WebSocket whose
//! subprotocol is `SPDY/3.1+portforward.k8s.io`, each binary message a
//! piece of a SPDY/3.1 session ([`spdy`], [`header_block`]) in which the
//! client opens a pair of streams per forwarded connection ([`session`]).
//! kubectl's fallback, a plain `Upgrade: SPDY/3.1` (POST, with
//! `X-Stream-Protocol-Version: portforward.k8s.io`), carries the same
//! session directly on the upgraded connection.
//! The pod's ports are dialed at the pod's address, where the agent reaches
//! them for either runtime (a loopback address for processes, the bridge
//! address for Docker containers).

pub mod header_block;
pub mod session;
#[cfg(test)]
mod session_tests;
pub mod spdy;

use std::io;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use crate::Ctx;

/// The WebSocket subprotocol: SPDY/3.1 tunneled, port-forward v1 inside.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol inside SPDY (`X-Stream-Protocol-Version`).
pub const STREAM_PROTOCOL: &str = "portforward.k8s.io";

/// Whether a request asks for a plain SPDY/3.1 upgrade.
pub fn wants_spdy(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
}

/// `GET /portforward/{namespace}/{pod}` with a WebSocket upgrade, or a
/// plain SPDY/3.1 upgrade (POST).
pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    let key = format!("{ns}/{pod}");
    let sandbox = ctx.pods.lock().expect("pods lock").get(&key).cloned();
    let Some(sandbox) = sandbox else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {key} is not running on node {}", ctx.cfg.name),
        )
            .into_response();
    };
    let target = session::Target {
        pod: key.clone(),
        uid: sandbox.id.clone(),
        ip: sandbox.ip,
    };
    let span = tracing::info_span!("port_forward", pod = %key);
    if wants_spdy(req.headers()) {
        return spdy(req, target, span);
    }
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let ws = ws.protocols([PROTOCOL]);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            format!("port-forward needs the WebSocket subprotocol {PROTOCOL}"),
        )
            .into_response();
    }
    ws.on_upgrade(move |socket| {
        let (tx, rx) = socket.split();
        // Binary messages are pieces of the SPDY byte stream; the rest is
        // WebSocket's own business (a close ends the input).
        let inbound = rx
            .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
            .filter_map(|m| {
                std::future::ready(match m {
                    Ok(Message::Binary(b)) => Some(Ok(b)),
                    Ok(_) => None,
                    Err(e) => Some(Err(io::Error::other(e))),
                })
            });
        let outbound = tx
            .sink_map_err(io::Error::other)
            .with(|b: Bytes| std::future::ready(Ok::<_, io::Error>(Message::Binary(b))));
        async move {
            tracing::info!("port-forward session started");
            session::run(Box::pin(inbound), Box::pin(outbound), target).await;
        }
        .instrument(span)
    })
}

/// Serves the session on a plain SPDY/3.1 upgrade of `req`'s connection.
fn spdy(mut req: Request, target: session::Target, span: tracing::Span) -> Response {
    let asked = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == STREAM_PROTOCOL);
    if !asked {
        return (
            StatusCode::FORBIDDEN,
            format!("port-forward speaks only the stream protocol {STREAM_PROTOCOL}"),
        )
            .into_response();
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(
        async move {
            let conn = match on.await {
                Ok(c) => TokioIo::new(c),
                Err(e) => {
                    tracing::info!(error = %e, "port-forward upgrade failed");
                    return;
                }
            };
            tracing::info!("port-forward session started (SPDY)");
            let (r, w) = tokio::io::split(conn);
            let inbound = tokio_util::io::ReaderStream::new(r);
            let outbound = futures::sink::unfold(w, |mut w, b: Bytes| async move {
                w.write_all(&b).await?;
                Ok::<_, io::Error>(w)
            });
            session::run(inbound, Box::pin(outbound), target).await;
        }
        .instrument(span),
    );
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "X-Stream-Protocol-Version",
        HeaderValue::from_static(STREAM_PROTOCOL),
    );
    resp
}
