//! The `scale` subresource of Deployments and ReplicaSets: their
//! `spec.replicas` as an `autoscaling/v1` Scale, read, replaced or patched
//! (what `kubectl scale` and autoscalers use).

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::codec::respond;
use super::handlers;
use super::route::Target;
use crate::error::ApiError;
use crate::registry::{Registry, str_at};

/// The Scale of a Deployment or ReplicaSet.
pub fn of(obj: &Value) -> Value {
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"],
            "namespace": m["namespace"],
            "uid": m["uid"],
            "resourceVersion": m["resourceVersion"],
            "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector.join(","),
        },
    })
}

/// `cur` with the replicas (and resourceVersion, if any) of `scale`.
pub fn into(scale: Value, cur: &Value) -> Result<Value, ApiError> {
    let name = str_at(cur, &["metadata", "name"]).to_string();
    let invalid = |detail: String| {
        ApiError::invalid(format!("spec.replicas: {detail}")).invalid_object(
            "Scale",
            "autoscaling",
            &name,
        )
    };
    let r = &scale["spec"]["replicas"];
    let replicas = match r.as_i64() {
        Some(n) if n >= 0 && n <= i32::MAX as i64 => n,
        Some(n) => {
            return Err(invalid(format!(
                "Invalid value: {n}: must be greater than or equal to 0"
            )));
        }
        None => return Err(invalid(format!("Invalid value: {r}: must be an integer"))),
    };
    let mut obj = cur.clone();
    obj["spec"]["replicas"] = json!(replicas);
    match str_at(&scale, &["metadata", "resourceVersion"]) {
        "" => {}
        rv => obj["metadata"]["resourceVersion"] = json!(rv),
    }
    Ok(obj)
}

pub async fn get(reg: &Registry, t: &Target, headers: &HeaderMap) -> Result<Response, ApiError> {
    let ns = t.namespace.as_deref().unwrap_or("");
    let obj = reg.get(t.kind, ns, t.name.as_deref().unwrap_or("")).await?;
    Ok(respond(headers, 200, &of(&obj)))
}

pub async fn replace(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    body: Value,
) -> Result<Response, ApiError> {
    let ns = t.namespace.as_deref().unwrap_or("");
    let name = t.name.as_deref().unwrap_or("");
    match (str_at(&body, &["apiVersion"]), str_at(&body, &["kind"])) {
        ("" | "autoscaling/v1", "" | "Scale") => {}
        (a, k) => {
            return Err(ApiError::bad_request(format!(
                "the scale subresource takes an autoscaling/v1 Scale, not {a}/{k}"
            )));
        }
    }
    let cur = reg.get(t.kind, ns, name).await?;
    let obj = (t.kind.check)(into(body, &cur)?)?;
    let updated = reg.update(t.kind, obj, false).await?;
    Ok(respond(headers, 200, &of(&updated)))
}

pub async fn patch(
    reg: &Registry,
    t: &Target,
    headers: &HeaderMap,
    body: &[u8],
    caller: Option<&crate::auth::Identity>,
) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or("");
    let updated = handlers::patch_object(reg, t, headers, name, body, caller, into).await?;
    Ok(respond(headers, 200, &of(&updated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_reads_and_writes_replicas() {
        let d = json!({"metadata": {"name": "web", "namespace": "d", "resourceVersion": "5"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 1}});
        let s = of(&d);
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web");
        let back = into(json!({"spec": {"replicas": 4}}), &d).unwrap();
        assert_eq!(back["spec"]["replicas"], 4);
        assert_eq!(back["metadata"]["resourceVersion"], "5");
        let e = into(json!({"spec": {"replicas": -1}}), &d).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("spec.replicas"), "{}", e.message);
        assert!(into(json!({"spec": {"replicas": "x"}}), &d).is_err());
    }
}
