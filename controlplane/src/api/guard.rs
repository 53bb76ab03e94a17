//! The API's front door: every request (REST and the agents' gRPC) is
//! authenticated (client certificate, else bearer token; 401 without either),
//! authorized by role (403 naming the missing permission, with node
//! restriction), and, when it mutates or is denied, written to the audit log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_proto::pki;
use serde_json::Value;

use super::{codec, route};
use crate::auth::audit::{AuditEntry, AuditLog};
use crate::auth::rbac::{self, Access};
use crate::auth::throttle::Bucket;
use crate::auth::{Identity, Role, credentials};
use crate::error::ApiError;
use crate::registry::Registry;
use keel_proto::https::PeerSubject;

/// Paths anyone may call: health and version (as Kubernetes allows anonymously).
const PUBLIC: [&str; 4] = ["/healthz", "/livez", "/readyz", "/version"];
/// The node bootstrap path: authenticated by a bootstrap token in its handler.
pub const BOOTSTRAP_PATH: &str = "/keel/v1/bootstrap";

/// What the auth layer needs.
#[derive(Clone)]
pub struct Guard {
    pub reg: Registry,
    pub audit: Option<Arc<AuditLog>>,
    pub limits: Arc<Limits>,
}

/// The auth layer's defences against floods of bad credentials.
pub struct Limits {
    /// Quorum reads for tokens this master does not know (20/s, burst 50).
    pub token_lookups: Bucket,
    /// Audit lines for unauthenticated requests (10/s, burst 100); the
    /// rest are counted and reported in the next line that is written.
    pub unauthenticated_audit: Bucket,
    suppressed: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            token_lookups: Bucket::new(20.0, 50),
            unauthenticated_audit: Bucket::new(10.0, 100),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl Guard {
    pub fn new(reg: Registry, audit: Option<Arc<AuditLog>>) -> Guard {
        Guard {
            reg,
            audit,
            limits: Arc::new(Limits::default()),
        }
    }
}

/// The role a client certificate's organisation grants.
pub fn identity_of_cert(p: &PeerSubject) -> Result<Identity, String> {
    let role = match p.org.as_str() {
        pki::ORG_MASTERS | pki::ORG_ADMIN => Role::Admin,
        pki::ORG_EDIT => Role::Edit,
        pki::ORG_VIEW => Role::View,
        pki::ORG_NODES if p.cn.starts_with("node:") => Role::Node,
        o => {
            return Err(format!(
                "certificate {:?} has organisation {o:?}, which maps to no role",
                p.cn
            ));
        }
    };
    Ok(Identity {
        user: p.cn.clone(),
        role,
    })
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Who is calling: the client certificate wins over a token.
async fn authenticate(
    g: &Guard,
    cert: Option<&PeerSubject>,
    headers: &HeaderMap,
) -> Result<Identity, String> {
    if let Some(p) = cert {
        let id = identity_of_cert(p)?;
        if let Some(node) = id.node_name()
            && let Some(at) = credentials::node_revoked_at(&g.reg, node).await
            // Whole seconds: a certificate issued in the second of the
            // revocation is refused too.
            && p.issued_at <= at
        {
            return Err(format!(
                "the certificate of node {node:?} was revoked; the node must join again"
            ));
        }
        return Ok(id);
    }
    let Some(token) = bearer(headers) else {
        return Err(
            "authentication required: present a client certificate signed by \
                    the cluster CA or an `Authorization: Bearer` token"
                .into(),
        );
    };
    let rec = credentials::authenticate(&g.reg, token, &g.limits.token_lookups)
        .await
        .map_err(|e| format!("invalid bearer token: {e}"))?;
    if rec.bootstrap {
        return Err(format!(
            "bootstrap tokens are good only for {BOOTSTRAP_PATH} (a node's certificate request)"
        ));
    }
    Ok(Identity {
        user: rec.user,
        role: rec.role,
    })
}

/// The request as RBAC sees it (owned parts of `rbac::Access`).
#[derive(Debug, Default, Clone)]
struct Wants {
    verb: String,
    resource: String,
    group: String,
    namespace: String,
    name: String,
    subresource: String,
}

fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// How the guard reads a request.
enum Reading {
    /// Keel's own endpoints, the agents' gRPC service and paths no route
    /// serves (the router answers those 404 after authentication).
    Other(Wants),
    /// A Kubernetes API request, parsed once by `route::parse`: authorized
    /// here and executed by the router exactly as parsed.
    Api(Wants, route::Parsed),
    /// A Kubernetes API path that does not parse (404, 405, 400): answered
    /// with this error once the caller is authenticated.
    Refused(Wants, ApiError),
}

fn is_api_path(path: &str) -> bool {
    ["/api", "/apis"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// What a request asks for.
fn read(method: &Method, uri: &Uri) -> Reading {
    let path = uri.path();
    if path.starts_with("/keelagent.") {
        return Reading::Other(Wants {
            verb: "watch".into(),
            resource: "pods".into(),
            ..Default::default()
        });
    }
    if let Some(rest) = path.strip_prefix("/keel/v1/") {
        let mut segs = rest.split('/');
        let resource = segs.next().unwrap_or_default().to_string();
        let name = segs.next().unwrap_or_default().to_string();
        return Reading::Other(Wants {
            verb: verb(method, !name.is_empty(), false).into(),
            resource,
            name,
            ..Default::default()
        });
    }
    let fallback = || Wants {
        verb: verb(method, false, false).into(),
        ..Default::default()
    };
    if !is_api_path(path) {
        return Reading::Other(fallback());
    }
    match route::parse(method, uri) {
        Err(e) => Reading::Refused(fallback(), e),
        Ok(p @ route::Parsed::AccessReview) => Reading::Api(
            Wants {
                verb: "create".into(),
                resource: "selfsubjectaccessreviews".into(),
                group: super::discovery::AUTHZ_GROUP.into(),
                ..Default::default()
            },
            p,
        ),
        Ok(p @ route::Parsed::Discovery(_)) => Reading::Api(
            Wants {
                verb: "get".into(),
                ..Default::default()
            },
            p,
        ),
        Ok(route::Parsed::Resource(r)) => {
            let t = &r.target;
            let w = Wants {
                verb: r.verb.as_str().into(),
                resource: t.kind.plural.to_string(),
                group: t.kind.group.to_string(),
                namespace: t.namespace.clone().unwrap_or_default(),
                name: t.name.clone().unwrap_or_default(),
                subresource: t.sub.map(route::Sub::as_str).unwrap_or("").into(),
            };
            Reading::Api(w, route::Parsed::Resource(r))
        }
    }
}

fn deny(headers: &HeaderMap, grpc: bool, code: u16, msg: String) -> Response {
    if grpc {
        let s = if code == 401 {
            tonic::Status::unauthenticated(msg)
        } else {
            tonic::Status::permission_denied(msg)
        };
        return s.into_http::<Body>().into_response();
    }
    let reason = if code == 401 {
        "Unauthorized"
    } else {
        "Forbidden"
    };
    codec::error(headers, &ApiError::new(code, reason, msg))
}

fn audit(g: &Guard, user: &str, w: &Wants, code: u16) {
    let Some(log) = &g.audit else { return };
    let e = AuditEntry {
        time: keel_proto::api::meta::now_rfc3339(),
        user: user.to_string(),
        verb: w.verb.clone(),
        resource: if w.subresource.is_empty() {
            w.resource.clone()
        } else {
            format!("{}/{}", w.resource, w.subresource)
        },
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        code,
    };
    if let Err(err) = log.record(&e) {
        tracing::error!(error = %err, "cannot write the audit log");
    }
}

/// Audits a 401 unless they come too fast: a flood of bad credentials must
/// not rotate the audit history away. Suppressed lines are counted, and the
/// count is written (as user `anonymous (+N suppressed)`) with the next one.
fn audit_unauthenticated(g: &Guard, w: &Wants) {
    if !g.limits.unauthenticated_audit.try_take() {
        g.limits.suppressed.fetch_add(1, AtomicOrdering::Relaxed);
        return;
    }
    let n = g.limits.suppressed.swap(0, AtomicOrdering::Relaxed);
    let user = if n == 0 {
        "anonymous".to_string()
    } else {
        format!("anonymous (+{n} suppressed)")
    };
    audit(g, &user, w, 401);
}

/// The axum middleware.
pub async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if PUBLIC.contains(&path.as_str()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let grpc = path.starts_with("/keelagent.");
    let (mut w, parsed, refused) = match read(&method, req.uri()) {
        Reading::Other(w) => (w, None, None),
        Reading::Api(w, p) => (w, Some(p), None),
        Reading::Refused(w, e) => (w, None, Some(e)),
    };
    let mutating = !matches!(method, Method::GET | Method::HEAD);
    if path == BOOTSTRAP_PATH {
        // The handler spends the bootstrap token; audit its answer.
        let user = bearer(&headers)
            .and_then(|t| crate::auth::tokens::parse(t).ok())
            .map(|(id, _)| format!("bootstrap-token:{id}"))
            .unwrap_or_else(|| "anonymous".into());
        let resp = next.run(req).await;
        audit(&g, &user, &w, resp.status().as_u16());
        return resp;
    }
    let cert = req.extensions().get::<PeerSubject>().cloned();
    let id = match authenticate(&g, cert.as_ref(), &headers).await {
        Ok(id) => id,
        Err(msg) => {
            audit_unauthenticated(&g, &w);
            return deny(&headers, grpc, 401, msg);
        }
    };
    if let Some(e) = refused {
        // Nothing runs for a request the API does not serve.
        if mutating {
            audit(&g, &id.user, &w, e.code);
        }
        return codec::error(&headers, &e);
    }
    // Discovery and asking about oneself are open to every authenticated caller.
    let discovery = matches!(
        parsed,
        Some(route::Parsed::Discovery(_) | route::Parsed::AccessReview)
    );
    let mut req = req;
    // Node restriction needs what the request names: the name of an object a
    // node creates (from its body) and the node a pod is bound to.
    let mut stored: Option<Value> = None;
    if w.verb == "create" && (path.starts_with("/api/") || path.starts_with("/apis/")) {
        // The name is in the body: node restriction and the audit log need it.
        let (parts, body) = req.into_parts();
        let bytes = match codec::read_body(body).await {
            Ok(b) => b,
            Err(e) => return codec::error(&headers, &e),
        };
        // (An eviction names its pod in the path already.)
        if let Ok(v) = codec::parse(&headers, &bytes)
            && w.name.is_empty()
        {
            w.name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    if id.role == Role::Node && mutating && w.resource == "pods" && !w.name.is_empty() {
        let pods = crate::kinds::of::<keel_proto::api::Pod>();
        stored = g.reg.get(pods, &w.namespace, &w.name).await.ok();
    }
    let access = Access {
        verb: &w.verb,
        resource: &w.resource,
        group: &w.group,
        namespace: &w.namespace,
        name: &w.name,
        subresource: &w.subresource,
    };
    // As Kubernetes' system:discovery and system:basic-user.
    let allowed = if discovery {
        Ok(())
    } else {
        rbac::authorize(&id, &access, stored.as_ref())
    };
    if let Err(msg) = allowed {
        audit(&g, &id.user, &w, 403);
        return deny(&headers, grpc, 403, msg);
    }
    req.extensions_mut().insert(id.clone());
    if let Some(p) = parsed {
        // The router executes this parse, the one just authorized.
        req.extensions_mut().insert(p);
    }
    let resp = next.run(req).await;
    if mutating {
        audit(&g, &id.user, &w, resp.status().as_u16());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(method: Method, uri: &str) -> Option<Wants> {
        match read(&method, &uri.parse().unwrap()) {
            Reading::Api(w, _) | Reading::Other(w) => Some(w),
            Reading::Refused(..) => None,
        }
    }

    #[test]
    fn paths_map_to_what_rbac_checks() {
        let w = wants(Method::PUT, "/api/v1/namespaces/default/pods/web-1/status").unwrap();
        assert_eq!(
            (w.verb.as_str(), w.resource.as_str(), w.name.as_str()),
            ("update", "pods", "web-1")
        );
        assert_eq!(w.subresource, "status");
        let w = wants(Method::GET, "/apis/apps/v1/deployments?watch=1").unwrap();
        assert_eq!((w.verb.as_str(), w.group.as_str()), ("watch", "apps"));
        let w = wants(Method::POST, "/api/v1/namespaces/default/pods").unwrap();
        assert_eq!(w.verb, "create");
        let w = wants(Method::GET, "/api/v1/namespaces/d/pods/p/log").unwrap();
        assert_eq!((w.verb.as_str(), w.subresource.as_str()), ("get", "log"));
        // A pod named `log` is deleted as a pod, not read as a log.
        let w = wants(Method::DELETE, "/api/v1/namespaces/d/pods/log").unwrap();
        assert_eq!(
            (w.verb.as_str(), w.name.as_str(), w.subresource.as_str()),
            ("delete", "log", "")
        );
        assert!(wants(Method::DELETE, "/api/v1/namespaces/d/pods/p/log").is_none());
        let w = wants(Method::DELETE, "/keel/v1/tokens/abc").unwrap();
        assert_eq!(
            (w.verb.as_str(), w.resource.as_str(), w.name.as_str()),
            ("delete", "tokens", "abc")
        );
        assert!(wants(Method::GET, "/api/v1/widgets").is_none());
    }

    #[test]
    fn certificate_organisations_map_to_roles() {
        let s = |cn: &str, org: &str| PeerSubject {
            cn: cn.into(),
            org: org.into(),
            issued_at: 0,
        };
        assert_eq!(
            identity_of_cert(&s("node:n1", pki::ORG_NODES))
                .unwrap()
                .role,
            Role::Node
        );
        assert_eq!(
            identity_of_cert(&s("admin", pki::ORG_ADMIN)).unwrap().role,
            Role::Admin
        );
        assert_eq!(
            identity_of_cert(&s("carol", pki::ORG_VIEW)).unwrap().role,
            Role::View
        );
        // A node certificate must be named node:<name>.
        assert!(identity_of_cert(&s("n1", pki::ORG_NODES)).is_err());
        assert!(identity_of_cert(&s("x", "acme")).is_err());
    }
}
