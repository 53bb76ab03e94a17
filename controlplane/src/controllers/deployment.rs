//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<template hash>`, the hash also a `pod-template-hash` label
//! on its selector, template and pods), rolled over by RollingUpdate within
//! maxSurge/maxUnavailable and pod readiness, or by Recreate; revision
//! numbers, history pruning, rollback through the `keel.dev/rollback-to`
//! annotation, pause (scaling still applies, the rollout does not progress),
//! and status with Progressing/Available conditions.
//!
//! The rollout counts conservatively from two caches that may lag: a
//! ReplicaSet's size is the larger of its spec and its live pods (so pods
//! not yet deleted after a scale-down still count against the surge), and
//! its availability the smaller of its spec and its available pods (so
//! pods about to be deleted never count as available).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_proto::api::apps::{
    DeploymentStatus, PodTemplateSpec, REVISION_ANNOTATION, ROLLBACK_ANNOTATION,
    TEMPLATE_HASH_LABEL,
};
use keel_proto::api::meta::{Condition, IntOrString, rfc3339, set_condition};
use keel_proto::api::{Deployment, Pod, ReplicaSet};

use super::{Ctx, SyncResult, controller_ref, owner_of, pod_active, pod_available, work};
use crate::informer::{Delta, Key, key_of};
use crate::workqueue::WorkQueue;
use crate::write;

/// Old ReplicaSets kept for rollback when the Deployment does not say.
pub const DEFAULT_HISTORY_LIMIT: i64 = 10;

/// What the Deployment controller does.
// Actions are few and short-lived; boxing the objects would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Replace the Deployment (rollback: a new template and the annotation
    /// gone; or its revision annotation).
    Update(Deployment),
    CreateRs(ReplicaSet),
    UpdateRs {
        old: ReplicaSet,
        new: ReplicaSet,
    },
    DeleteRs(ReplicaSet),
    Status(DeploymentStatus),
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
}

/// A stable hash of a pod template (FNV-1a over its JSON), spelled with
/// Kubernetes' safe alphabet.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    t.metadata.labels.remove(TEMPLATE_HASH_LABEL);
    let json = serde_json::to_vec(&t).expect("a template serialises");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// A ReplicaSet's revision annotation (0 when missing).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// maxSurge and maxUnavailable as counts (defaults 25%/25%; both zero
/// would block the rollout, so maxUnavailable becomes 1 then).
pub fn surge_and_unavailable(d: &Deployment) -> (i64, i64) {
    let replicas = d.replicas();
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let quarter = IntOrString::Str("25%".into());
    let surge = ru
        .max_surge
        .as_ref()
        .unwrap_or(&quarter)
        .scaled(replicas, true)
        .unwrap_or(1)
        .max(0);
    let unavailable = ru
        .max_unavailable
        .as_ref()
        .unwrap_or(&quarter)
        .scaled(replicas, false)
        .unwrap_or(0)
        .max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .strategy
        .as_ref()
        .is_some_and(|s| s.type_ == "Recreate")
}

/// The new ReplicaSet for `d`'s current template.
pub fn new_replicaset(d: &Deployment, hash: &str, revision: i64, replicas: i64) -> ReplicaSet {
    let mut rs = ReplicaSet::new(
        &d.metadata.namespace,
        &format!("{}-{hash}", d.metadata.name),
    );
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    rs.metadata.labels = template.metadata.labels.clone();
    rs.metadata
        .annotations
        .insert(REVISION_ANNOTATION.into(), revision.to_string());
    rs.metadata.owner_references = vec![controller_ref(d)];
    rs.spec.selector = d.spec.selector.clone();
    rs.spec
        .selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    rs.spec.template = template;
    rs.spec.replicas = Some(replicas);
    rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
    rs
}

/// Per ReplicaSet: its live pods and how many of them are available.
struct PodCounts {
    live: HashMap<String, i64>,
    ready: HashMap<String, i64>,
    available: HashMap<String, i64>,
}

impl PodCounts {
    fn new(pods: &[&Pod], min_ready: i64, now: i64) -> PodCounts {
        let mut c = PodCounts {
            live: HashMap::new(),
            ready: HashMap::new(),
            available: HashMap::new(),
        };
        for p in pods.iter().filter(|p| pod_active(p)) {
            let Some(o) = owner_of(&p.metadata, "ReplicaSet") else {
                continue;
            };
            *c.live.entry(o.uid.clone()).or_default() += 1;
            if p.is_ready() {
                *c.ready.entry(o.uid.clone()).or_default() += 1;
            }
            if pod_available(p, min_ready, now) {
                *c.available.entry(o.uid.clone()).or_default() += 1;
            }
        }
        c
    }
    fn get(m: &HashMap<String, i64>, rs: &ReplicaSet) -> i64 {
        m.get(&rs.metadata.uid).copied().unwrap_or(0)
    }
    /// Pods counted against the surge: spec or live pods, whichever is more.
    fn size(&self, rs: &ReplicaSet) -> i64 {
        rs.replicas().max(Self::get(&self.live, rs))
    }
    /// Pods counted as available: available pods, at most the spec.
    fn available(&self, rs: &ReplicaSet) -> i64 {
        rs.replicas().min(Self::get(&self.available, rs))
    }
}

/// Decides what to do for `d` given the ReplicaSets and pods of its
/// namespace, at `now` (seconds since the epoch).
pub fn reconcile(d: &Deployment, rss: &[&ReplicaSet], pods: &[&Pod], now: i64) -> Vec<Action> {
    let mut out = Vec::new();
    if d.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let ns = &d.metadata.namespace;
    // Ours, and orphans our selector matches (adopted).
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in rss.iter().filter(|rs| &rs.metadata.namespace == ns) {
        match rs.metadata.controller() {
            Some(o) if o.uid == d.metadata.uid => owned.push((*rs).clone()),
            Some(_) => {}
            None => {
                if !d.spec.selector.is_empty()
                    && rs.metadata.deletion_timestamp.is_none()
                    && d.spec.selector.matches(&rs.metadata.labels)
                {
                    let mut new = (*rs).clone();
                    new.metadata.owner_references.push(controller_ref(d));
                    out.push(Action::UpdateRs {
                        old: (*rs).clone(),
                        new: new.clone(),
                    });
                    owned.push(new);
                }
            }
        }
    }
    owned.sort_by_key(|rs| (revision(rs), rs.metadata.name.clone()));

    if let Some(to) = d.metadata.annotations.get(ROLLBACK_ANNOTATION) {
        out.extend(rollback(d, &owned, to));
        return out;
    }

    let hash = template_hash(&d.spec.template);
    let new_idx = owned.iter().position(|rs| {
        rs.spec.template.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&hash)
            || template_hash(&rs.spec.template) == hash
    });
    let max_old_rev = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| revision(rs))
        .max()
        .unwrap_or(0);
    let counts = PodCounts::new(pods, d.spec.min_ready_seconds, now);
    let replicas = d.replicas().max(0);
    let (max_surge, max_unavailable) = surge_and_unavailable(d);

    // Scale: `target` is each owned ReplicaSet's desired size (by index).
    let mut target: Vec<i64> = owned.iter().map(|rs| rs.replicas()).collect();
    let mut create: Option<ReplicaSet> = None;
    let mut new_rev = new_idx.map(|i| revision(&owned[i])).unwrap_or(0);

    if d.spec.paused {
        scale_paused(d, &owned, new_idx, &mut target, max_surge);
    } else {
        if new_idx.is_none() || new_rev <= max_old_rev {
            new_rev = max_old_rev + 1;
        }
        let olds: Vec<usize> = (0..owned.len()).filter(|i| Some(*i) != new_idx).collect();
        if is_recreate(d) {
            let olds_up = olds.iter().any(|i| owned[*i].replicas() > 0);
            let olds_live = olds
                .iter()
                .any(|i| PodCounts::get(&counts.live, &owned[*i]) > 0);
            for i in &olds {
                target[*i] = 0;
            }
            let new_size = if olds_up || olds_live { 0 } else { replicas };
            match new_idx {
                Some(i) => target[i] = new_size,
                None if !olds_up && !olds_live => {
                    create = Some(new_replicaset(d, &hash, new_rev, new_size));
                }
                None => {}
            }
        } else {
            // Scale the new ReplicaSet up within the surge (or down to size).
            let new_spec = new_idx.map(|i| owned[i].replicas()).unwrap_or(0);
            let mut new_target = new_spec;
            if new_spec > replicas {
                new_target = replicas;
            } else if new_spec < replicas {
                let current: i64 = owned.iter().map(|rs| counts.size(rs)).sum();
                let max_total = replicas + max_surge;
                if current < max_total {
                    new_target = new_spec + (max_total - current).min(replicas - new_spec);
                }
            }
            match new_idx {
                Some(i) => target[i] = new_target,
                None => create = Some(new_replicaset(d, &hash, new_rev, new_target)),
            }
            // Scale old ones down only once the new one is where it should be.
            if let Some(ni) = new_idx.filter(|_| new_target == new_spec) {
                scale_down_olds(
                    &owned,
                    ni,
                    &olds,
                    &counts,
                    replicas,
                    max_unavailable,
                    &mut target,
                );
            }
        }
    }

    for (i, rs) in owned.iter().enumerate() {
        let mut new = rs.clone();
        new.spec.replicas = Some(target[i]);
        if Some(i) == new_idx && !d.spec.paused && revision(rs) != new_rev {
            new.metadata
                .annotations
                .insert(REVISION_ANNOTATION.into(), new_rev.to_string());
        }
        if new != *rs {
            if target[i] != rs.replicas() {
                let (verb, to) = if target[i] > rs.replicas() {
                    ("up", target[i])
                } else {
                    ("down", target[i])
                };
                out.push(Action::Event {
                    warning: false,
                    reason: "ScalingReplicaSet",
                    message: format!("Scaled {verb} replica set {} to {to}", rs.metadata.name),
                });
            }
            // An adopted ReplicaSet's update already carries the owner reference.
            if let Some(pos) = out.iter().position(
                |a| matches!(a, Action::UpdateRs { new: n, .. } if n.metadata.name == rs.metadata.name),
            ) {
                if let Action::UpdateRs { new: n, .. } = &mut out[pos] {
                    *n = new;
                }
            } else {
                out.push(Action::UpdateRs {
                    old: rs.clone(),
                    new,
                });
            }
        }
    }
    if let Some(rs) = &create {
        out.push(Action::Event {
            warning: false,
            reason: "ScalingReplicaSet",
            message: format!(
                "Scaled up replica set {} to {}",
                rs.metadata.name,
                rs.replicas()
            ),
        });
        out.push(Action::CreateRs(rs.clone()));
    }

    // History: old, empty ReplicaSets beyond the limit go, oldest first.
    let limit = d
        .spec
        .revision_history_limit
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0) as usize;
    let empty: Vec<&ReplicaSet> = owned
        .iter()
        .enumerate()
        .filter(|(i, rs)| {
            Some(*i) != new_idx
                && target[*i] == 0
                && rs.status.replicas == 0
                && PodCounts::get(&counts.live, rs) == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .map(|(_, rs)| rs)
        .collect();
    for rs in empty.iter().take(empty.len().saturating_sub(limit)) {
        out.push(Action::DeleteRs((*rs).clone()));
    }

    // The Deployment's revision annotation follows its new ReplicaSet.
    if !d.spec.paused
        && d.metadata.annotations.get(REVISION_ANNOTATION) != Some(&new_rev.to_string())
    {
        let mut nd = d.clone();
        nd.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), new_rev.to_string());
        out.push(Action::Update(nd));
    }

    let status = status(d, &owned, new_idx, &counts, max_unavailable, now);
    if status != d.status {
        out.push(Action::Status(status));
    }
    out
}

/// The rollback the annotation asks for: the template of that revision's
/// ReplicaSet (0: the one before the current), and the annotation removed.
fn rollback(d: &Deployment, owned: &[ReplicaSet], to: &str) -> Vec<Action> {
    let mut nd = d.clone();
    nd.metadata.annotations.remove(ROLLBACK_ANNOTATION);
    let mut revs: Vec<i64> = owned.iter().map(revision).filter(|r| *r > 0).collect();
    revs.sort_unstable();
    revs.dedup();
    let want = match to.trim().parse::<i64>() {
        Ok(0) => revs.iter().rev().nth(1).copied(),
        Ok(n) if n > 0 => Some(n),
        _ => None,
    };
    let found = want.and_then(|w| owned.iter().find(|rs| revision(rs) == w));
    let event = match found {
        Some(rs) => {
            let mut t = rs.spec.template.clone();
            t.metadata.labels.remove(TEMPLATE_HASH_LABEL);
            nd.spec.template = t;
            Action::Event {
                warning: false,
                reason: "DeploymentRollback",
                message: format!(
                    "Rolled back deployment \"{}\" to revision {}",
                    d.metadata.name,
                    revision(rs)
                ),
            }
        }
        None => Action::Event {
            warning: true,
            reason: "RollbackRevisionNotFound",
            message: format!("Unable to find revision {to:?} to roll back to"),
        },
    };
    vec![event, Action::Update(nd)]
}

/// Paused: no rollout progress, but a change of replicas is shared over the
/// ReplicaSets that have pods, in proportion to their sizes.
fn scale_paused(
    d: &Deployment,
    owned: &[ReplicaSet],
    new_idx: Option<usize>,
    target: &mut [i64],
    max_surge: i64,
) {
    let active: Vec<usize> = (0..owned.len())
        .filter(|i| owned[*i].replicas() > 0 || Some(*i) == new_idx)
        .collect();
    let replicas = d.replicas().max(0);
    match active.len() {
        0 => {}
        1 => target[active[0]] = replicas,
        _ => {
            let total: i64 = active.iter().map(|i| owned[*i].replicas()).sum();
            let allowed = if is_recreate(d) {
                replicas
            } else {
                replicas + max_surge
            };
            let delta = allowed - total;
            if delta == 0 || total == 0 {
                return;
            }
            let mut given = 0;
            let mut by_size = active.clone();
            by_size.sort_by_key(|i| std::cmp::Reverse(owned[*i].replicas()));
            for i in &by_size {
                let share = owned[*i].replicas() * delta / total;
                target[*i] = (owned[*i].replicas() + share).max(0);
                given += share;
            }
            let first = by_size[0];
            target[first] = (target[first] + delta - given).max(0);
        }
    }
}

/// RollingUpdate: old ReplicaSets shrink only as far as availability allows
/// (never below replicas - maxUnavailable available), unhealthy ones first.
fn scale_down_olds(
    owned: &[ReplicaSet],
    new_idx: usize,
    olds: &[usize],
    counts: &PodCounts,
    replicas: i64,
    max_unavailable: i64,
    target: &mut [i64],
) {
    let old_total: i64 = olds.iter().map(|i| owned[*i].replicas()).sum();
    if old_total == 0 {
        return;
    }
    let min_available = replicas - max_unavailable;
    let all: i64 = owned.iter().map(|rs| rs.replicas()).sum();
    let new_rs = &owned[new_idx];
    let new_unavailable = new_rs.replicas() - counts.available(new_rs);
    let mut room = all - min_available - new_unavailable;
    if room <= 0 {
        return;
    }
    // Unhealthy pods of old ReplicaSets go first: they serve nothing.
    for i in olds {
        if room <= 0 {
            break;
        }
        let rs = &owned[*i];
        let unhealthy = target[*i] - counts.available(rs);
        if unhealthy > 0 {
            let cut = unhealthy.min(room);
            target[*i] -= cut;
            room -= cut;
        }
    }
    // Then healthy ones, as far as availability allows.
    let available: i64 = owned
        .iter()
        .enumerate()
        .map(|(i, rs)| target[i].min(counts.available(rs)))
        .sum();
    let mut cut_total = available - min_available;
    for i in olds {
        if cut_total <= 0 {
            break;
        }
        let cut = target[*i].min(cut_total);
        target[*i] -= cut;
        cut_total -= cut;
    }
}

fn status(
    d: &Deployment,
    owned: &[ReplicaSet],
    new_idx: Option<usize>,
    counts: &PodCounts,
    max_unavailable: i64,
    now: i64,
) -> DeploymentStatus {
    let sum = |m: &HashMap<String, i64>| owned.iter().map(|rs| PodCounts::get(m, rs)).sum::<i64>();
    let replicas = sum(&counts.live);
    let ready = sum(&counts.ready);
    let available = sum(&counts.available);
    let updated = new_idx
        .map(|i| PodCounts::get(&counts.live, &owned[i]))
        .unwrap_or(0);
    let want = d.replicas().max(0);
    let mut conditions = d.status.conditions.clone();
    let now_s = rfc3339(now);
    let ok = available >= want - max_unavailable;
    set_condition(
        &mut conditions,
        Condition {
            type_: "Available".into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: if ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            }
            .into(),
            message: if ok {
                "Deployment has minimum availability."
            } else {
                "Deployment does not have minimum availability."
            }
            .into(),
            ..Default::default()
        },
        &now_s,
    );
    let new_name = new_idx
        .map(|i| owned[i].metadata.name.clone())
        .unwrap_or_default();
    let progressing = if d.spec.paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_string(),
        )
    } else if new_idx.is_some() && updated == want && replicas == want && available == want {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    set_condition(
        &mut conditions,
        Condition {
            type_: "Progressing".into(),
            status: progressing.0.into(),
            reason: progressing.1.into(),
            message: progressing.2,
            ..Default::default()
        },
        &now_s,
    );
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas,
        updated_replicas: updated,
        ready_replicas: ready,
        available_replicas: available,
        unavailable_replicas: (want - available).max(0),
        conditions,
    }
}

fn deployment_key_for_rs(rs: &ReplicaSet) -> Option<Key> {
    owner_of(&rs.metadata, "Deployment").map(|o| (rs.metadata.namespace.clone(), o.name.clone()))
}

/// The driver: Deployment, ReplicaSet and pod changes queue Deployments.
pub async fn run(ctx: Ctx) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut d_sub = ctx.inf.deployments.subscribe();
    let mut rs_sub = ctx.inf.replicasets.subscribe();
    let mut pod_sub = ctx.inf.pods.subscribe();
    ctx.inf.deployments.synced().await;
    ctx.inf.replicasets.synced().await;
    ctx.inf.pods.synced().await;
    for d in ctx.inf.deployments.list() {
        queue.add(key_of(&*d));
    }
    let c = ctx.clone();
    let workers = work("Deployment", queue.clone(), 4, move |k| {
        let c = c.clone();
        async move { sync(&c, k).await }
    });
    let q = queue.clone();
    let inf = ctx.inf.clone();
    let feed = async move {
        let all = || {
            inf.deployments
                .list()
                .iter()
                .for_each(|d| q.add(key_of(&**d)))
        };
        let for_rs = |rs: &ReplicaSet| match deployment_key_for_rs(rs) {
            Some(k) => q.add(k),
            None if rs.metadata.controller().is_none() => {
                for d in inf.deployments.filter(|d| {
                    d.metadata.namespace == rs.metadata.namespace
                        && !d.spec.selector.is_empty()
                        && d.spec.selector.matches(&rs.metadata.labels)
                }) {
                    q.add(key_of(&*d));
                }
            }
            None => {}
        };
        let for_pod = |p: &Pod| {
            if let Some(o) = owner_of(&p.metadata, "ReplicaSet")
                && let Some(rs) = inf.replicasets.get(&p.metadata.namespace, &o.name)
                && let Some(k) = deployment_key_for_rs(&rs)
            {
                q.add(k);
            }
        };
        loop {
            tokio::select! {
                d = d_sub.next() => match d {
                    Some(Delta::Added(o)) | Some(Delta::Modified { new: o, .. }) | Some(Delta::Deleted(o)) => q.add(key_of(&*o)),
                    Some(Delta::Resync) => all(),
                    None => return,
                },
                d = rs_sub.next() => match d {
                    Some(Delta::Added(o)) | Some(Delta::Deleted(o)) => for_rs(&o),
                    Some(Delta::Modified { old, new }) => { for_rs(&old); for_rs(&new); }
                    Some(Delta::Resync) => all(),
                    None => return,
                },
                d = pod_sub.next() => match d {
                    Some(Delta::Added(p)) | Some(Delta::Deleted(p)) => for_pod(&p),
                    Some(Delta::Modified { old, new }) => {
                        // Only what the rollout looks at: readiness and liveness.
                        if old.is_ready() != new.is_ready()
                            || pod_active(&old) != pod_active(&new)
                            || old.status.conditions != new.status.conditions
                        {
                            for_pod(&new);
                        }
                    }
                    Some(Delta::Resync) => all(),
                    None => return,
                },
            }
        }
    };
    tokio::join!(workers, feed);
}

async fn sync(ctx: &Ctx, k: Key) -> SyncResult {
    let Some(d) = ctx.inf.deployments.get(&k.0, &k.1) else {
        return Ok(None);
    };
    let rss = ctx
        .inf
        .replicasets
        .filter(|rs| rs.metadata.namespace == k.0);
    let pods = ctx.inf.pods.filter(|p| p.metadata.namespace == k.0);
    let rs_refs: Vec<&ReplicaSet> = rss.iter().map(|r| &**r).collect();
    let pod_refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
    let now = super::now_secs();
    let actions = reconcile(&d, &rs_refs, &pod_refs, now);
    if actions.is_empty() {
        return Ok(None);
    }
    let reg = &ctx.registry;
    let mut cur: Deployment = (*d).clone();
    let mut status = None;
    let mut rs_ops = Vec::new();
    for a in actions {
        match a {
            Action::Update(nd) => {
                let mut nd = nd;
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
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::replicaset;
    use super::*;
    use keel_proto::api::apps::{DeploymentStrategy, RollingUpdate};
    use keel_proto::api::core::Container;

    fn deployment(replicas: i64, image: &str) -> Deployment {
        let mut d = Deployment::new("default", "web");
        d.metadata.uid = "d-uid".into();
        d.metadata.generation = 1;
        d.spec.replicas = Some(replicas);
        d.spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        d.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        d.spec.template.spec.containers.push(Container {
            name: "c".into(),
            image: image.into(),
            ..Default::default()
        });
        d
    }

    fn ready_condition() -> Condition {
        Condition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some("2020-01-01T00:00:00Z".into()),
            ..Default::default()
        }
    }

    /// A deployment, its ReplicaSets and pods, with the ReplicaSet
    /// controller and a kubelet (pods ready one step after creation) simulated.
    struct World {
        d: Deployment,
        rss: Vec<ReplicaSet>,
        pods: Vec<Pod>,
        n: u32,
        max_pods: usize,
        min_ready: usize,
        unready: bool,
    }

    impl World {
        fn new(d: Deployment) -> World {
            World {
                d,
                rss: vec![],
                pods: vec![],
                n: 0,
                max_pods: 0,
                min_ready: usize::MAX,
                unready: false,
            }
        }

        fn deployment_step(&mut self) -> Vec<Action> {
            let rss: Vec<&ReplicaSet> = self.rss.iter().collect();
            let pods: Vec<&Pod> = self.pods.iter().collect();
            let actions = reconcile(&self.d, &rss, &pods, 0);
            for a in &actions {
                self.n += 1;
                match a {
                    Action::Update(nd) => self.d = nd.clone(),
                    Action::Status(s) => self.d.status = s.clone(),
                    Action::CreateRs(rs) => {
                        let mut rs = rs.clone();
                        rs.metadata.uid = format!("rs-{}", self.n);
                        self.rss.push(rs);
                    }
                    Action::UpdateRs { new, .. } => {
                        let i = self
                            .rss
                            .iter()
                            .position(|r| r.metadata.name == new.metadata.name)
                            .unwrap();
                        self.rss[i] = new.clone();
                    }
                    Action::DeleteRs(rs) => {
                        self.rss.retain(|r| r.metadata.name != rs.metadata.name)
                    }
                    Action::Event { .. } => {}
                }
            }
            actions
        }

        fn replicaset_step(&mut self) {
            // Pods created last step become ready now (unless told not to).
            if !self.unready {
                for p in &mut self.pods {
                    if !p.is_ready() && p.status.phase == "Running" {
                        p.status.conditions.push(ready_condition());
                    }
                    p.status.phase = "Running".into();
                }
            }
            for i in 0..self.rss.len() {
                let pods: Vec<&Pod> = self.pods.iter().collect();
                let actions = replicaset::reconcile(&self.rss[i], &pods, 0);
                for a in actions {
                    self.n += 1;
                    match a {
                        replicaset::Action::Create(mut p) => {
                            p.metadata.name = format!("{}{}", p.metadata.generate_name, self.n);
                            p.spec.node_name = "n1".into();
                            self.pods.push(p);
                        }
                        replicaset::Action::Delete(p) => {
                            self.pods.retain(|x| x.metadata.name != p.metadata.name)
                        }
                        replicaset::Action::Status(s) => self.rss[i].status = s,
                        replicaset::Action::Update { new, .. } => {
                            let j = self
                                .pods
                                .iter()
                                .position(|x| x.metadata.name == new.metadata.name)
                                .unwrap();
                            self.pods[j] = new;
                        }
                    }
                    self.max_pods = self.max_pods.max(self.pods.len());
                }
            }
            let ready = self.pods.iter().filter(|p| p.is_ready()).count();
            self.min_ready = self.min_ready.min(ready);
        }

        fn run(&mut self, steps: usize) {
            for _ in 0..steps {
                self.deployment_step();
                self.replicaset_step();
            }
        }

        fn pods_of(&self, hash: &str) -> usize {
            self.pods
                .iter()
                .filter(|p| {
                    p.metadata
                        .labels
                        .get(TEMPLATE_HASH_LABEL)
                        .map(String::as_str)
                        == Some(hash)
                })
                .count()
        }
    }

    fn strategy(surge: i64, unavailable: i64) -> Option<DeploymentStrategy> {
        Some(DeploymentStrategy {
            type_: "RollingUpdate".into(),
            rolling_update: Some(RollingUpdate {
                max_surge: Some(IntOrString::Int(surge)),
                max_unavailable: Some(IntOrString::Int(unavailable)),
            }),
        })
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let d = deployment(1, "nginx:1");
        let h = template_hash(&d.spec.template);
        assert_eq!(h.len(), 10);
        assert_eq!(h, template_hash(&d.spec.template.clone()));
        let mut labelled = d.spec.template.clone();
        labelled
            .metadata
            .labels
            .insert(TEMPLATE_HASH_LABEL.into(), h.clone());
        assert_eq!(template_hash(&labelled), h);
        assert_ne!(template_hash(&deployment(1, "nginx:2").spec.template), h);
    }

    #[test]
    fn defaults_are_a_quarter_each() {
        assert_eq!(surge_and_unavailable(&deployment(6, "a")), (2, 1));
        assert_eq!(surge_and_unavailable(&deployment(1, "a")), (1, 0));
        let mut d = deployment(4, "a");
        d.spec.strategy = strategy(0, 0);
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }

    #[test]
    fn a_new_deployment_gets_one_full_replicaset_at_revision_one() {
        let d = deployment(6, "nginx:1");
        let a = reconcile(&d, &[], &[], 0);
        let rs = a
            .iter()
            .find_map(|a| match a {
                Action::CreateRs(rs) => Some(rs.clone()),
                _ => None,
            })
            .unwrap();
        let hash = template_hash(&d.spec.template);
        assert_eq!(rs.metadata.name, format!("web-{hash}"));
        assert_eq!(rs.replicas(), 6);
        assert_eq!(rs.spec.selector.match_labels[TEMPLATE_HASH_LABEL], hash);
        assert_eq!(rs.spec.template.metadata.labels[TEMPLATE_HASH_LABEL], hash);
        assert_eq!(rs.metadata.annotations[REVISION_ANNOTATION], "1");
        assert_eq!(rs.metadata.controller().unwrap().uid, "d-uid");
        assert!(a.iter().any(|a| matches!(a, Action::Update(nd) if nd.metadata.annotations[REVISION_ANNOTATION] == "1")));
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Event {
                reason: "ScalingReplicaSet",
                ..
            }
        )));
    }

    #[test]
    fn rolling_update_stays_within_surge_and_unavailability() {
        for (surge, unavailable) in [(2, 1), (1, 0), (0, 1), (3, 3)] {
            let mut d = deployment(6, "nginx:1");
            d.spec.strategy = strategy(surge, unavailable);
            let mut w = World::new(d);
            w.run(10);
            assert_eq!(w.pods.len(), 6);
            assert_eq!(w.d.status.available_replicas, 6);
            let old = template_hash(&w.d.spec.template);
            w.max_pods = 0;
            w.min_ready = usize::MAX;
            w.d.spec.template.spec.containers[0].image = "nginx:2".into();
            w.d.metadata.generation += 1;
            let new = template_hash(&w.d.spec.template);
            w.run(40);
            assert!(
                w.max_pods <= 6 + surge as usize,
                "surge {surge}: {} pods",
                w.max_pods
            );
            assert!(
                w.min_ready >= 6 - unavailable as usize,
                "unavailable {unavailable}: {} ready",
                w.min_ready
            );
            assert_eq!((w.pods_of(&new), w.pods_of(&old)), (6, 0), "surge {surge}");
            assert_eq!(w.d.metadata.annotations[REVISION_ANNOTATION], "2");
            assert_eq!(w.d.status.updated_replicas, 6);
            assert_eq!(w.d.status.observed_generation, w.d.metadata.generation);
            let p = condition_of(&w.d, "Progressing");
            assert_eq!(p.reason, "NewReplicaSetAvailable");
            assert_eq!(condition_of(&w.d, "Available").status, "True");
        }
    }

    fn condition_of<'a>(d: &'a Deployment, t: &str) -> &'a Condition {
        keel_proto::api::meta::condition(&d.status.conditions, t).unwrap()
    }

    #[test]
    fn rolling_update_waits_for_readiness() {
        let mut d = deployment(4, "nginx:1");
        d.spec.strategy = strategy(1, 0);
        let mut w = World::new(d);
        w.run(8);
        w.unready = true;
        w.d.spec.template.spec.containers[0].image = "nginx:2".into();
        w.run(10);
        let new = template_hash(&w.d.spec.template);
        assert_eq!(
            w.pods_of(&new),
            1,
            "one surge pod, never ready, blocks the rollout"
        );
        assert_eq!(w.pods.len(), 5);
        let p = condition_of(&w.d, "Progressing");
        assert_eq!(p.reason, "ReplicaSetUpdated");
    }

    #[test]
    fn recreate_removes_old_pods_before_creating_new_ones() {
        let mut d = deployment(3, "nginx:1");
        d.spec.strategy = Some(DeploymentStrategy {
            type_: "Recreate".into(),
            rolling_update: None,
        });
        let mut w = World::new(d);
        w.run(5);
        let old = template_hash(&w.d.spec.template);
        w.d.spec.template.spec.containers[0].image = "nginx:2".into();
        let new = template_hash(&w.d.spec.template);
        // First pass: the old ReplicaSet goes to zero, nothing new yet.
        let a = w.deployment_step();
        assert!(!a.iter().any(|a| matches!(a, Action::CreateRs(_))));
        assert_eq!(w.rss[0].replicas(), 0);
        // Pods still alive: still nothing new.
        assert!(
            !w.deployment_step()
                .iter()
                .any(|a| matches!(a, Action::CreateRs(_)))
        );
        w.replicaset_step();
        assert_eq!(w.pods_of(&old), 0);
        w.run(4);
        assert_eq!(w.pods_of(&new), 3);
        assert_eq!(w.max_pods, 3);
    }

    #[test]
    fn history_keeps_only_the_limit_of_old_empty_replicasets() {
        let mut d = deployment(2, "v1");
        d.spec.revision_history_limit = Some(1);
        let mut w = World::new(d);
        for v in 2..=5 {
            w.run(8);
            w.d.spec.template.spec.containers[0].image = format!("v{v}");
        }
        w.run(12);
        // The current one and one old one.
        let dbg: Vec<(i64, i64, i64)> = w
            .rss
            .iter()
            .map(|r| (revision(r), r.replicas(), r.status.replicas))
            .collect();
        assert_eq!(w.rss.len(), 2, "{dbg:?}");
        let mut revs: Vec<i64> = w.rss.iter().map(revision).collect();
        revs.sort();
        assert_eq!(revs, vec![4, 5]);
    }

    #[test]
    fn rollback_restores_the_previous_or_a_named_revision() {
        let mut w = World::new(deployment(2, "v1"));
        w.run(6);
        w.d.spec.template.spec.containers[0].image = "v2".into();
        w.run(6);
        w.d.spec.template.spec.containers[0].image = "v3".into();
        w.run(6);
        // Previous (0): v2.
        w.d.metadata
            .annotations
            .insert(ROLLBACK_ANNOTATION.into(), "0".into());
        let a = w.deployment_step();
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Event {
                reason: "DeploymentRollback",
                ..
            }
        )));
        assert_eq!(w.d.spec.template.spec.containers[0].image, "v2");
        assert!(!w.d.metadata.annotations.contains_key(ROLLBACK_ANNOTATION));
        assert!(
            !w.d.spec
                .template
                .metadata
                .labels
                .contains_key(TEMPLATE_HASH_LABEL)
        );
        w.run(8);
        // The v2 ReplicaSet is the new one again, at a new revision.
        let hash = template_hash(&w.d.spec.template);
        let rs = w
            .rss
            .iter()
            .find(|r| r.metadata.name.ends_with(&hash))
            .unwrap();
        assert_eq!(revision(rs), 4);
        assert_eq!(w.pods_of(&hash), 2);
        assert_eq!(w.rss.len(), 3, "no new ReplicaSet for an old template");
        // A named revision: 1.
        w.d.metadata
            .annotations
            .insert(ROLLBACK_ANNOTATION.into(), "1".into());
        w.deployment_step();
        assert_eq!(w.d.spec.template.spec.containers[0].image, "v1");
        // A missing revision: a warning, the annotation goes, nothing else.
        w.run(8);
        let before = w.d.spec.clone();
        w.d.metadata
            .annotations
            .insert(ROLLBACK_ANNOTATION.into(), "42".into());
        let a = w.deployment_step();
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Event {
                warning: true,
                reason: "RollbackRevisionNotFound",
                ..
            }
        )));
        assert_eq!(w.d.spec, before);
        assert!(!w.d.metadata.annotations.contains_key(ROLLBACK_ANNOTATION));
    }

    #[test]
    fn paused_deployments_scale_but_do_not_roll_out() {
        let mut w = World::new(deployment(3, "v1"));
        w.run(6);
        w.d.spec.paused = true;
        w.d.spec.template.spec.containers[0].image = "v2".into();
        w.d.spec.replicas = Some(5);
        w.run(6);
        assert_eq!(w.rss.len(), 1, "no rollout while paused");
        assert_eq!(w.rss[0].replicas(), 5, "but scaling applies");
        assert_eq!(w.pods.len(), 5);
        assert_eq!(condition_of(&w.d, "Progressing").reason, "DeploymentPaused");
        // Resume: the rollout proceeds.
        w.d.spec.paused = false;
        w.run(30);
        let hash = template_hash(&w.d.spec.template);
        assert_eq!(w.pods_of(&hash), 5);
    }

    #[test]
    fn paused_mid_rollout_scales_proportionally() {
        let mut d = deployment(10, "v1");
        d.spec.paused = true;
        let mut old = new_replicaset(&d, "aaaaaaaaaa", 1, 6);
        old.metadata.uid = "rs-old".into();
        let mut d2 = d.clone();
        d2.spec.template.spec.containers[0].image = "v2".into();
        let hash = template_hash(&d2.spec.template);
        let mut new = new_replicaset(&d2, &hash, 2, 4);
        new.metadata.uid = "rs-new".into();
        d2.spec.replicas = Some(20);
        let a = reconcile(&d2, &[&old, &new], &[], 0);
        let sizes: HashMap<String, i64> = a
            .iter()
            .filter_map(|a| match a {
                Action::UpdateRs { new, .. } => Some((new.metadata.name.clone(), new.replicas())),
                _ => None,
            })
            .collect();
        // 20 + 25% surge (5) = 25 over 6:4.
        assert_eq!(sizes.values().sum::<i64>(), 25);
        assert_eq!(sizes[&old.metadata.name], 15);
        assert_eq!(sizes[&new.metadata.name], 10);
    }

    #[test]
    fn adopts_an_orphan_replicaset_that_matches() {
        let d = deployment(2, "v1");
        let hash = template_hash(&d.spec.template);
        let mut orphan = new_replicaset(&d, &hash, 1, 2);
        orphan.metadata.owner_references.clear();
        orphan.metadata.uid = "rs-o".into();
        let a = reconcile(&d, &[&orphan], &[], 0);
        assert!(!a.iter().any(|a| matches!(a, Action::CreateRs(_))));
        let adopted = a
            .iter()
            .find_map(|a| match a {
                Action::UpdateRs { new, .. } => Some(new),
                _ => None,
            })
            .unwrap();
        assert_eq!(adopted.metadata.controller().unwrap().uid, "d-uid");
    }

    #[test]
    fn a_deleted_deployment_does_nothing() {
        let mut d = deployment(2, "v1");
        d.metadata.deletion_timestamp = Some("2020-01-01T00:00:00Z".into());
        assert!(reconcile(&d, &[], &[], 0).is_empty());
    }

    #[test]
    fn scaling_down_a_finished_deployment_shrinks_its_replicaset() {
        let mut w = World::new(deployment(6, "v1"));
        w.run(6);
        w.d.spec.replicas = Some(2);
        w.run(4);
        assert_eq!(w.rss[0].replicas(), 2);
        assert_eq!(w.pods.len(), 2);
        assert_eq!(w.d.status.replicas, 2);
        assert_eq!(condition_of(&w.d, "Available").status, "True");
    }
}
