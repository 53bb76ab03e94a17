//! Label and field selectors from query strings (`app=web,tier!=db`,
//! `env in (a,b)`, `!legacy`; `spec.nodeName=n1,status.phase!=Running`).

use keel_proto::api::meta::{LabelSelector, LabelSelectorRequirement};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::str_at;

/// Parses a label selector string into a [`LabelSelector`].
pub fn labels(s: &str) -> Result<LabelSelector, ApiError> {
    let mut sel = LabelSelector::default();
    for term in split_terms(s)? {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let bad = || {
            ApiError::bad_request(format!(
                "unable to parse requirement: invalid label selector term {term:?}"
            ))
        };
        let req = if let Some(k) = term.strip_prefix('!') {
            req(k.trim(), "DoesNotExist", vec![])
        } else if let Some((k, v)) = term.split_once("!=") {
            req(k.trim(), "NotIn", vec![v.trim().to_string()])
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            req(k.trim(), "In", vec![v.trim().to_string()])
        } else if let Some((k, rest)) = split_set(term, " notin ") {
            req(k, "NotIn", set_values(rest).ok_or_else(bad)?)
        } else if let Some((k, rest)) = split_set(term, " in ") {
            req(k, "In", set_values(rest).ok_or_else(bad)?)
        } else {
            req(term, "Exists", vec![])
        };
        if req.key.is_empty()
            || !req
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
            || req.values.iter().any(|v| {
                !v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
        {
            return Err(bad());
        }
        sel.match_expressions.push(req);
    }
    Ok(sel)
}

fn req(key: &str, op: &str, values: Vec<String>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_string(),
        operator: op.to_string(),
        values,
    }
}

fn split_set<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    term.split_once(op).map(|(k, r)| (k.trim(), r.trim()))
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    (!vals.iter().any(String::is_empty)).then_some(vals)
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, ApiError> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(ApiError::bad_request(format!(
                "unbalanced parentheses in selector {s:?}"
            )));
        }
    }
    if depth != 0 {
        return Err(ApiError::bad_request(format!(
            "unbalanced parentheses in selector {s:?}"
        )));
    }
    out.push(&s[start..]);
    Ok(out)
}

/// One `field=value` or `field!=value` requirement.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldReq {
    path: &'static [&'static str],
    value: String,
    equal: bool,
}

/// The fields that can be selected on: those Kubernetes supports for pods,
/// and for events (what `kubectl describe` selects an object's events by).
const FIELDS: [(&str, &[&str]); 13] = [
    ("metadata.name", &["metadata", "name"]),
    ("metadata.namespace", &["metadata", "namespace"]),
    ("spec.nodeName", &["spec", "nodeName"]),
    ("status.phase", &["status", "phase"]),
    ("involvedObject.kind", &["involvedObject", "kind"]),
    ("involvedObject.namespace", &["involvedObject", "namespace"]),
    ("involvedObject.name", &["involvedObject", "name"]),
    ("involvedObject.uid", &["involvedObject", "uid"]),
    (
        "involvedObject.apiVersion",
        &["involvedObject", "apiVersion"],
    ),
    (
        "involvedObject.resourceVersion",
        &["involvedObject", "resourceVersion"],
    ),
    ("involvedObject.fieldPath", &["involvedObject", "fieldPath"]),
    ("reason", &["reason"]),
    ("type", &["type"]),
];

/// Parses a field selector.
pub fn fields(s: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v, equal) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector term {term:?}: expected field=value or field!=value"
            )));
        };
        let path = FIELDS
            .iter()
            .find(|(name, _)| *name == k.trim())
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                ApiError::bad_request(format!("field label not supported: {}", k.trim()))
            })?;
        out.push(FieldReq {
            path,
            value: v.trim().to_string(),
            equal,
        });
    }
    Ok(out)
}

/// Whether an object satisfies every field requirement.
pub fn fields_match(reqs: &[FieldReq], obj: &Value) -> bool {
    reqs.iter()
        .all(|r| (str_at(obj, r.path) == r.value) == r.equal)
}

/// Whether an object's labels satisfy the selector.
pub fn labels_match(sel: &LabelSelector, obj: &Value) -> bool {
    if sel.is_empty() {
        return true;
    }
    let labels = obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    sel.matches(&labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "env": "prod"}}});
        for (s, want) in [
            ("app=web", true),
            ("app==web,env=prod", true),
            ("app!=web", false),
            ("env in (prod, dev)", true),
            ("env notin (prod)", false),
            ("app", true),
            ("!app", false),
            ("!tier", true),
            ("", true),
        ] {
            assert_eq!(labels_match(&labels(s).unwrap(), &obj), want, "{s}");
        }
        for bad in ["app in (a", "app in ()", "=x", "a b=c", "app=(x)"] {
            assert!(labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_field_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(fields_match(&fields("spec.nodeName=n1").unwrap(), &pod));
        assert!(!fields_match(&fields("spec.nodeName!=n1").unwrap(), &pod));
        assert!(fields_match(&fields("spec.nodeName=").unwrap(), &json!({})));
        assert!(fields_match(
            &fields("metadata.name=p,status.phase=Running").unwrap(),
            &pod
        ));
        assert!(fields("spec.bogus=1").is_err());
        let ev = json!({"involvedObject": {"kind": "Pod", "name": "p", "uid": "u1"}});
        assert!(fields_match(
            &fields("involvedObject.name=p,involvedObject.uid=u1,involvedObject.kind=Pod").unwrap(),
            &ev
        ));
        assert!(!fields_match(
            &fields("involvedObject.uid=u2").unwrap(),
            &ev
        ));
        assert!(fields("nonsense").is_err());
    }
}
