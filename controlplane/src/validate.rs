//! Admission checks: strict decoding (an unknown or mistyped field is named
//! in a 422) and the rules of names and labels every object must satisfy
//! (each kind's own rules are its strategy's, `strategy::KindStrategy::validate`).

use keel_proto::api::Resource;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// Decodes `v` into `T`, naming the exact path of any field that is unknown
/// or has the wrong type.
pub fn decode<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if inner.starts_with("unknown field") {
            ApiError::invalid(format!("field not supported: {path}: {inner}"))
        } else {
            ApiError::invalid(format!("invalid value at {path}: {inner}"))
        }
    })
}

/// A DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253
/// characters, starting and ending with an alphanumeric.
pub fn subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "invalid name {name:?}: must be 1 to 253 characters"
        ));
    }
    name.split('.').try_for_each(|part| label(part).map(|_| ()))
        .map_err(|_| format!("invalid name {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"))
}

/// A DNS-1123 label: like a subdomain without dots, at most 63 characters.
pub fn label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', start and end with an alphanumeric character, and be at most 63 characters"
        ))
    }
}

/// A label key (optional DNS prefix and '/', then a name of at most 63
/// characters) and value (at most 63 characters, alphanumerics, '-', '_', '.').
fn label_pair(k: &str, v: &str) -> Result<(), String> {
    let name = match k.split_once('/') {
        Some((prefix, name)) => {
            subdomain(prefix).map_err(|_| format!("invalid label key {k:?}"))?;
            name
        }
        None => k,
    };
    let good = |s: &str, empty_ok: bool| {
        (empty_ok || !s.is_empty())
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    if !good(name, false) {
        return Err(format!("invalid label key {k:?}"));
    }
    if !good(v, true) {
        return Err(format!("invalid label value {v:?} for key {k:?}"));
    }
    Ok(())
}

/// The rules every object must satisfy (names, labels, namespace).
pub fn object<T: Resource>(obj: &T) -> Result<(), ApiError> {
    let m = obj.meta();
    if !m.name.is_empty() {
        let r = if matches!(T::KIND, "Namespace" | "Service") {
            label(&m.name)
        } else {
            subdomain(&m.name)
        };
        r.map_err(|e| ApiError::invalid(format!("metadata.name: {e}")))?;
    } else if m.generate_name.is_empty() {
        return Err(ApiError::invalid(
            "metadata.name: Required value: name or generateName is required",
        ));
    }
    for (k, v) in &m.labels {
        label_pair(k, v).map_err(|e| ApiError::invalid(format!("metadata.labels: {e}")))?;
    }
    if !obj.meta().namespace.is_empty() {
        label(&m.namespace).map_err(|e| ApiError::invalid(format!("metadata.namespace: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api;

    #[test]
    fn names() {
        assert!(subdomain("web-1.example").is_ok());
        assert!(subdomain("Web").is_err());
        assert!(subdomain("-web").is_err());
        assert!(subdomain("").is_err());
        assert!(label("a.b").is_err());
        assert!(label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn unknown_fields_are_named() {
        let v = serde_json::json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"containers":[{"name":"c","imagee":"x"}]}});
        let e = decode::<api::Pod>(v).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("spec.containers[0].imagee"),
            "{}",
            e.message
        );
    }
}
