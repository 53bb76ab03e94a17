//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<template hash>`, the hash also a `pod-template-hash` label
//! on its selector, template and pods), rolled over by RollingUpdate within
//! maxSurge/maxUnavailable and pod readiness, or by Recreate; revision
//! numbers, history pruning, rollback through the `keel.dev/rollback-to`
//! annotation, pause (scaling still applies, the rollout does not progress),
//! and status with Progressing/Available conditions.
//!
//! The decision is `reconcile` (`reconcile.rs`): it builds a view of what
//! the Deployment owns (`plan.rs`), asks the strategy in force for a plan
//! (`strategy/`: rolling, recreate, paused), and emits each action once;
//! `history.rs` owns revisions, rollback and the history limit,
//! `status.rs` the status, `template.rs` template hashes and new
//! ReplicaSets. This file is the driver: what queues a Deployment, and the
//! executor that carries out the actions.

pub mod history;
pub mod plan;
pub mod reconcile;
pub mod status;
pub mod strategy;
pub mod template;

use std::time::Duration;

use futures::StreamExt;
use keel_proto::api::{Deployment, Pod, ReplicaSet};

pub use history::{DEFAULT_HISTORY_LIMIT, revision};
pub use reconcile::{Action, reconcile};
pub use strategy::surge_and_unavailable;
pub use template::{new_replicaset, template_hash};

use super::driver::{Controller, Outcome, ReconcileResult};
use super::{Ctx, Informers, owner_of, pod_active};
use crate::informer::{Delta, Key, key_of};
use crate::write;

/// The Deployment that controls `rs`, if one does.
fn deployment_key_for_rs(rs: &ReplicaSet) -> Option<Key> {
    owner_of(&rs.metadata, "Deployment").map(|o| (rs.metadata.namespace.clone(), o.name.clone()))
}

/// The Deployments a ReplicaSet change concerns: its owner, or for an
/// orphan every Deployment whose selector matches it (it may adopt it).
fn keys_for_rs(inf: &Informers, rs: &ReplicaSet) -> Vec<Key> {
    if let Some(k) = deployment_key_for_rs(rs) {
        return vec![k];
    }
    if rs.metadata.controller().is_some() {
        return vec![];
    }
    inf.deployments
        .filter(|d| {
            d.metadata.namespace == rs.metadata.namespace
                && !d.spec.selector.is_empty()
                && d.spec.selector.matches(&rs.metadata.labels)
        })
        .iter()
        .map(|d| key_of(&**d))
        .collect()
}

/// The Deployment whose ReplicaSet controls `p`, if any.
fn keys_for_pod(inf: &Informers, p: &Pod) -> Vec<Key> {
    owner_of(&p.metadata, "ReplicaSet")
        .and_then(|o| inf.replicasets.get(&p.metadata.namespace, &o.name))
        .and_then(|rs| deployment_key_for_rs(&rs))
        .into_iter()
        .collect()
}

/// The driver: Deployment, ReplicaSet and pod changes queue Deployments.
pub async fn run(ctx: Ctx) {
    let (inf_rs, inf_pods) = (ctx.inf.clone(), ctx.inf.clone());
    Controller::for_kind("Deployment", &ctx.cancel, &ctx.inf.deployments)
        .watches(&ctx.inf.replicasets, move |d| match d {
            Delta::Added(rs) | Delta::Deleted(rs) => keys_for_rs(&inf_rs, rs),
            Delta::Modified { old, new } => {
                let mut keys = keys_for_rs(&inf_rs, old);
                keys.extend(keys_for_rs(&inf_rs, new));
                keys
            }
            Delta::Resync => vec![],
        })
        .watches(&ctx.inf.pods, move |d| match d {
            Delta::Added(p) | Delta::Deleted(p) => keys_for_pod(&inf_pods, p),
            // Only what the rollout looks at: readiness and liveness.
            Delta::Modified { old, new }
                if old.is_ready() != new.is_ready()
                    || pod_active(old) != pod_active(new)
                    || old.status.conditions != new.status.conditions =>
            {
                keys_for_pod(&inf_pods, new)
            }
            Delta::Modified { .. } | Delta::Resync => vec![],
        })
        .workers(4)
        .run(move |k| {
            let ctx = ctx.clone();
            async move { sync(&ctx, k).await }
        })
        .await
}

/// Reads the caches for one Deployment, decides, and carries out the
/// actions: the Deployment's own update first, then the ReplicaSet writes
/// together, the status last; each waits until the caches show it.
async fn sync(ctx: &Ctx, k: Key) -> ReconcileResult {
    let Some(d) = ctx.inf.deployments.get(&k.0, &k.1) else {
        return Ok(Outcome::Done);
    };
    let rss = ctx
        .inf
        .replicasets
        .filter(|rs| rs.metadata.namespace == k.0);
    let pods = ctx.inf.pods.filter(|p| p.metadata.namespace == k.0);
    let rs_refs: Vec<&ReplicaSet> = rss.iter().map(|r| &**r).collect();
    let pod_refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
    let actions = reconcile(&d, &rs_refs, &pod_refs, super::now_secs());
    if actions.is_empty() {
        return Ok(Outcome::Done);
    }
    let reg = &ctx.registry;
    let mut cur: Deployment = (*d).clone();
    let mut status = None;
    let mut rs_ops = Vec::new();
    for a in actions {
        match a {
            Action::Update(mut nd) => {
                nd.status = cur.status.clone();
                cur = write::replace(reg, &cur, &nd).await?;
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    ctx.inf.deployments.wait_for(cur.metadata.revision()),
                )
                .await;
            }
            Action::Event {
                warning,
                reason,
                message,
            } => {
                if warning {
                    ctx.events.warning(&*d, reason, message)
                } else {
                    ctx.events.normal(&*d, reason, message)
                }
            }
            Action::Status(s) => status = Some(s),
            op => rs_ops.push(op),
        }
    }
    let results: Vec<Result<i64, crate::ApiError>> = futures::stream::iter(rs_ops)
        .map(|a| async move {
            match a {
                Action::CreateRs(rs) => reg.create_t(&rs).await.map(|r| r.metadata.revision()),
                Action::UpdateRs { old, new } => write::replace(reg, &old, &new)
                    .await
                    .map(|r| r.metadata.revision()),
                Action::DeleteRs(rs) => write::delete(reg, &rs).await,
                _ => Ok(0),
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut rev = 0;
    for r in results {
        rev = rev.max(r?);
    }
    if rev > 0 {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), ctx.inf.replicasets.wait_for(rev)).await;
    }
    if let Some(s) = status {
        let mut nd = cur.clone();
        nd.status = s;
        nd.status.observed_generation = cur.metadata.generation;
        let done = write::replace(reg, &cur, &nd).await?;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            ctx.inf.deployments.wait_for(done.metadata.revision()),
        )
        .await;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
