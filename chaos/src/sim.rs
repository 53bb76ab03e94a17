//! Stand-ins for what a test or benchmark without agents lacks: Ready nodes
//! created through the API, and a kubelet that marks bound pods Running and
//! Ready through the status subresource (as Kubernetes' own tests do).

use keel_proto::api::core::ContainerStatus;
use keel_proto::api::meta::{Condition, now_rfc3339};
use keel_proto::api::{Node, Pod};
use keel_proto::client::{ApiClient, ClientError};

/// A Ready node in `zone` with `cpu` and `memory` allocatable and 110 pod slots.
pub fn node(name: &str, zone: &str, cpu: &str, memory: &str) -> Node {
    let mut n = Node::new("", name);
    n.metadata
        .labels
        .insert("topology.kubernetes.io/zone".into(), zone.into());
    n.metadata
        .labels
        .insert("keel.dev/simulated".into(), "true".into());
    for (k, v) in [("cpu", cpu), ("memory", memory), ("pods", "110")] {
        n.status.capacity.insert(k.into(), v.into());
        n.status.allocatable.insert(k.into(), v.into());
    }
    n.status.conditions.push(Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Simulated".into(),
        last_heartbeat_time: Some(now_rfc3339()),
        ..Default::default()
    });
    n
}

/// Marks every bound, not yet ready pod of `ns` Running and Ready.
pub async fn mark_ready(c: &ApiClient, ns: &str) -> Result<(), ClientError> {
    for mut p in c.list::<Pod>(ns, "").await?.items {
        if p.spec.node_name.is_empty() || p.is_ready() || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let now = now_rfc3339();
        p.status.phase = "Running".into();
        p.status.pod_ip = "10.0.0.1".into();
        p.status.start_time = Some(now.clone());
        p.status.conditions = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(now),
            ..Default::default()
        }];
        p.status.container_statuses = p
            .spec
            .containers
            .iter()
            .map(|ct| ContainerStatus {
                name: ct.name.clone(),
                ready: true,
                started: Some(true),
                ..Default::default()
            })
            .collect();
        // A conflict means the pod changed; the next pass retries.
        let _ = c.update_status(&p).await;
    }
    Ok(())
}
