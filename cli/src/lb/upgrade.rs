//! Upgraded requests through the load balancer (`kubectl exec`'s
//! WebSocket): the request head is written to a master over TLS as is, the
//! master's answer head is returned to the client, and on `101` the two
//! connections are spliced until either side closes.

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::{Lb, status};

/// The master's answer head as response headers.
fn headers_of(head: &str) -> Vec<(HeaderName, HeaderValue)> {
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((
                HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
                HeaderValue::from_str(v.trim()).ok()?,
            ))
        })
        .collect()
}

/// Connects to master `addr` over TLS (HTTP/1.1).
async fn dial(
    lb: &Lb,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let name = keel_proto::pki::addr_server_name(addr)?;
    tokio_rustls::TlsConnector::from(lb.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

pub async fn relay(lb: &Lb, mut parts: Parts) -> Response {
    let upgrade = parts.extensions.remove::<OnUpgrade>();
    let path_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut last = String::from("no master");
    for i in lb.order() {
        let addr = &lb.masters[i];
        let mut s = match dial(lb, addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(master = %addr, error = %e, "master unreachable; trying the next");
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let mut head = format!("{} {path_query} HTTP/1.1\r\nHost: {addr}\r\n", parts.method);
        for (k, v) in &parts.headers {
            if k != "host" {
                head.push_str(&format!(
                    "{k}: {}\r\n",
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
        }
        head.push_str("\r\n");
        if let Err(e) = s.write_all(head.as_bytes()).await {
            last = format!("{addr}: {e}");
            continue;
        }
        let (code, answer, rest) = match keel_proto::https::read_head(&mut s).await {
            Ok(h) => h,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut resp = Response::builder().status(code);
        for (k, v) in headers_of(&answer) {
            if code == StatusCode::SWITCHING_PROTOCOLS || k != "transfer-encoding" {
                resp = resp.header(k, v);
            }
        }
        if code != StatusCode::SWITCHING_PROTOCOLS {
            // An error answer: its body, as much of it as comes soon.
            let body = keel_proto::https::read_short_body(&mut s, rest).await;
            return resp.body(Body::from(body)).unwrap_or_else(|e| {
                status(StatusCode::BAD_GATEWAY, "InternalError", e.to_string())
            });
        }
        let Some(upgrade) = upgrade else {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "this connection cannot be upgraded".into(),
            );
        };
        let addr = addr.clone();
        tokio::spawn(async move {
            let Ok(client) = upgrade.await else { return };
            let mut client = TokioIo::new(client);
            if !rest.is_empty() && client.write_all(&rest).await.is_err() {
                return;
            }
            let r = tokio::io::copy_bidirectional(&mut client, &mut s).await;
            tracing::debug!(master = %addr, result = ?r, "upgraded connection ended");
        });
        return resp
            .body(Body::empty())
            .unwrap_or_else(|e| status(StatusCode::BAD_GATEWAY, "InternalError", e.to_string()));
    }
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        format!("no master answered: {last}"),
    )
}
