//! The ReplicaSet and Deployment strategies: replicas, a selector that
//! matches the pod template, the template's pod spec, and a Deployment's
//! update strategy.

use keel_proto::api;
use serde_json::Value;

use super::{KindStrategy, pod_spec};
use crate::error::ApiError;
use crate::validate::decode;

pub struct ReplicaSetStrategy;

impl KindStrategy for ReplicaSetStrategy {
    fn validate(&self, obj: &Value) -> Result<(), ApiError> {
        let rs: api::ReplicaSet = decode(obj.clone())?;
        workload(rs.spec.replicas, &rs.spec.selector, &rs.spec.template)
    }
}

pub struct DeploymentStrategy;

impl KindStrategy for DeploymentStrategy {
    fn validate(&self, obj: &Value) -> Result<(), ApiError> {
        let d: api::Deployment = decode(obj.clone())?;
        workload(d.spec.replicas, &d.spec.selector, &d.spec.template)?;
        let Some(s) = &d.spec.strategy else {
            return Ok(());
        };
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
                    ApiError::invalid(format!("spec.strategy.rollingUpdate.maxUnavailable: {e}"))
                })?,
            );
            if surge.unwrap_or(1) == 0 && unavail.unwrap_or(1) == 0 {
                return Err(ApiError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0",
                ));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_must_match_template() {
        let v = serde_json::json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},
            "spec":{"selector":{"matchLabels":{"app":"a"}},
                    "template":{"metadata":{"labels":{"app":"b"}},"spec":{"containers":[{"name":"c"}]}}}});
        let e = DeploymentStrategy.validate(&v).unwrap_err();
        assert!(e.message.contains("selector"), "{}", e.message);
    }
}
