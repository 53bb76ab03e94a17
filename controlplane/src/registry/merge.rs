//! The object an update stores, built from the request and the stored
//! object (server-owned metadata, status or spec by subresource, the
//! generation).

use serde_json::{Value, json};

use crate::kinds::Kind;

/// Builds the object an update stores: the request's fields over the stored
/// object's server-owned metadata, with status or spec kept as the
/// subresource rules say, and generation bumped when the spec changed.
pub(super) fn merge_update(kind: &Kind, old: &Value, req: Value, status_only: bool) -> Value {
    let mut new = if status_only {
        let mut n = old.clone();
        n["status"] = req.get("status").cloned().unwrap_or(Value::Null);
        n
    } else {
        let mut n = req;
        if kind.has_status {
            n["status"] = old.get("status").cloned().unwrap_or(Value::Null);
        }
        n
    };
    if new.get("status").is_some_and(Value::is_null) {
        new.as_object_mut().map(|o| o.remove("status"));
    }
    for f in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                new["metadata"].as_object_mut().map(|m| m.remove(f));
            }
        }
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let changed = old.get("spec") != new.get("spec");
    new["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
    new["apiVersion"] = json!(kind.api_version());
    new["kind"] = json!(kind.kind);
    new
}
