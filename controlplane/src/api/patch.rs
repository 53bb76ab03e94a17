//! The three patch formats of `PATCH`, by Content-Type: JSON patch (RFC
//! 6902), JSON merge patch (RFC 7386) and Kubernetes' strategic merge patch,
//! which Keel implements for its kinds as a merge patch whose lists of named
//! things merge by key (containers and initContainers by `name`, container
//! ports by `containerPort`, service ports by `port`, env by `name`, volumes
//! by `name`, volumeMounts by `mountPath`, conditions by `type`), honouring
//! the `$patch: delete|replace` and `$setElementOrder/<list>` directives
//! kubectl sends. `$retainKeys` and `$deleteFromPrimitiveList` are ignored.

use serde_json::Value;

use crate::error::ApiError;

/// A patch format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Merge,
    Strategic,
}

impl Format {
    /// The format a Content-Type names; 415 for any other.
    pub fn of(content_type: &str) -> Result<Format, ApiError> {
        let ct = content_type.split(';').next().unwrap_or("").trim();
        match ct {
            "application/json-patch+json" => Ok(Format::Json),
            "application/merge-patch+json" => Ok(Format::Merge),
            "application/strategic-merge-patch+json" => Ok(Format::Strategic),
            _ => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the patch content type {ct:?} is not supported: use application/json-patch+json, application/merge-patch+json or application/strategic-merge-patch+json"
                ),
            )),
        }
    }
}

/// Applies `patch` (already parsed as JSON) to `doc`.
pub fn apply(doc: &mut Value, format: Format, patch: &Value) -> Result<(), ApiError> {
    match format {
        Format::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("malformed JSON patch: {e}")))?;
            json_patch::patch(doc, &ops)
                .map_err(|e| ApiError::invalid(format!("the JSON patch does not apply: {e}")))
        }
        Format::Merge | Format::Strategic if !patch.is_object() => {
            Err(ApiError::bad_request("a merge patch must be a JSON object"))
        }
        Format::Merge => {
            json_patch::merge(doc, patch);
            Ok(())
        }
        Format::Strategic => {
            strategic(doc, patch);
            Ok(())
        }
    }
}

/// The key a list under `field` merges by, judged from its elements.
pub(super) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |k: &str| {
        items
            .iter()
            .all(|i| i.get(k).is_some() || i.get("$patch").is_some())
    };
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "conditions" | "addresses" => Some("type"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" if has("port") => Some("port"),
        _ => None,
    }
}

fn strategic(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut v = patch.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("$patch");
        }
        *target = v;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let mut orders = Vec::new();
    for (k, v) in p {
        if let Some(list) = k.strip_prefix("$setElementOrder/") {
            orders.push((list.to_string(), v.clone()));
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let t = target.as_object_mut().expect("an object");
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Array(items) => match merge_key(k, items) {
                Some(key) => {
                    let cur = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                    merge_list(cur, items, key);
                }
                None => {
                    t.insert(k.clone(), v.clone());
                }
            },
            Value::Object(_) => strategic(t.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    for (list, order) in orders {
        let t = target.as_object_mut().expect("an object");
        if let (Some(Value::Array(cur)), Some(order)) = (t.get_mut(&list), order.as_array()) {
            let Some(key) = merge_key(&list, order) else {
                continue;
            };
            let pos = |v: &Value| {
                order
                    .iter()
                    .position(|o| o.get(key) == v.get(key))
                    .unwrap_or(usize::MAX)
            };
            cur.sort_by_key(pos);
        }
    }
}

fn merge_list(cur: &mut Value, items: &[Value], key: &str) {
    if !cur.is_array() {
        *cur = Value::Array(vec![]);
    }
    let list = cur.as_array_mut().expect("an array");
    for item in items {
        let k = item.get(key);
        let at = list
            .iter()
            .position(|e| e.get(key).is_some() && e.get(key) == k);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(&mut list[i], item),
            (None, false) => {
                let mut e = Value::Null;
                strategic(&mut e, item);
                list.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_named_lists_by_key() {
        let mut d = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}
        ]}}}});
        let p = json!({"spec": {"replicas": 3, "template": {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
        "containers": [
            {"name": "a", "env": [{"name": "F", "value": "2"}]},
            {"name": "c", "image": "z"},
            {"name": "b", "$patch": "delete"}
        ]}}}});
        apply(&mut d, Format::Strategic, &p).unwrap();
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(cs.as_array().unwrap().len(), 2, "{cs}");
        assert_eq!(cs[0]["name"], "a");
        assert_eq!(cs[0]["image"], "x");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "E", "value": "1"}, {"name": "F", "value": "2"}])
        );
        assert_eq!(cs[1], json!({"name": "c", "image": "z"}));
        // A merge patch replaces the list instead.
        let mut m = json!({"l": [{"name": "a"}], "containers": [{"name": "a", "image": "x"}]});
        apply(
            &mut m,
            Format::Merge,
            &json!({"containers": [{"name": "b"}], "l": null}),
        )
        .unwrap();
        assert_eq!(m, json!({"containers": [{"name": "b"}]}));
        // Nulls delete; $patch: replace replaces a map.
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        apply(
            &mut d,
            Format::Strategic,
            &json!({"metadata": {"labels": {"a": null}}}),
        )
        .unwrap();
        assert_eq!(d, json!({"metadata": {"labels": {"b": "2"}}}));
        apply(
            &mut d,
            Format::Strategic,
            &json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(d, json!({"metadata": {"labels": {"c": "3"}}}));
        assert_eq!(Format::of("text/plain").unwrap_err().code, 415);
        assert!(apply(&mut d, Format::Strategic, &json!([1])).is_err());
    }
}
