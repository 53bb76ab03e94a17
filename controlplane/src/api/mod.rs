//! The REST API every master serves on `--listen-api` (HTTPS): Kubernetes
//! paths and verbs over the registry, Keel's token, audit and bootstrap
//! endpoints, plus `/healthz`, `/readyz` and `/version`, all behind the
//! auth layer (`guard`).

pub mod admin;
pub mod agent_grpc;
pub mod codec;
pub mod guard;
pub mod handlers;
pub mod logs;
pub mod route;
pub mod select;
pub mod service_ip;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::error::ApiError;
use crate::registry::Registry;

/// How a master serves its API.
#[derive(Clone)]
pub struct ApiConfig {
    /// HTTPS (None only with `--insecure`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Signs node certificates at bootstrap.
    pub ca: Option<Arc<keel_proto::pki::Ca>>,
    pub audit: Option<Arc<crate::auth::audit::AuditLog>>,
}

/// The router of the API, behind the auth layer.
pub fn router(reg: Registry, cfg: &ApiConfig) -> Router {
    let guard = guard::Guard::new(reg.clone(), cfg.audit.clone());
    let admin = admin::router(admin::Admin {
        reg: reg.clone(),
        ca: cfg.ca.clone(),
        audit: cfg.audit.clone(),
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route(logs::PATH, get(logs::handler))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
        .with_state(reg.clone())
        // The agents' gRPC service shares the port (HTTP/2 requests to /keelagent.Agent/...).
        .merge(tonic::service::Routes::new(agent_grpc::server(reg)).into_axum_router())
        .merge(admin)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    reg: Registry,
    cfg: ApiConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let r = router(reg, &cfg);
    keel_proto::https::serve(listener, r, cfg.tls, shutdown).await
}

async fn readyz(State(reg): State<Registry>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), reg.node().read_barrier()).await {
        Ok(Ok(())) => "ok".into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {e}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store not ready: read barrier timed out",
        )
            .into_response(),
    }
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1",
        "minor": "31",
        "gitVersion": concat!("v", env!("CARGO_PKG_VERSION"), "-keel"),
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
    .into_response()
}

async fn dispatch(
    State(reg): State<Registry>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("request", %method, path = uri.path());
    async move {
        let started = std::time::Instant::now();
        let r = handle(&reg, &method, &uri, &headers, body).await;
        let resp = r.unwrap_or_else(|e| codec::error(&headers, &e));
        tracing::debug!(
            status = resp.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "done"
        );
        resp
    }
    .instrument(span)
    .await
}

async fn handle(
    reg: &Registry,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = route::parse(uri.path())?;
    let q: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let body = codec::read_body(body).await?;
    let name = t.name.clone();
    match (method.clone(), name) {
        (Method::GET, Some(n)) if !is_watch(&q) => handlers::get(reg, &t, headers, &n).await,
        (Method::GET, _) => {
            let filter = handlers::Filter::from_query(&q)?;
            if is_watch(&q) {
                let rv = match q.get("resourceVersion").map(String::as_str) {
                    None | Some("") => None,
                    Some(s) => Some(s.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {s:?}"))
                    })?),
                };
                let timeout = match q.get("timeoutSeconds") {
                    None => None,
                    Some(s) => Some(Duration::from_secs(s.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds {s:?}"))
                    })?)),
                };
                watch::start(reg, &t, filter, rv, timeout).await
            } else {
                handlers::list(reg, &t, headers, &filter).await
            }
        }
        (Method::POST, _) => {
            let v = codec::parse(headers, &body)?;
            handlers::create(reg, &t, headers, v).await
        }
        (Method::PUT, Some(_)) => {
            let v = codec::parse(headers, &body)?;
            handlers::replace(reg, &t, headers, v).await
        }
        (Method::PATCH, Some(n)) => handlers::patch(reg, &t, headers, &n, &body).await,
        (Method::DELETE, Some(n)) if !t.status => {
            handlers::delete(reg, &t, headers, &n, &body).await
        }
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {}", uri.path()),
        )),
    }
}

fn is_watch(q: &HashMap<String, String>) -> bool {
    matches!(q.get("watch").map(String::as_str), Some("1" | "true"))
}
