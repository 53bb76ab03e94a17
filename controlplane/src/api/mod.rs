//! The REST API every master serves on `--listen-api` (HTTPS): Kubernetes
//! paths and verbs over the registry, Keel's token, audit and bootstrap
//! endpoints, plus `/healthz`, `/readyz` and `/version`, all behind the
//! auth layer (`guard`).

pub mod access_review;
pub mod admin;
pub mod agent_grpc;
pub mod apply;
pub mod codec;
pub mod discovery;
pub mod exec;
pub mod guard;
pub mod handlers;
pub mod logs;
pub mod node_link;
pub mod openapi;
pub mod patch;
pub mod portforward;
pub mod privileged;
pub mod route;
pub mod scale;
pub mod select;
pub mod table;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::error::ApiError;
use crate::registry::{self, Registry};
use route::{Sub, Verb};

/// How a master serves its API.
#[derive(Clone)]
pub struct ApiConfig {
    /// HTTPS (None only with `--insecure`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Signs node certificates at bootstrap.
    pub ca: Option<Arc<keel_proto::pki::Ca>>,
    pub audit: Option<Arc<crate::auth::audit::AuditLog>>,
    /// How this master dials the agents' log endpoints (its own
    /// certificate; plain text with `--insecure`).
    pub agent_credentials: keel_proto::pki::Credentials,
    /// At most this many concurrent REST watches per user (the etcd API
    /// has its own cap, `keel_store::etcd::MAX_WATCHES_PER_CLIENT`).
    pub max_watches_per_user: usize,
}

/// The default of `ApiConfig::max_watches_per_user`: far above what kubectl
/// or an agent opens, low enough that a runaway client cannot hold a
/// master's memory with streams.
pub const MAX_WATCHES_PER_USER: usize = 1_000;

/// What the REST handlers share: the registry, and the credentials the log
/// proxy dials agents with.
#[derive(Clone)]
pub struct ApiState {
    pub reg: Registry,
    pub agent_credentials: Arc<keel_proto::pki::Credentials>,
    /// Concurrent REST watches, counted per user.
    pub watches: Arc<keel_store::watch_quota::WatchQuota>,
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
        // OpenAPI v3 (no v2: a plain 404, so kubectl knows, rather than
        // the gRPC service's empty 200 for unknown paths).
        .route("/openapi/v2", any(openapi_v2))
        .route(
            "/openapi/v3",
            get(|| async { axum::Json(openapi::index()) }),
        )
        .route("/openapi/v3/{*gv}", get(openapi_v3))
        .route("/api", any(dispatch))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
        .with_state(ApiState {
            reg: reg.clone(),
            agent_credentials: Arc::new(cfg.agent_credentials.clone()),
            watches: Arc::new(keel_store::watch_quota::WatchQuota::new(
                cfg.max_watches_per_user,
            )),
        })
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

async fn readyz(State(ApiState { reg, .. }): State<ApiState>) -> Response {
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

async fn openapi_v2(headers: HeaderMap) -> Response {
    codec::error(
        &headers,
        &ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource (Keel serves OpenAPI v3 only)",
        ),
    )
}

async fn openapi_v3(
    headers: HeaderMap,
    axum::extract::Path(gv): axum::extract::Path<String>,
) -> Response {
    match openapi::document(&gv) {
        Some(d) => axum::Json(d).into_response(),
        None => codec::error(
            &headers,
            &ApiError::new(404, "NotFound", format!("no OpenAPI document for {gv}")),
        ),
    }
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1",
        "minor": "31",
        // The Kubernetes API version Keel serves, with Keel's own version as
        // build metadata (kubectl compares the minor for its skew warning).
        "gitVersion": concat!("v1.31.0+keel.", env!("CARGO_PKG_VERSION")),
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
    .into_response()
}

async fn dispatch(State(st): State<ApiState>, req: axum::extract::Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let span = tracing::info_span!("request", %method, path = uri.path());
    async move {
        let started = std::time::Instant::now();
        // The guard's parse, the one it authorized; parsed here only when
        // the router runs without the guard.
        let parsed = match parts.extensions.get::<route::Parsed>() {
            Some(p) => Ok(p.clone()),
            None => route::parse(&method, &uri),
        };
        let r = match parsed {
            Ok(route::Parsed::AccessReview) => {
                match parts.extensions.get::<crate::auth::Identity>() {
                    Some(id) => match codec::read_body(body).await {
                        Ok(b) => codec::parse(&headers, &b)
                            .and_then(|v| access_review::review(id, &headers, v)),
                        Err(e) => Err(e),
                    },
                    None => Err(ApiError::new(
                        401,
                        "Unauthorized",
                        "no authenticated identity",
                    )),
                }
            }
            Ok(route::Parsed::Resource(r)) if r.target.sub == Some(Sub::Exec) => {
                let t = &r.target;
                exec::serve(
                    &st.reg,
                    &st.agent_credentials,
                    t.namespace.as_deref().unwrap_or(""),
                    t.name.as_deref().unwrap_or(""),
                    uri.query().unwrap_or(""),
                    &headers,
                    upgrade,
                )
                .await
            }
            Ok(route::Parsed::Resource(r)) if r.target.sub == Some(Sub::PortForward) => {
                let t = &r.target;
                portforward::serve(
                    &st.reg,
                    &st.agent_credentials,
                    t.namespace.as_deref().unwrap_or(""),
                    t.name.as_deref().unwrap_or(""),
                    &headers,
                    upgrade,
                )
                .await
            }
            Ok(p) => {
                let caller = parts.extensions.get::<crate::auth::Identity>();
                handle(&st, p, &headers, body, caller).await
            }
            Err(e) => Err(e),
        };
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
    st: &ApiState,
    parsed: route::Parsed,
    headers: &HeaderMap,
    body: Body,
    caller: Option<&crate::auth::Identity>,
) -> Result<Response, ApiError> {
    let r = match parsed {
        route::Parsed::AccessReview => {
            return Err(ApiError::internal(
                "access reviews are answered by dispatch",
            ));
        }
        route::Parsed::Discovery(d) => {
            // Plain discovery with a plain content type, also to clients that
            // ask for the aggregated format first: client-go falls back.
            return Ok(axum::Json(discovery::document(&d)?).into_response());
        }
        route::Parsed::Resource(r) => r,
    };
    let (t, q) = (&r.target, &r.query);
    let body = codec::read_body(body).await?;
    let writes = !matches!(r.verb, Verb::Get | Verb::List | Verb::Watch);
    // `kubectl diff` and `--dry-run=server` send dryRun=All: the write is
    // checked and answered as it would be, and nothing changes.
    let dry;
    let reg = match q.get("dryRun") {
        Some(v) if writes => {
            handlers::check_dry_run(v)?;
            dry = st.reg.dry_run();
            &dry
        }
        _ => &st.reg,
    };
    let name = t.name.clone().unwrap_or_default();
    match r.verb {
        Verb::Get => match t.sub {
            Some(Sub::Log) => {
                let ns = t.namespace.as_deref().unwrap_or("");
                logs::serve(reg, &st.agent_credentials, ns, &name, q).await
            }
            Some(Sub::Scale) => scale::get(reg, t, headers).await,
            None | Some(Sub::Status) => handlers::get(reg, t, headers, &name, q).await,
            // route::parse answers GET on an eviction 405.
            // route::parse answers GET on an eviction 405; exec is a create.
            Some(Sub::Eviction | Sub::Exec | Sub::PortForward) => {
                Err(ApiError::internal("no GET on this subresource"))
            }
        },
        Verb::List => handlers::list(reg, t, headers, &handlers::Filter::from_query(q)?, q).await,
        Verb::Watch => {
            let filter = handlers::Filter::from_query(q)?;
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
            let accept = headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let table =
                table::wanted(accept).then(|| q.get("includeObject").cloned().unwrap_or_default());
            let bookmarks = matches!(
                q.get("allowWatchBookmarks").map(String::as_str),
                Some("true" | "1")
            );
            // One slot per open stream, held until the stream ends.
            let who = caller.map_or("anonymous", |c| c.user.as_str());
            let slot = st.watches.acquire(who).ok_or_else(|| {
                ApiError::new(
                    429,
                    "TooManyRequests",
                    format!(
                        "too many watches for user {who:?}: at most {} at once",
                        st.watches.limit()
                    ),
                )
            })?;
            let o = watch::Options {
                resource_version: rv,
                timeout,
                table,
                bookmarks,
            };
            watch::start(reg, t, filter, o, slot).await
        }
        Verb::Create if t.sub.is_some_and(Sub::streams) => {
            Err(ApiError::internal("pod streams are answered by dispatch"))
        }
        Verb::Create if t.sub == Some(Sub::Eviction) => {
            handlers::evict(reg, t, headers, &name, codec::parse(headers, &body)?).await
        }
        Verb::Create => {
            let obj = codec::parse(headers, &body)?;
            let name = registry::str_at(&obj, &["metadata", "name"]).to_string();
            handlers::create(reg, t, headers, obj, caller)
                .await
                .map_err(|e| e.invalid_object(t.kind.kind, t.kind.group, &name))
        }
        Verb::Update if t.sub == Some(Sub::Scale) => {
            scale::replace(reg, t, headers, codec::parse(headers, &body)?).await
        }
        Verb::Update => handlers::replace(reg, t, headers, codec::parse(headers, &body)?, caller)
            .await
            .map_err(|e| e.invalid_object(t.kind.kind, t.kind.group, &name)),
        Verb::Patch if t.sub == Some(Sub::Scale) => {
            scale::patch(reg, t, headers, &body, caller).await
        }
        Verb::Patch if apply::is_apply(headers) && t.sub.is_none() => {
            handlers::server_side_apply(reg, t, headers, &name, &body, q, caller)
                .await
                .map_err(|e| e.invalid_object(t.kind.kind, t.kind.group, &name))
        }
        Verb::Patch => handlers::patch(reg, t, headers, &name, &body, caller)
            .await
            .map_err(|e| e.invalid_object(t.kind.kind, t.kind.group, &name)),
        Verb::Delete => handlers::delete(reg, t, headers, &name, &body).await,
        Verb::DeleteCollection => {
            let filter = handlers::Filter::from_query(q)?;
            handlers::delete_collection(reg, t, headers, &filter).await
        }
    }
}
