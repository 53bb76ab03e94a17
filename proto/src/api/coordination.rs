//! The `coordination.k8s.io/v1` group: Lease, which agents renew as their heartbeat.

use serde::{Deserialize, Serialize};

use crate::resource;

resource!(Lease, "coordination.k8s.io/v1", "leases", true, {
    #[serde(default)]
    pub spec: LeaseSpec,
});

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub holder_identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i64>,
}

/// The namespace node heartbeat Leases live in, as in Kubernetes.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
