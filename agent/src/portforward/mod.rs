//! The agent's port-forward endpoint (kubelet's `/portForward/{ns}/{pod}`),
//! which the masters proxy `kubectl port-forward` to: a WebSocket whose
//! subprotocol is `SPDY/3.1+portforward.k8s.io`, each binary message a
//! piece of a SPDY/3.1 session ([`spdy`], [`header_block`]) in which the
//! client opens a pair of streams per forwarded connection ([`session`]).
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
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tracing::Instrument;

use crate::Ctx;

/// The WebSocket subprotocol: SPDY/3.1 tunneled, port-forward v1 inside.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// `GET /portforward/{namespace}/{pod}` with a WebSocket upgrade.
pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod)): Path<(String, String)>,
    ws: WebSocketUpgrade,
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
    let ws = ws.protocols([PROTOCOL]);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            format!("port-forward needs the WebSocket subprotocol {PROTOCOL}"),
        )
            .into_response();
    }
    let target = session::Target {
        pod: key.clone(),
        uid: sandbox.id.clone(),
        ip: sandbox.ip,
    };
    let span = tracing::info_span!("port_forward", pod = %key);
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
