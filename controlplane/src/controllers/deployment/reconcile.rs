//! The Deployment controller's decision over plain values: which
//! ReplicaSets are the Deployment's (adopting orphans its selector
//! matches), then either the rollback its annotation asks for, or the plan
//! of its strategy turned into actions — each ReplicaSet updated at most
//! once with everything that changes about it (adoption, size, revision),
//! the new one created, the history trimmed, the Deployment's revision
//! annotation and status brought up to date.

use std::collections::HashSet;

use keel_proto::api::apps::{DeploymentStatus, REVISION_ANNOTATION, ROLLBACK_ANNOTATION};
use keel_proto::api::{Deployment, Pod, ReplicaSet};

use super::history::{self, revision};
use super::plan::{Plan, Target, View};
use super::template::new_replicaset;
use super::{status, strategy};
use crate::controllers::controller_ref;

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

/// Decides what to do for `d` given the ReplicaSets and pods of its
/// namespace, at `now` (seconds since the epoch).
pub fn reconcile(d: &Deployment, rss: &[&ReplicaSet], pods: &[&Pod], now: i64) -> Vec<Action> {
    if d.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let (owned, adopted) = owned_by(d, rss);
    if let Some(to) = d.metadata.annotations.get(ROLLBACK_ANNOTATION) {
        let mut out: Vec<Action> = owned
            .iter()
            .filter_map(|rs| update_rs(d, rs, &adopted, None, None))
            .collect();
        out.extend(history::rollback(d, &owned, to));
        return out;
    }
    let view = View::new(d, owned, pods, now);
    let plan = strategy::plan(&view);
    emit(&view, &plan, &adopted, now)
}

/// The ReplicaSets of `d`'s namespace that it controls, by revision then
/// name, and the names of the orphans among them that its selector matches
/// (to adopt).
fn owned_by<'a>(d: &Deployment, rss: &[&'a ReplicaSet]) -> (Vec<&'a ReplicaSet>, HashSet<String>) {
    let mut owned = Vec::new();
    let mut adopted = HashSet::new();
    for rs in rss
        .iter()
        .copied()
        .filter(|rs| rs.metadata.namespace == d.metadata.namespace)
    {
        match rs.metadata.controller() {
            Some(o) if o.uid == d.metadata.uid => owned.push(rs),
            Some(_) => {}
            None => {
                if !d.spec.selector.is_empty()
                    && rs.metadata.deletion_timestamp.is_none()
                    && d.spec.selector.matches(&rs.metadata.labels)
                {
                    adopted.insert(rs.metadata.name.clone());
                    owned.push(rs);
                }
            }
        }
    }
    owned.sort_by_key(|rs| (revision(rs), rs.metadata.name.clone()));
    (owned, adopted)
}

/// The actions that carry out `plan`, each once.
fn emit(view: &View, plan: &Plan, adopted: &HashSet<String>, now: i64) -> Vec<Action> {
    let d = view.d;
    let mut out = Vec::new();
    // Revisions move only while the rollout does.
    let revision = (!d.spec.paused).then(|| history::new_revision(view));
    for rs in &view.owned {
        let target = plan.target_of(view, rs);
        let rev = revision.filter(|_| view.is_new(rs));
        if let Some(update) = update_rs(d, rs, adopted, Some(target), rev) {
            if target != rs.replicas() {
                out.push(scaled(rs, target > rs.replicas(), target));
            }
            out.push(update);
        }
    }
    if let (Target::Create(n), Some(rev)) = (plan.new_rs, revision) {
        let rs = new_replicaset(d, &view.hash, rev, n);
        out.push(scaled(&rs, true, n));
        out.push(Action::CreateRs(rs));
    }
    out.extend(
        history::beyond_limit(view, plan)
            .into_iter()
            .map(|rs| Action::DeleteRs(ours(d, rs, adopted))),
    );
    // The Deployment's revision annotation follows its new ReplicaSet.
    if let Some(rev) = revision
        && d.metadata.annotations.get(REVISION_ANNOTATION) != Some(&rev.to_string())
    {
        let mut nd = d.clone();
        nd.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), rev.to_string());
        out.push(Action::Update(nd));
    }
    let status = status::status(view, now);
    if status != d.status {
        out.push(Action::Status(status));
    }
    out
}

/// The one update of `rs` that adopts it (if it is among `adopted`), sets
/// its size (`replicas`) and its revision (`rev`); `None` if that changes
/// nothing.
fn update_rs(
    d: &Deployment,
    rs: &ReplicaSet,
    adopted: &HashSet<String>,
    replicas: Option<i64>,
    rev: Option<i64>,
) -> Option<Action> {
    let mut new = ours(d, rs, adopted);
    if let Some(n) = replicas {
        new.spec.replicas = Some(n);
    }
    if let Some(rev) = rev.filter(|r| *r != revision(rs)) {
        new.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), rev.to_string());
    }
    (new != *rs).then(|| Action::UpdateRs {
        old: rs.clone(),
        new,
    })
}

/// `rs` with `d` as its controller if it is among `adopted`.
fn ours(d: &Deployment, rs: &ReplicaSet, adopted: &HashSet<String>) -> ReplicaSet {
    let mut rs = rs.clone();
    if adopted.contains(&rs.metadata.name) {
        rs.metadata.owner_references.push(controller_ref(d));
    }
    rs
}

/// The Event of scaling `rs` up or down to `to`.
fn scaled(rs: &ReplicaSet, up: bool, to: i64) -> Action {
    let verb = if up { "up" } else { "down" };
    Action::Event {
        warning: false,
        reason: "ScalingReplicaSet",
        message: format!("Scaled {verb} replica set {} to {to}", rs.metadata.name),
    }
}
