//! The agent's log endpoint (kubelet's `/containerLogs/{ns}/{pod}/{container}`),
//! which the masters proxy `keel logs` to: the container's log file, the
//! last `tailLines` lines of it, and with `follow=true` every line written
//! after, until the client goes away or the pod is removed. Runtimes that
//! keep no log file (Docker) answer from their own log, with `previous`.
//! The same server carries the exec endpoint ([`crate::exec`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_proto::https::PeerSubject;
use keel_proto::pki;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::Ctx;
use crate::runtime::LogRequest;

/// The byte offset where the last `n` lines of `data` start.
pub fn tail_offset(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    let mut seen = 0;
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Serves the log endpoint on `listener` forever: HTTPS with the node's
/// certificate, to masters only (mutual TLS, organisation keel:masters),
/// when the agent has joined with a certificate; plain HTTP with `--insecure`.
pub async fn serve(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) {
    let creds = ctx.cfg.credentials.get();
    let live = ctx.cfg.credentials.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_log),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(crate::exec::handle),
        )
        .route(
            "/portforward/{namespace}/{pod}",
            get(crate::portforward::handle).post(crate::portforward::handle),
        )
        .with_state(ctx);
    // The certificate presented is the node's current one at each
    // handshake: the agent renews it while it runs.
    let tls = match creds.tls {
        Some(pki::TlsBundle {
            ca_pem,
            me: Some(_),
        }) => match pki::server_config_live(&ca_pem, Arc::new(live), true) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(error = %e, "log endpoint: bad TLS material; not serving");
                return;
            }
        },
        _ => None,
    };
    let app = if tls.is_some() {
        app.layer(axum::middleware::from_fn(only_masters))
    } else {
        app
    };
    let (_running, stop) = tokio::sync::watch::channel(false);
    if let Err(e) = keel_proto::https::serve(listener, app, tls, stop).await {
        tracing::error!(error = %e, "log endpoint stopped");
    }
}

/// Only masters read container logs and exec into containers (they proxy
/// `keel logs` and `kubectl exec` after their own authorization); any other
/// certificate of the cluster gets 403.
async fn only_masters(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match req.extensions().get::<PeerSubject>() {
        Some(p) if p.org == pki::ORG_MASTERS => next.run(req).await,
        Some(p) => err(
            StatusCode::FORBIDDEN,
            format!("{} may not read container logs or exec: masters only", p.cn),
        ),
        None => err(
            StatusCode::UNAUTHORIZED,
            "a master's certificate is required".into(),
        ),
    }
}

fn err(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

async fn container_log(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let key = format!("{ns}/{pod}");
    let Some(sandbox) = ctx.pods.lock().expect("pods lock").get(&key).cloned() else {
        return err(
            StatusCode::NOT_FOUND,
            format!("pod {key} is not running on node {}", ctx.cfg.name),
        );
    };
    let previous = matches!(q.get("previous").map(String::as_str), Some("true" | "1"));
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let tail = q.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let Some(path) = ctx.runtime.log_path(&sandbox, &container) else {
        let req = LogRequest {
            tail,
            follow,
            previous,
        };
        return match ctx.runtime.logs(&sandbox, &container, &req).await {
            Ok(stream) => {
                ([("content-type", "text/plain")], Body::from_stream(stream)).into_response()
            }
            Err(e) => err(
                StatusCode::NOT_FOUND,
                format!("container {container:?} in pod {key}: {e}"),
            ),
        };
    };
    if previous {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "the {} runtime keeps no previous container log",
                ctx.runtime.name()
            ),
        );
    }
    let data = match tokio::fs::read(&path).await {
        Ok(d) => d,
        Err(_) => {
            return err(
                StatusCode::NOT_FOUND,
                format!("container {container:?} in pod {key} has no log (not started?)"),
            );
        }
    };
    let start = match tail {
        Some(n) => tail_offset(&data, n),
        None => 0,
    };
    let first = Bytes::copy_from_slice(&data[start..]);
    if !follow {
        return ([("content-type", "text/plain")], first).into_response();
    }
    let pos = data.len() as u64;
    let uid = sandbox.id.clone();
    let stream = futures::stream::unfold(
        (Some(first), pos, ctx, key, uid, path),
        |(first, mut pos, ctx, key, uid, path)| async move {
            if let Some(f) = first {
                return Some((
                    Ok::<Bytes, std::io::Error>(f),
                    (None, pos, ctx, key, uid, path),
                ));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let alive = ctx
                    .pods
                    .lock()
                    .expect("pods lock")
                    .get(&key)
                    .is_some_and(|s| s.id == uid);
                let len = match tokio::fs::metadata(&path).await {
                    Ok(m) => m.len(),
                    Err(_) => return None,
                };
                if len < pos {
                    pos = 0; // rotated (copied and truncated)
                }
                if len > pos {
                    let mut f = tokio::fs::File::open(&path).await.ok()?;
                    f.seek(std::io::SeekFrom::Start(pos)).await.ok()?;
                    let mut buf = vec![0u8; (len - pos).min(1 << 20) as usize];
                    let n = f.read(&mut buf).await.ok()?;
                    buf.truncate(n);
                    pos += n as u64;
                    return Some((Ok(Bytes::from(buf)), (None, pos, ctx, key, uid, path)));
                }
                if !alive {
                    return None;
                }
            }
        },
    );
    ([("content-type", "text/plain")], Body::from_stream(stream)).into_response()
}

#[cfg(test)]
mod tests {
    use super::tail_offset;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[tail_offset(d, 1)..], b"c\n");
        assert_eq!(&d[tail_offset(d, 2)..], b"b\nc\n");
        assert_eq!(&d[tail_offset(d, 10)..], d);
        assert_eq!(&d[tail_offset(d, 0)..], b"");
        let d = b"a\nb";
        assert_eq!(&d[tail_offset(d, 1)..], b"b");
    }
}
