//! The Pod strategy: a pod spec's rules (also the template's of the
//! workload kinds).

use keel_proto::api::{self, quantity};
use serde_json::Value;

use super::KindStrategy;
use crate::error::ApiError;
use crate::validate::{decode, label};

pub struct PodStrategy;

impl KindStrategy for PodStrategy {
    fn validate(&self, obj: &Value) -> Result<(), ApiError> {
        pod_spec(&decode::<api::Pod>(obj.clone())?.spec, "spec")
    }
}

/// The rules of a pod spec, with `at` naming where it sits in the object.
pub fn pod_spec(spec: &api::core::PodSpec, at: &str) -> Result<(), ApiError> {
    if spec.containers.is_empty() {
        return Err(ApiError::invalid(format!(
            "{at}.containers: Required value"
        )));
    }
    unique_names(
        spec.containers.iter().map(|c| c.name.as_str()),
        &format!("{at}.containers"),
    )?;
    security_context(
        spec.security_context.as_ref(),
        &format!("{at}.securityContext"),
    )?;
    for (i, c) in spec.containers.iter().enumerate() {
        security_context(
            c.security_context.as_ref(),
            &format!("{at}.containers[{i}].securityContext"),
        )?;
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
    unique_names(
        spec.volumes.iter().map(|v| v.name.as_str()),
        &format!("{at}.volumes"),
    )?;
    for (i, v) in spec.volumes.iter().enumerate() {
        if v.empty_dir.is_some() && v.host_path.is_some() {
            return Err(ApiError::invalid(format!(
                "{at}.volumes[{i}]: Forbidden: may not specify more than 1 volume type"
            )));
        }
        if let Some(h) = &v.host_path {
            host_path(h)
                .map_err(|e| ApiError::invalid(format!("{at}.volumes[{i}].hostPath.{e}")))?;
        }
    }
    match spec.restart_policy.as_str() {
        "" | "Always" | "OnFailure" | "Never" => Ok(()),
        p => Err(ApiError::invalid(format!(
            "{at}.restartPolicy: Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
        ))),
    }
}

/// User and group ids between 0 and 2147483647, as Kubernetes has them.
fn security_context(sc: Option<&api::core::SecurityContext>, at: &str) -> Result<(), ApiError> {
    let Some(sc) = sc else { return Ok(()) };
    for (field, v) in [
        ("runAsUser", sc.run_as_user),
        ("runAsGroup", sc.run_as_group),
    ] {
        if let Some(id) = v
            && !(0..=i64::from(i32::MAX)).contains(&id)
        {
            return Err(ApiError::invalid(format!(
                "{at}.{field}: Invalid value: {id}: must be between 0 and 2147483647, inclusive"
            )));
        }
    }
    Ok(())
}

/// Every name a valid label and none twice (`at` names the list).
fn unique_names<'a>(names: impl Iterator<Item = &'a str>, at: &str) -> Result<(), ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in names.enumerate() {
        label(n).map_err(|e| ApiError::invalid(format!("{at}[{i}].name: {e}")))?;
        if !seen.insert(n) {
            return Err(ApiError::invalid(format!(
                "{at}[{i}].name: Duplicate value: {n:?}"
            )));
        }
    }
    Ok(())
}

/// A hostPath source: an absolute, clean path and a known type.
fn host_path(h: &api::core::HostPathVolumeSource) -> Result<(), String> {
    if !h.path.starts_with('/') {
        return Err(format!(
            "path: Invalid value: {:?}: must be an absolute path",
            h.path
        ));
    }
    if h.path.split('/').any(|c| c == "..") {
        return Err(format!(
            "path: Invalid value: {:?}: must not contain '..'",
            h.path
        ));
    }
    if !api::core::HOST_PATH_TYPES.contains(&h.type_.as_str()) {
        let known: Vec<String> = api::core::HOST_PATH_TYPES[1..]
            .iter()
            .map(|t| format!("{t:?}"))
            .collect();
        return Err(format!(
            "type: Unsupported value: {:?}: supported values: \"\", {}",
            h.type_,
            known.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with(volumes: Value) -> Result<(), ApiError> {
        let spec: api::core::PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "c", "image": "i"}],
            "volumes": volumes,
        }))
        .unwrap();
        pod_spec(&spec, "spec")
    }

    #[test]
    fn volumes_have_one_source_unique_names_and_clean_host_paths() {
        assert!(spec_with(json!([{"name": "d", "emptyDir": {}}])).is_ok());
        assert!(spec_with(json!([{"name": "h", "hostPath": {"path": "/var/log"}}])).is_ok());
        assert!(
            spec_with(
                json!([{"name": "h", "hostPath": {"path": "/x", "type": "DirectoryOrCreate"}}])
            )
            .is_ok()
        );
        let cases = [
            (
                json!([{"name": "h", "hostPath": {"path": "var/log"}}]),
                "spec.volumes[0].hostPath.path",
            ),
            (
                json!([{"name": "h", "hostPath": {"path": "/a/../etc"}}]),
                "'..'",
            ),
            (
                json!([{"name": "h", "hostPath": {"path": "/a", "type": "Dir"}}]),
                "hostPath.type: Unsupported value",
            ),
            (
                json!([{"name": "b", "emptyDir": {}, "hostPath": {"path": "/a"}}]),
                "more than 1 volume type",
            ),
            (
                json!([{"name": "d", "emptyDir": {}}, {"name": "d", "emptyDir": {}}]),
                "spec.volumes[1].name: Duplicate value",
            ),
            (
                json!([{"name": "Bad_Name", "emptyDir": {}}]),
                "spec.volumes[0].name",
            ),
        ];
        for (volumes, want) in cases {
            let e = spec_with(volumes.clone()).unwrap_err();
            assert_eq!(e.code, 422, "{volumes}");
            assert!(e.message.contains(want), "{volumes}: {}", e.message);
        }
    }

    #[test]
    fn run_as_ids_are_between_0_and_2_pow_31() {
        let spec = |sc: Value| -> Result<(), ApiError> {
            let spec: api::core::PodSpec = serde_json::from_value(json!({
                "containers": [{"name": "c", "securityContext": sc}],
            }))
            .unwrap();
            pod_spec(&spec, "spec")
        };
        assert!(spec(json!({"runAsUser": 1000, "runAsGroup": 0})).is_ok());
        let e = spec(json!({"runAsUser": -1})).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .contains("spec.containers[0].securityContext.runAsUser: Invalid value: -1"),
            "{}",
            e.message
        );
        assert!(spec(json!({"runAsGroup": 4_294_967_296_i64})).is_err());
    }
}
