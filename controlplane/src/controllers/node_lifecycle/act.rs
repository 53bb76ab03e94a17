//! Carrying out one node lifecycle action: Ready=Unknown plus the
//! unreachable taint, Ready=True without it, or deleting a node's pods;
//! each logged and recorded as an Event on the Node.

use futures::StreamExt;
use keel_proto::api::core::Taint;
use keel_proto::api::meta::{Condition, condition, now_rfc3339, set_condition};
use keel_proto::api::{Node, Pod};

use super::{Action, UNREACHABLE_TAINT};
use crate::controllers::Ctx;
use crate::write;

/// Carries out `a` on `node`; `pods` are the live pods bound to some node.
pub async fn act(
    ctx: &Ctx,
    node: &Node,
    a: &Action,
    pods: &[std::sync::Arc<Pod>],
) -> Result<(), crate::ApiError> {
    let events = ctx.events.for_component("node-controller");
    let now = now_rfc3339();
    match a {
        Action::MarkUnreachable(name) => {
            let mut n = node.clone();
            set_condition(
                &mut n.status.conditions,
                Condition {
                    type_: "Ready".into(),
                    status: "Unknown".into(),
                    reason: "NodeStatusUnknown".into(),
                    message: "Kubelet stopped posting node status.".into(),
                    ..Default::default()
                },
                &now,
            );
            if !n.spec.taints.iter().any(|t| t.key == UNREACHABLE_TAINT) {
                n.spec.taints.push(Taint {
                    key: UNREACHABLE_TAINT.into(),
                    value: String::new(),
                    effect: "NoExecute".into(),
                });
            }
            write::replace(&ctx.registry, node, &n).await?;
            tracing::warn!(node = %name, "node NotReady: its Lease was not renewed within the grace period");
            events.warning(
                node,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady (Lease not renewed)"),
            );
        }
        Action::MarkReachable(name) => {
            let mut n = node.clone();
            n.spec.taints.retain(|t| t.key != UNREACHABLE_TAINT);
            if condition(&n.status.conditions, "Ready")
                .is_none_or(|c| c.reason == "NodeStatusUnknown")
            {
                set_condition(
                    &mut n.status.conditions,
                    Condition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        reason: "KubeletReady".into(),
                        message: "Node Lease renewed again.".into(),
                        ..Default::default()
                    },
                    &now,
                );
            }
            write::replace(&ctx.registry, node, &n).await?;
            tracing::info!(node = %name, "node Ready again: its Lease is renewed");
            events.normal(
                node,
                "NodeReady",
                format!("Node {name} status is now: NodeReady"),
            );
        }
        Action::Evict(name) => {
            let mine: Vec<&std::sync::Arc<Pod>> =
                pods.iter().filter(|p| &p.spec.node_name == name).collect();
            tracing::warn!(node = %name, pods = mine.len(), "evicting the pods of an unreachable node");
            events.warning(
                node,
                "EvictingPods",
                format!("Deleting {} pods of unreachable node {name}", mine.len()),
            );
            let reg = ctx.registry.clone();
            let mine: Vec<std::sync::Arc<Pod>> = mine.into_iter().cloned().collect();
            let results: Vec<Result<i64, crate::ApiError>> = futures::stream::iter(mine)
                .map(move |p| {
                    let reg = reg.clone();
                    async move { write::delete(&reg, &*p).await }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            for r in results {
                if let Err(e) = r
                    && !write::is_stale(&e)
                {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
