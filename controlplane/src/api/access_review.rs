//! `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: may I do
//! this? (`kubectl auth can-i`). Answered by the same RBAC rules the guard
//! applies to the caller's identity. Node restriction, which depends on the
//! stored object, is judged without it (a node is told no for writes to
//! pods it might own).

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::codec::respond;
use crate::auth::Identity;
use crate::auth::rbac::{self, Access};
use crate::error::ApiError;
use crate::registry::str_at;

/// The review's path.
pub const PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// Answers a SelfSubjectAccessReview for `id`.
pub fn review(id: &Identity, headers: &HeaderMap, mut body: Value) -> Result<Response, ApiError> {
    match (str_at(&body, &["apiVersion"]), str_at(&body, &["kind"])) {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {}
        (a, k) => {
            return Err(ApiError::bad_request(format!(
                "expected an authorization.k8s.io/v1 SelfSubjectAccessReview, got {a}/{k}"
            )));
        }
    }
    let ra = &body["spec"]["resourceAttributes"];
    let nra = &body["spec"]["nonResourceAttributes"];
    let (allowed, reason) = if ra.is_object() {
        let s = |k: &str| str_at(ra, &[k]).to_string();
        let (verb, resource) = (s("verb"), s("resource"));
        if verb.is_empty() || resource.is_empty() {
            return Err(ApiError::invalid(
                "spec.resourceAttributes: verb and resource are required",
            ));
        }
        let (group, ns, name, sub) = (s("group"), s("namespace"), s("name"), s("subresource"));
        let a = Access {
            verb: &verb,
            resource: &resource,
            group: &group,
            namespace: &ns,
            name: &name,
            subresource: &sub,
        };
        match rbac::authorize(id, &a, None) {
            Ok(()) => (true, format!("role {} allows it", id.role)),
            Err(msg) => (false, msg),
        }
    } else if nra.is_object() {
        // Discovery, health and version are open to every authenticated caller.
        let verb = str_at(nra, &["verb"]);
        (verb == "get", format!("non-resource {verb}"))
    } else {
        return Err(ApiError::invalid(
            "spec: resourceAttributes or nonResourceAttributes is required",
        ));
    };
    body["status"] = json!({"allowed": allowed, "reason": reason});
    Ok(respond(headers, 201, &body))
}
