//! Server-side apply (`PATCH` with `application/apply-patch+yaml`,
//! `kubectl apply --server-side`): the object is created if absent, else
//! the applied configuration is merged into it (strategic merge), and the
//! fields the configuration sets are recorded as the field manager's in
//! `metadata.managedFields` (operation `Apply`, `FieldsV1` as Kubernetes
//! writes it: `f:<field>`, `k:{"name":...}` for an element of a keyed list,
//! `.` for the element itself). A field the manager applied before and
//! leaves out now is removed, unless another manager also applies it. A
//! field another manager applied with a different value is a 409 conflict
//! naming the manager and the field, unless `force=true`, which moves it to
//! this manager. Only `Apply` managers are tracked: writes by PUT and the
//! other patches do not take fields over (a simplification of Kubernetes).

use std::collections::BTreeSet;

use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::patch;
use crate::error::ApiError;

/// The Content-Type of an apply patch.
pub const CONTENT_TYPE: &str = "application/apply-patch+yaml";

/// Whether a request's body is an apply patch.
pub fn is_apply(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim() == CONTENT_TYPE)
}

/// One field: `f:spec`, `f:containers`, `k:{"name":"web"}`, ...
type FieldPath = Vec<String>;

/// The fields a configuration sets: every leaf (scalars, atomic lists,
/// empty objects), every element of a keyed list; never `apiVersion`,
/// `kind`, the name or the namespace, which say which object it is.
pub fn fields(config: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let mut at = Vec::new();
    if let Some(m) = config.as_object() {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" || k == "status" {
                continue;
            }
            at.push(format!("f:{k}"));
            if k == "metadata" {
                if let Some(meta) = v.as_object() {
                    for (mk, mv) in meta {
                        if matches!(
                            mk.as_str(),
                            "name" | "namespace" | "resourceVersion" | "managedFields"
                        ) {
                            continue;
                        }
                        at.push(format!("f:{mk}"));
                        walk(mv, &mut at, &mut out);
                        at.pop();
                    }
                }
            } else {
                walk(v, &mut at, &mut out);
            }
            at.pop();
        }
    }
    out
}

fn walk(v: &Value, at: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                at.push(format!("f:{k}"));
                walk(x, at, out);
                at.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let field = at.last().and_then(|s| s.strip_prefix("f:")).unwrap_or("");
            match patch::merge_key(field, items) {
                Some(key) => {
                    for it in items {
                        at.push(format!("k:{}", json!({key: it[key]})));
                        out.insert(at.clone());
                        walk(it, at, out);
                        at.pop();
                    }
                }
                None => {
                    out.insert(at.clone());
                }
            }
        }
        _ => {
            out.insert(at.clone());
        }
    }
}

/// `FieldsV1`: the set as nested objects, `.` marking a keyed element.
pub fn to_fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut m = &mut root;
        for seg in path {
            m = m
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object");
        }
        if path.last().is_some_and(|s| s.starts_with("k:")) {
            m.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// The set a `FieldsV1` object holds.
pub fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn go(v: &Value, at: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m.iter().filter(|(k, _)| *k != ".").collect();
        if (children.is_empty() || m.contains_key(".")) && !at.is_empty() {
            out.insert(at.clone());
        }
        for (k, x) in children {
            at.push(k.clone());
            go(x, at, out);
            at.pop();
        }
    }
    let mut out = BTreeSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// The value at `path` in `doc`.
fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = doc;
    for seg in path {
        v = step(v, seg)?;
    }
    Some(v)
}

fn step<'a>(v: &'a Value, seg: &str) -> Option<&'a Value> {
    if let Some(f) = seg.strip_prefix("f:") {
        return v.get(f);
    }
    let key: Map<String, Value> = serde_json::from_str(seg.strip_prefix("k:")?).ok()?;
    v.as_array()?
        .iter()
        .find(|it| key.iter().all(|(k, x)| it.get(k) == Some(x)))
}

/// Removes the field at `path` from `doc` (nothing if it is not there).
fn remove(doc: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut v = doc;
    for seg in parent {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            v.get_mut(f)
        } else {
            let Some(key) = seg
                .strip_prefix("k:")
                .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
            else {
                return;
            };
            v.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|it| key.iter().all(|(k, x)| it.get(k) == Some(x)))
            })
        };
        let Some(n) = next else { return };
        v = n;
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
    } else if let (Some(a), Some(key)) = (
        v.as_array_mut(),
        last.strip_prefix("k:")
            .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok()),
    ) {
        a.retain(|it| !key.iter().all(|(k, x)| it.get(k) == Some(x)));
    }
}

/// `.spec.replicas`, `.spec.template.spec.containers[name="web"].image`.
fn show(path: &[String]) -> String {
    path.iter()
        .map(|s| match s.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => {
                let k: Map<String, Value> =
                    serde_json::from_str(s.strip_prefix("k:").unwrap_or("{}")).unwrap_or_default();
                let inner: Vec<String> = k.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", inner.join(","))
            }
        })
        .collect()
}

/// The managers' `Apply` entries of `obj`: (manager, fields).
fn appliers(obj: &Value) -> Vec<(String, BTreeSet<FieldPath>)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["operation"] == "Apply")
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or("").to_string(),
                from_fields_v1(&e["fieldsV1"]),
            )
        })
        .collect()
}

/// The object after `manager` applies `config` to `current` (None: it does
/// not exist yet), at time `now`.
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    let applied = fields(config);
    let mut others: Vec<(String, BTreeSet<FieldPath>)> = Vec::new();
    let mut mine = BTreeSet::new();
    for (m, set) in current.map(appliers).unwrap_or_default() {
        if m == manager {
            mine = set;
        } else {
            others.push((m, set));
        }
    }
    let mut doc = current.cloned().unwrap_or_else(|| json!({}));
    // Conflicts: a field another manager applies, with another value.
    let mut conflicts = Vec::new();
    for (m, set) in &mut others {
        let taken: Vec<FieldPath> = set
            .iter()
            .filter(|p| {
                // An element of a keyed list is shared; its fields conflict.
                let element = p.last().is_some_and(|s| s.starts_with("k:"));
                applied.contains(*p) && !element && get(&doc, p) != get(config, p)
            })
            .cloned()
            .collect();
        if force {
            for p in &taken {
                set.remove(p);
            }
        } else {
            conflicts.extend(
                taken
                    .iter()
                    .map(|p| format!("conflict with \"{m}\": {}", show(p))),
            );
        }
    }
    if !conflicts.is_empty() {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                conflicts.join("; ")
            ),
        );
        let name = config["metadata"]["name"].as_str().unwrap_or("");
        let kind = config["kind"].as_str().unwrap_or("");
        e.details = Some(Box::new(crate::error::Details {
            name: name.to_string(),
            group: String::new(),
            kind: kind.to_string(),
            causes: conflicts
                .iter()
                .map(|c| (String::new(), c.clone()))
                .collect(),
        }));
        return Err(e);
    }
    // Fields this manager no longer applies go, unless another applies them.
    let mut gone: Vec<&FieldPath> = mine
        .difference(&applied)
        .filter(|p| !others.iter().any(|(_, s)| s.contains(*p)))
        .collect();
    // Outer fields first: an element goes whole, before its key field
    // could be taken from it.
    gone.sort_by_key(|p| p.len());
    for p in gone {
        remove(&mut doc, p);
    }
    patch::apply(&mut doc, patch::Format::Strategic, config)?;
    let mut entries: Vec<Value> = current
        .and_then(|c| c["metadata"]["managedFields"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !(e["operation"] == "Apply"))
        .collect();
    let entry = |m: &str, set: &BTreeSet<FieldPath>| {
        json!({
            "manager": m,
            "operation": "Apply",
            "apiVersion": config["apiVersion"],
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(set),
        })
    };
    for (m, set) in &others {
        if !set.is_empty() {
            entries.push(entry(m, set));
        }
    }
    entries.push(entry(manager, &applied));
    doc["metadata"]["managedFields"] = Value::Array(entries);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, env: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "main", "image": "busybox", "env": env}]}}}})
    }

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let set = fields(&deploy(2, json!([{"name": "A", "value": "1"}])));
        assert!(set.contains(&vec!["f:spec".to_string(), "f:replicas".to_string()]));
        assert!(
            !set.iter()
                .any(|p| p.contains(&"f:name".to_string()) && p.len() == 2)
        );
        let v1 = to_fields_v1(&set);
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"main\"}"]["."]
                .is_object(),
            "{v1}"
        );
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn a_field_left_out_is_removed_and_others_are_kept() {
        let first = apply(
            None,
            &deploy(2, json!([{"name": "A", "value": "1"}])),
            "kubectl",
            false,
            "t1",
        )
        .unwrap();
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "kubectl");
        // Something else sets a field apply never set: it stays.
        let mut cur = first.clone();
        cur["spec"]["paused"] = json!(true);
        let second = apply(Some(&cur), &deploy(3, json!([])), "kubectl", false, "t2").unwrap();
        assert_eq!(second["spec"]["replicas"], 3);
        assert_eq!(second["spec"]["paused"], true);
        let c = &second["spec"]["template"]["spec"]["containers"][0];
        assert!(c["env"].as_array().is_none_or(|e| e.is_empty()), "{c}");
        assert_eq!(c["image"], "busybox");
        assert_eq!(
            second["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let a = apply(None, &deploy(2, json!([])), "a", false, "t1").unwrap();
        let e = apply(Some(&a), &deploy(5, json!([])), "b", false, "t2").unwrap_err();
        assert_eq!(e.code, 409);
        assert!(
            e.message
                .contains("Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"),
            "{}",
            e.message
        );
        // The same value is no conflict: both own it.
        let shared = apply(Some(&a), &deploy(2, json!([])), "b", false, "t2").unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let forced = apply(Some(&a), &deploy(5, json!([])), "b", true, "t2").unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        // a no longer owns replicas: leaving it out later keeps b's value.
        let a_again = apply(
            Some(&forced),
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": "busybox"}]}}}}),
            "a",
            false,
            "t3",
        )
        .unwrap();
        assert_eq!(a_again["spec"]["replicas"], 5);
    }
}
