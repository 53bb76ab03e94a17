//! Keel's own endpoints beside the Kubernetes paths: bearer tokens
//! (`/keel/v1/tokens`, admin only), this master's audit log
//! (`/keel/v1/audit`, admin only) and node bootstrap (`/keel/v1/bootstrap`:
//! a bootstrap token buys one node certificate for a CSR), node certificate
//! renewal (`/keel/v1/certificates/<node>`, by that node) and node
//! revocation (`/keel/v1/revoked-nodes`, admin only).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use keel_proto::pki::Ca;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::codec;
use super::guard::{BOOTSTRAP_PATH, bearer};
use crate::auth::audit::AuditLog;
use crate::auth::credentials;
use crate::auth::rbac::Role;
use crate::auth::tokens::TokenRecord;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::validate;

/// State of the admin endpoints.
#[derive(Clone)]
pub struct Admin {
    pub reg: Registry,
    /// Signs node certificates (None: this master cannot bootstrap nodes).
    pub ca: Option<Arc<Ca>>,
    pub audit: Option<Arc<AuditLog>>,
}

/// The routes.
pub fn router(a: Admin) -> Router {
    Router::new()
        .route("/keel/v1/tokens", post(create_token).get(list_tokens))
        .route("/keel/v1/tokens/{id}", delete(revoke_token))
        .route("/keel/v1/audit", get(audit_tail))
        .route(BOOTSTRAP_PATH, post(bootstrap))
        .route("/keel/v1/certificates/{node}", post(renew))
        .route("/keel/v1/revoked-nodes", post(revoke_node))
        .with_state(a)
}

/// `POST /keel/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub user: String,
    pub role: Role,
    /// 0: never expires.
    #[serde(default)]
    pub ttl_seconds: i64,
    #[serde(default)]
    pub bootstrap: bool,
    /// The node a bootstrap token is for (required with `bootstrap`).
    #[serde(default)]
    pub node_name: String,
}

/// The answer to a token creation: the secret, shown only this once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub token: String,
    pub record: TokenView,
}

/// A token record without its hash.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub role: Role,
    pub expires_at: i64,
    pub revoked: bool,
    pub bootstrap: bool,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub used_by: String,
    pub created_at: i64,
}

impl From<TokenRecord> for TokenView {
    fn from(r: TokenRecord) -> Self {
        TokenView {
            id: r.id,
            user: r.user,
            role: r.role,
            expires_at: r.expires_at,
            revoked: r.revoked,
            bootstrap: r.bootstrap,
            node: r.node,
            used_by: r.used_by,
            created_at: r.created_at,
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > codec::MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "body too large",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed body: {e}")))
}

async fn create_token(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let req: TokenRequest = parse_json(&body)?;
        if req.user.is_empty() {
            return Err(ApiError::invalid("user: Required value"));
        }
        if req.ttl_seconds < 0 {
            return Err(ApiError::invalid("ttlSeconds: must not be negative"));
        }
        if req.bootstrap {
            validate::subdomain(&req.node_name).map_err(|e| {
                ApiError::invalid(format!(
                    "nodeName: a bootstrap token is bound to one node: {e}"
                ))
            })?;
        } else if !req.node_name.is_empty() {
            return Err(ApiError::invalid(
                "nodeName: only bootstrap tokens are bound to a node",
            ));
        }
        let role = if req.bootstrap { Role::Node } else { req.role };
        let (token, rec) = credentials::create_token(
            &a.reg,
            &req.user,
            role,
            req.ttl_seconds,
            req.bootstrap,
            &req.node_name,
        )
        .await?;
        Ok(TokenCreated {
            token,
            record: rec.into(),
        })
    }
    .await;
    match r {
        Ok(t) => (StatusCode::CREATED, Json(t)).into_response(),
        Err(e) => codec::error(&headers, &e),
    }
}

async fn list_tokens(State(a): State<Admin>, headers: HeaderMap) -> Response {
    match credentials::list_tokens(&a.reg).await {
        Ok(v) => Json(json!({
            "items": v.into_iter().map(TokenView::from).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => codec::error(&headers, &e),
    }
}

async fn revoke_token(
    State(a): State<Admin>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match credentials::revoke(&a.reg, &id).await {
        Ok(r) => Json(TokenView::from(r)).into_response(),
        Err(e) => codec::error(&headers, &e),
    }
}

#[derive(Deserialize)]
struct TailQuery {
    #[serde(default = "default_lines")]
    lines: usize,
}

fn default_lines() -> usize {
    100
}

/// The last `lines` entries of this master's audit log, as JSON lines.
async fn audit_tail(
    State(a): State<Admin>,
    Query(q): Query<TailQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(log) = &a.audit else {
        return codec::error(
            &headers,
            &ApiError::new(404, "NotFound", "this master keeps no audit log"),
        );
    };
    match std::fs::read_to_string(log.path()) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(q.lines.min(100_000));
            let mut out = lines[from..].join("\n");
            out.push('\n');
            ([("content-type", "application/x-ndjson")], out).into_response()
        }
        Err(e) => codec::error(&headers, &ApiError::internal(e.to_string())),
    }
}

/// `POST /keel/v1/bootstrap`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapRequest {
    pub node_name: String,
    /// A PEM certificate signing request for the node's key.
    pub csr: String,
}

/// The node's certificate and the CA to trust.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapResponse {
    pub certificate: String,
    pub ca: String,
}

async fn bootstrap(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let token = bearer(&headers)
            .ok_or_else(|| ApiError::new(401, "Unauthorized", "a bootstrap token is required"))?;
        let req: BootstrapRequest = parse_json(&body)?;
        validate::subdomain(&req.node_name)
            .map_err(|e| ApiError::invalid(format!("nodeName: {e}")))?;
        let ca =
            a.ca.as_ref()
                .ok_or_else(|| ApiError::unavailable("this master holds no CA key"))?;
        // Check the request before spending the token on it: the CSR names
        // this node, and no node of that name is registered (a second
        // machine must not take over a node's identity).
        keel_proto::pki::check_csr(&req.csr, &req.node_name)
            .map_err(|e| ApiError::invalid(format!("csr: {e}")))?;
        let nodes = crate::kinds::of::<keel_proto::api::Node>();
        if a.reg.get(nodes, "", &req.node_name).await.is_ok() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!(
                    "node {:?} is already registered; delete it first to admit a new machine under its name",
                    req.node_name
                ),
            ));
        }
        credentials::spend_bootstrap(&a.reg, token, &req.node_name).await?;
        tracing::info!(node = %req.node_name, "issuing a node certificate");
        sign(ca, &req.csr, &req.node_name)
    }
    .await;
    created(&headers, r)
}

/// Signs `csr` as node `node`'s certificate.
fn sign(ca: &Ca, csr: &str, node: &str) -> Result<BootstrapResponse, ApiError> {
    let certificate = ca
        .sign_node_csr(csr, node)
        .map_err(|e| ApiError::invalid(format!("csr: {e}")))?;
    Ok(BootstrapResponse {
        certificate,
        ca: ca.cert_pem.clone(),
    })
}

/// 201 with `r` as JSON, or the error as a Status.
fn created<T: Serialize>(headers: &HeaderMap, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(b) => (StatusCode::CREATED, Json(b)).into_response(),
        Err(e) => codec::error(headers, &e),
    }
}

/// `POST /keel/v1/certificates/<node>`: a node renews its certificate.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    /// A PEM certificate signing request for the node's (new) key.
    pub csr: String,
}

async fn renew(
    State(a): State<Admin>,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        // The guard admitted only node `node` itself (or an admin).
        let req: RenewRequest = parse_json(&body)?;
        keel_proto::pki::check_csr(&req.csr, &node)
            .map_err(|e| ApiError::invalid(format!("csr: {e}")))?;
        let ca =
            a.ca.as_ref()
                .ok_or_else(|| ApiError::unavailable("this master holds no CA key"))?;
        tracing::info!(%node, "renewing a node certificate");
        sign(ca, &req.csr, &node)
    }
    .await;
    created(&headers, r)
}

/// `POST /keel/v1/revoked-nodes`: refuses every certificate issued to a
/// node until now, on every master as soon as it applied the write.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeNodeRequest {
    pub node_name: String,
}

async fn revoke_node(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let req: RevokeNodeRequest = parse_json(&body)?;
        validate::subdomain(&req.node_name)
            .map_err(|e| ApiError::invalid(format!("nodeName: {e}")))?;
        credentials::revoke_node(&a.reg, &req.node_name).await
    }
    .await;
    created(&headers, r)
}
