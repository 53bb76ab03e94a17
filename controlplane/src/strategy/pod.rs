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
