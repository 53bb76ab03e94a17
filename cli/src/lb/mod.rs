//! `keel lb`: a local load balancer in front of the masters' REST API, for
//! clients that know one server URL (kubectl, client libraries), like the
//! client-side load balancer k3s runs on its agents. It terminates TLS with
//! a serving certificate it issues itself from the cluster CA, and sends
//! each request to a live master, the last one that answered first:
//! - a request whose connection to a master fails is sent to the next one
//!   (any request: it never reached the first);
//! - a watch (`watch=true`) is relayed event by event, and when its master
//!   goes away it is resumed on another from the last resourceVersion it
//!   relayed, so the client's stream goes on without a gap or a repeat
//!   ([`watch`]);
//! - an upgrade (`kubectl exec`'s WebSocket) is relayed below HTTP
//!   ([`upgrade`]).
//!
//! Callers authenticate with bearer tokens, which are forwarded; a client
//! certificate ends at the load balancer, so it cannot stand for a caller.

mod upgrade;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use keel_proto::pki;

#[derive(Args, Debug, Clone)]
pub struct LbArgs {
    /// Where to listen: the server URL of the kubeconfig points here.
    #[arg(long, env = "KEEL_LB_LISTEN", default_value = "127.0.0.1:6440")]
    pub listen: SocketAddr,
    /// REST API addresses of the masters (comma-separated), tried in this
    /// order first.
    #[arg(long, env = "KEEL_MASTERS", value_delimiter = ',', required = true)]
    pub masters: Vec<String>,
    /// The cluster PKI directory (ca.crt, ca.key): the load balancer issues
    /// itself a serving certificate for its listen address from this CA.
    #[arg(long, env = "KEEL_PKI_DIR")]
    pub pki_dir: PathBuf,
    /// How long a watch whose master went away waits for another to take
    /// it over, in milliseconds, before it ends.
    #[arg(long, env = "KEEL_LB_RESUME_TIMEOUT_MS", default_value_t = 30_000)]
    pub resume_timeout_ms: u64,
}

/// What the handlers share.
pub struct Lb {
    masters: Vec<String>,
    http: reqwest::Client,
    /// For relayed upgrades: trusts the cluster CA, speaks HTTP/1.1.
    tls: Arc<rustls::ClientConfig>,
    /// The master that answered last (tried first).
    preferred: AtomicUsize,
    resume_timeout: Duration,
}

/// Request headers that belong to one hop, not to the request.
const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

impl Lb {
    /// The masters' indexes, the preferred one first.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.masters.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (first + i) % n)
    }

    /// Sends a request to the first master that takes it: one whose
    /// connection fails is skipped (the request never reached it). Returns
    /// the answer and the master's index.
    async fn send(
        &self,
        method: &Method,
        path_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        skip: Option<usize>,
    ) -> Result<(reqwest::Response, usize), String> {
        let mut last = String::from("no master");
        for i in self.order().filter(|i| Some(*i) != skip) {
            let url = format!("https://{}{path_query}", self.masters[i]);
            let mut rb = self.http.request(method.clone(), &url).body(body.clone());
            for (k, v) in headers {
                if !HOP.contains(&k.as_str()) && k != header::CONTENT_LENGTH {
                    rb = rb.header(k, v);
                }
            }
            match rb.send().await {
                Ok(r) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((r, i));
                }
                Err(e) if e.is_connect() => {
                    tracing::info!(master = %self.masters[i], error = %e, "master unreachable; trying the next");
                    last = format!("{}: {e}", self.masters[i]);
                }
                Err(e) => return Err(format!("{}: {e}", self.masters[i])),
            }
        }
        Err(last)
    }
}

/// A Kubernetes `Status` error answer.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// A master's answer, relayed as it streams.
fn relay(r: reqwest::Response) -> Response {
    let mut resp = Response::builder().status(r.status());
    for (k, v) in r.headers() {
        if !HOP.contains(&k.as_str()) && k != header::CONTENT_LENGTH {
            resp = resp.header(k, v);
        }
    }
    resp.body(Body::from_stream(r.bytes_stream()))
        .unwrap_or_else(|e| status(StatusCode::BAD_GATEWAY, "InternalError", e.to_string()))
}

async fn forward(State(lb): State<Arc<Lb>>, req: Request) -> Response {
    let span = tracing::info_span!("lb", method = %req.method(), path = req.uri().path());
    tracing::Instrument::instrument(forward_in(lb, req), span).await
}

async fn forward_in(lb: Arc<Lb>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if parts.headers.contains_key(header::UPGRADE) {
        return upgrade::relay(&lb, parts).await;
    }
    let limit = 2 * keel_proto::MAX_REQUEST_BYTES;
    let body = match keel_controlplane::api::codec::read_limited(body, limit).await {
        Ok(b) => axum::body::Bytes::from(b),
        Err(e) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("request body: {e}"),
            );
        }
    };
    let path_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if watch::is_watch(parts.uri.query()) {
        return watch::serve(lb.clone(), parts, path_query).await;
    }
    match lb
        .send(&parts.method, &path_query, &parts.headers, body, None)
        .await
    {
        Ok((r, _)) => relay(r),
        Err(e) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("no master answered: {e}"),
        ),
    }
}

/// Binds the listen address and serves in the background until
/// `stop` turns true (`keel up` runs it so, beside its masters).
pub async fn start(
    a: LbArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    anyhow::ensure!(!a.masters.is_empty(), "no masters given");
    let dir = pki::PkiDir(a.pki_dir.clone());
    let ca = dir
        .load_ca()
        .with_context(|| format!("loading the CA from {}", a.pki_dir.display()))?;
    let ca_pem = std::fs::read_to_string(dir.ca_cert())?;
    let me = ca.issue(
        "keel-lb",
        None,
        &[a.listen.ip().to_string()],
        pki::Usage::ServerAndClient,
    )?;
    let server = pki::server_config(&ca_pem, &me, false)?;
    let mut client = pki::client_config(&ca_pem, None)?;
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .use_preconfigured_tls(pki::client_config(&ca_pem, None)?)
        .build()?;
    let lb = Arc::new(Lb {
        masters: a.masters.clone(),
        http,
        tls: Arc::new(client),
        preferred: AtomicUsize::new(0),
        resume_timeout: Duration::from_millis(a.resume_timeout_ms),
    });
    let app = Router::new().fallback(forward).with_state(lb);
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    tracing::info!(listen = %a.listen, masters = ?a.masters, "load balancer serving");
    Ok(tokio::spawn(keel_proto::https::serve(
        listener,
        app,
        Some(Arc::new(server)),
        stop,
    )))
}

/// `keel lb`: serves until Ctrl-C.
pub async fn run(a: LbArgs) -> anyhow::Result<()> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let serving = start(a, stop).await?;
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    serving.await??;
    Ok(())
}
