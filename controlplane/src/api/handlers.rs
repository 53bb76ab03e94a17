//! The verbs: create, get, list, replace, patch and delete of any kind, and
//! the `/status` subresource. Each checks its input fully before writing, so
//! a bad request changes nothing.

use std::collections::HashMap;

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::codec::respond;
use super::route::Target;
use super::select;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::kinds;
use crate::registry::{Registry, str_at};

/// Checks a request body against the path it was sent to and the kind's
/// schema, returning the normalised object.
fn admit(t: &Target, mut obj: Value, for_update: bool) -> Result<Value, ApiError> {
    let want_api = t.kind.api_version();
    match (str_at(&obj, &["apiVersion"]), str_at(&obj, &["kind"])) {
        ("", "") => {}
        (a, k) if a == want_api && k == t.kind.kind => {}
        (a, k) => {
            if kinds::by_kind(a, k).is_none() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("no kind {k:?} is registered for version {a:?}"),
                ));
            }
            return Err(ApiError::bad_request(format!(
                "the object's kind {a}/{k} does not match the path, which serves {want_api}/{}",
                t.kind.kind
            )));
        }
    }
    obj["apiVersion"] = json!(want_api);
    obj["kind"] = json!(t.kind.kind);
    if obj.get("metadata").is_none_or(Value::is_null) {
        obj["metadata"] = json!({});
    }
    if !obj["metadata"].is_object() {
        return Err(ApiError::invalid("metadata: must be an object"));
    }
    if let Some(ns) = &t.namespace {
        match str_at(&obj, &["metadata", "namespace"]) {
            "" => obj["metadata"]["namespace"] = json!(ns),
            n if n == ns => {}
            n => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the object ({n}) does not match the namespace on the request ({ns})"
                )));
            }
        }
    }
    if let Some(name) = &t.name {
        match str_at(&obj, &["metadata", "name"]) {
            "" if for_update => obj["metadata"]["name"] = json!(name),
            n if n == name => {}
            n => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
    }
    (t.kind.check)(obj)
}

fn ns_of(t: &Target) -> &str {
    t.namespace.as_deref().unwrap_or("")
}

pub async fn create(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    body: Value,
    caller: Option<&Identity>,
) -> Result<Response, ApiError> {
    if t.name.is_some() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "POST goes to the collection, not to an object",
        ));
    }
    if t.kind.namespaced && t.namespace.is_none() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "POST needs a namespace in the path",
        ));
    }
    let obj = admit(t, body, false)?;
    let name = str_at(&obj, &["metadata", "name"]);
    super::privileged::check(t.kind.kind, name, &obj, None, caller)?;
    let created = reg.create(t.kind, obj).await?;
    tracing::info!(
        kind = t.kind.kind,
        name = str_at(&created, &["metadata", "name"]),
        "created"
    );
    Ok(respond(headers, 201, &created))
}

/// The Accept header.
fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `objects` as the Table the client asked for (`kubectl get`), if it did.
fn as_table(
    t: &Target,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    objects: &[Value],
    rv: &str,
) -> Option<Response> {
    if !super::table::wanted(accept(headers)) {
        return None;
    }
    let include = q.get("includeObject").map(String::as_str).unwrap_or("");
    let table = super::table::table(t.kind, objects, rv, include);
    Some(respond(headers, 200, &table))
}

pub async fn get(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let obj = reg.get(t.kind, ns_of(t), name).await?;
    if t.sub.is_none() {
        let rv = str_at(&obj, &["metadata", "resourceVersion"]).to_string();
        if let Some(r) = as_table(t, headers, q, std::slice::from_ref(&obj), &rv) {
            return Ok(r);
        }
    }
    Ok(respond(headers, 200, &obj))
}

/// Selectors from the query string.
pub struct Filter {
    pub labels: keel_proto::api::LabelSelector,
    pub fields: Vec<select::FieldReq>,
}

impl Filter {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
        Ok(Filter {
            labels: select::labels(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: select::fields(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        select::labels_match(&self.labels, obj) && select::fields_match(&self.fields, obj)
    }
}

pub async fn list(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    filter: &Filter,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (items, rev) = reg.list(t.kind, t.namespace.as_deref()).await?;
    let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
    if let Some(r) = as_table(t, headers, q, &items, &rev.to_string()) {
        return Ok(r);
    }
    let list = json!({
        "apiVersion": t.kind.api_version(),
        "kind": format!("{}List", t.kind.kind),
        "metadata": {"resourceVersion": rev.to_string()},
        "items": items,
    });
    Ok(respond(headers, 200, &list))
}

pub async fn replace(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    body: Value,
    caller: Option<&Identity>,
) -> Result<Response, ApiError> {
    let obj = admit(t, body, true)?;
    let name = str_at(&obj, &["metadata", "name"]);
    if !super::privileged::host_path_volumes(t.kind.kind, &obj).is_empty() {
        // Only then is the stored object needed: keeping its hostPath
        // volumes is anyone's right, adding one is an admin's.
        let cur = reg.get(t.kind, ns_of(t), name).await.ok();
        super::privileged::check(t.kind.kind, name, &obj, cur.as_ref(), caller)?;
    }
    let updated = reg.update(t.kind, obj, t.status()).await?;
    Ok(respond(headers, 200, &updated))
}

/// A patch in any of the three formats (see `patch`), retried against the
/// newest version on a conflict unless the patch pins a resourceVersion.
pub async fn patch(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    name: &str,
    body: &[u8],
    caller: Option<&Identity>,
) -> Result<Response, ApiError> {
    let updated = patch_object(reg, t, headers, name, body, caller, |doc, _| Ok(doc)).await?;
    Ok(respond(headers, 200, &updated))
}

/// Server-side apply of the configuration in `body` to object `name`
/// (created when absent) for `fieldManager` (see `apply`).
pub async fn server_side_apply(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    name: &str,
    body: &[u8],
    q: &std::collections::HashMap<String, String>,
    caller: Option<&Identity>,
) -> Result<Response, ApiError> {
    let manager = q.get("fieldManager").map(String::as_str).unwrap_or("");
    if manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
        ));
    }
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(ApiError::bad_request(format!("invalid force {v:?}"))),
    };
    let mut config = super::codec::parse_yaml(body)?;
    let named = str_at(&config, &["metadata", "name"]);
    if named != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({named:?}) does not match the name on the URL ({name:?})"
        )));
    }
    if t.kind.namespaced {
        config["metadata"]["namespace"] = Value::String(ns_of(t).to_string());
    }
    let now = keel_proto::api::meta::now_rfc3339();
    for _ in 0..5 {
        let cur = match reg.get(t.kind, ns_of(t), name).await {
            Ok(c) => Some(c),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let doc = super::apply::apply(cur.as_ref(), &config, manager, force, &now)?;
        let r = match &cur {
            None => {
                let obj = admit(t, doc, false)?;
                super::privileged::check(t.kind.kind, name, &obj, None, caller)?;
                reg.create(t.kind, obj).await.map(|o| (201, o))
            }
            Some(c) => {
                let mut doc = doc;
                doc["metadata"]["resourceVersion"] = c["metadata"]["resourceVersion"].clone();
                let obj = admit(t, doc, true)?;
                super::privileged::check(t.kind.kind, name, &obj, Some(c), caller)?;
                reg.update(t.kind, obj, false).await.map(|o| (200, o))
            }
        };
        match r {
            Ok((code, obj)) => return Ok(respond(headers, code, &obj)),
            // Created or changed meanwhile: apply again to the new object.
            Err(e) if matches!(e.reason, "Conflict" | "AlreadyExists") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(&t.kind.resource(), name))
}

/// Patches the object `name` (or its Scale, for the `scale` subresource);
/// `back` turns the patched document and the current object into the
/// object to store.
pub async fn patch_object(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    name: &str,
    body: &[u8],
    caller: Option<&Identity>,
    back: impl Fn(Value, &Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = super::patch::Format::of(ct)?;
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed patch: {e}")))?;
    let pinned = !str_at(&p, &["metadata", "resourceVersion"]).is_empty();
    let json_patch = format == super::patch::Format::Json;
    // Without a resourceVersion in the patch, a concurrent change is retried
    // against the new version, as the Kubernetes API server does.
    for _ in 0..5 {
        let cur = reg.get(t.kind, ns_of(t), name).await?;
        let mut doc = if t.sub == Some(super::route::Sub::Scale) {
            super::scale::of(&cur)
        } else {
            cur.clone()
        };
        super::patch::apply(&mut doc, format, &p)?;
        let mut doc = back(doc, &cur)?;
        if !pinned && !json_patch {
            doc["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
        }
        let obj = admit(t, doc, true)?;
        super::privileged::check(t.kind.kind, name, &obj, Some(&cur), caller)?;
        match reg.update(t.kind, obj, t.status()).await {
            Err(e) if e.reason == "Conflict" && !pinned => continue,
            Err(e) => return Err(e),
            Ok(updated) => return Ok(updated),
        }
    }
    Err(ApiError::conflict(&t.kind.resource(), name))
}

pub async fn delete(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    // DeleteOptions may carry preconditions.resourceVersion and a
    // propagationPolicy.
    let mut expected = None;
    let mut finalizer = None;
    let mut dry = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let opts: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed DeleteOptions: {e}")))?;
        let rv = str_at(&opts, &["preconditions", "resourceVersion"]);
        if !rv.is_empty() {
            expected = Some(rv.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "preconditions.resourceVersion: invalid value {rv:?}"
                ))
            })?);
        }
        finalizer = propagation_finalizer(t, str_at(&opts, &["propagationPolicy"]))?;
        // kubectl sends a dry run of a delete in the body (DeleteOptions).
        for v in opts["dryRun"].as_array().into_iter().flatten() {
            check_dry_run(v.as_str().unwrap_or_default())?;
            dry = Some(reg.dry_run());
        }
    }
    let reg = dry.as_ref().unwrap_or(reg);
    let gone = delete_object(reg, t, ns_of(t), name, expected, finalizer).await?;
    tracing::info!(kind = t.kind.kind, name, "deleted");
    Ok(respond(headers, 200, &gone))
}

/// `DELETE` on a collection: every object the selectors match, each deleted
/// as by its own DELETE; answers the list of what was deleted.
pub async fn delete_collection(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    filter: &Filter,
) -> Result<Response, ApiError> {
    let (items, _) = reg.list(t.kind, t.namespace.as_deref()).await?;
    let mut gone = Vec::new();
    for o in items.into_iter().filter(|o| filter.matches(o)) {
        let ns = str_at(&o, &["metadata", "namespace"]).to_string();
        let name = str_at(&o, &["metadata", "name"]).to_string();
        match delete_object(reg, t, &ns, &name, None, None).await {
            Ok(g) => gone.push(g),
            // Deleted meanwhile by someone else: it is gone all the same.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let rev = reg.revision().await?;
    let list = json!({
        "apiVersion": t.kind.api_version(),
        "kind": format!("{}List", t.kind.kind),
        "metadata": {"resourceVersion": rev.to_string()},
        "items": gone,
    });
    Ok(respond(headers, 200, &list))
}

/// `POST pods/{name}/eviction`: a `policy/v1` Eviction deletes the pod, as
/// the API server does when no disruption budget forbids it (Keel has no
/// PodDisruptionBudgets). Answers a Success Status.
pub async fn evict(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    name: &str,
    body: Value,
) -> Result<Response, ApiError> {
    match (str_at(&body, &["apiVersion"]), str_at(&body, &["kind"])) {
        ("policy/v1" | "policy/v1beta1", "Eviction") => {}
        (a, k) => {
            return Err(ApiError::bad_request(format!(
                "the eviction subresource takes a policy/v1 Eviction, not {a}/{k}"
            )));
        }
    }
    match str_at(&body, &["metadata", "name"]) {
        n if n == name => {}
        n => {
            return Err(ApiError::bad_request(format!(
                "the name of the Eviction ({n}) does not match the pod on the URL ({name})"
            )));
        }
    }
    delete_object(reg, t, ns_of(t), name, None, None).await?;
    tracing::info!(pod = name, "evicted");
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
        "details": {"name": name, "kind": "pods"},
    });
    Ok(respond(headers, 201, &status))
}

/// Deletes one object. Without a precondition, a concurrent change (a
/// controller writing status meanwhile) is retried against the new version,
/// as the Kubernetes API server does; with one, it is the caller's 409.
/// Checks a `dryRun` value (query or DeleteOptions): `All` is the only one
/// Kubernetes knows.
pub fn check_dry_run(value: &str) -> Result<(), ApiError> {
    if value == "All" {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "dryRun: Unsupported value: {value:?}: supported values: \"All\""
    )))
}

/// The finalizer that carries out `policy` for kind `t` (None: delete at
/// once and let the garbage collector take the dependents, as Background).
fn propagation_finalizer(t: &Target, policy: &str) -> Result<Option<&'static str>, ApiError> {
    use crate::controllers::{gc::OWNER_KINDS, propagation};
    let finalizer = match policy {
        "" | "Background" => return Ok(None),
        "Orphan" => propagation::ORPHAN,
        "Foreground" => propagation::FOREGROUND,
        p => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Orphan\", \"Background\", \"Foreground\""
            )));
        }
    };
    // Only the kinds the garbage collector follows have dependents.
    Ok(OWNER_KINDS.contains(&t.kind.kind).then_some(finalizer))
}

async fn delete_object(
    reg: &Registry,
    t: &Target,
    ns: &str,
    name: &str,
    expected: Option<i64>,
    finalizer: Option<&str>,
) -> Result<Value, ApiError> {
    let mut last = None;
    for _ in 0..5 {
        match reg
            .delete_with_finalizer(t.kind, ns, name, expected, finalizer)
            .await
        {
            Err(e) if e.is_conflict() && expected.is_none() => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or_else(|| ApiError::conflict(&t.kind.resource(), name)))
}
