//! Admission checks: strict decoding (an unknown or mistyped field is named
//! in a 422), object names, and the per-kind rules a manifest must satisfy.

use keel_proto::api::{self, Resource, quantity};
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

/// The rules every object and its kind must satisfy.
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
    let v = serde_json::to_value(obj).map_err(|e| ApiError::internal(e.to_string()))?;
    match T::KIND {
        "Pod" => pod_spec(&decode::<api::Pod>(v)?.spec, "spec"),
        "ReplicaSet" => {
            let rs: api::ReplicaSet = decode(v)?;
            workload(rs.spec.replicas, &rs.spec.selector, &rs.spec.template)
        }
        "Deployment" => {
            let d: api::Deployment = decode(v)?;
            workload(d.spec.replicas, &d.spec.selector, &d.spec.template)?;
            if let Some(s) = &d.spec.strategy {
                match s.type_.as_str() {
                    "" | "RollingUpdate" | "Recreate" => {}
                    t => {
                        return Err(ApiError::invalid(format!(
                            "spec.strategy.type: Unsupported value: {t:?}: supported values: \"Recreate\", \"RollingUpdate\""
                        )));
                    }
                }
                if let Some(ru) = &s.rolling_update {
                    let r = d.replicas();
                    let surge = ru.max_surge.as_ref().map(|x| x.scaled(r, true)).transpose();
                    let unavail = ru
                        .max_unavailable
                        .as_ref()
                        .map(|x| x.scaled(r, false))
                        .transpose();
                    let (surge, unavail) = (
                        surge.map_err(|e| {
                            ApiError::invalid(format!("spec.strategy.rollingUpdate.maxSurge: {e}"))
                        })?,
                        unavail.map_err(|e| {
                            ApiError::invalid(format!(
                                "spec.strategy.rollingUpdate.maxUnavailable: {e}"
                            ))
                        })?,
                    );
                    if surge.unwrap_or(1) == 0 && unavail.unwrap_or(1) == 0 {
                        return Err(ApiError::invalid(
                            "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0",
                        ));
                    }
                }
            }
            Ok(())
        }
        "Service" => {
            let s: api::Service = decode(v)?;
            if s.spec.ports.is_empty() {
                return Err(ApiError::invalid("spec.ports: Required value"));
            }
            for (i, p) in s.spec.ports.iter().enumerate() {
                if !(1..=65535).contains(&p.port) {
                    return Err(ApiError::invalid(format!(
                        "spec.ports[{i}].port: Invalid value: {}: must be between 1 and 65535",
                        p.port
                    )));
                }
            }
            match s.spec.type_.as_str() {
                "" | "ClusterIP" => Ok(()),
                t => Err(ApiError::invalid(format!(
                    "spec.type: Unsupported value: {t:?}: supported values: \"ClusterIP\""
                ))),
            }
        }
        _ => Ok(()),
    }
}

fn workload(
    replicas: Option<i64>,
    selector: &api::LabelSelector,
    template: &api::apps::PodTemplateSpec,
) -> Result<(), ApiError> {
    if replicas.is_some_and(|r| r < 0) {
        return Err(ApiError::invalid(
            "spec.replicas: Invalid value: must be greater than or equal to 0",
        ));
    }
    if selector.is_empty() {
        return Err(ApiError::invalid("spec.selector: Required value"));
    }
    if !selector.matches(&template.metadata.labels) {
        return Err(ApiError::invalid(
            "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`",
        ));
    }
    pod_spec(&template.spec, "spec.template.spec")
}

/// The rules of a pod spec, with `at` naming where it sits in the object.
pub fn pod_spec(spec: &api::core::PodSpec, at: &str) -> Result<(), ApiError> {
    if spec.containers.is_empty() {
        return Err(ApiError::invalid(format!(
            "{at}.containers: Required value"
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        label(&c.name).map_err(|e| ApiError::invalid(format!("{at}.containers[{i}].name: {e}")))?;
        if !names.insert(&c.name) {
            return Err(ApiError::invalid(format!(
                "{at}.containers[{i}].name: Duplicate value: {:?}",
                c.name
            )));
        }
        if let Some(r) = &c.resources {
            for (k, q) in r.requests.iter().chain(r.limits.iter()) {
                quantity::parse(k, q).map_err(|e| {
                    ApiError::invalid(format!("{at}.containers[{i}].resources: {e}"))
                })?;
            }
        }
        for (j, p) in c.ports.iter().enumerate() {
            if !(1..=65535).contains(&p.container_port) {
                return Err(ApiError::invalid(format!(
                    "{at}.containers[{i}].ports[{j}].containerPort: Invalid value: {}: must be between 1 and 65535",
                    p.container_port
                )));
            }
        }
    }
    match spec.restart_policy.as_str() {
        "" | "Always" | "OnFailure" | "Never" => Ok(()),
        p => Err(ApiError::invalid(format!(
            "{at}.restartPolicy: Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn selector_must_match_template() {
        let v = serde_json::json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},
            "spec":{"selector":{"matchLabels":{"app":"a"}},
                    "template":{"metadata":{"labels":{"app":"b"}},"spec":{"containers":[{"name":"c"}]}}}});
        let d: api::Deployment = decode(v).unwrap();
        let e = object(&d).unwrap_err();
        assert!(e.message.contains("selector"), "{}", e.message);
    }
}
