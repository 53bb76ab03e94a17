//! Revisions and what hangs off them: the revision number each ReplicaSet
//! carries (and the Deployment copies from its new one), rollback to an
//! earlier revision through the `keel.dev/rollback-to` annotation, and the
//! history limit (old, empty ReplicaSets beyond it are deleted, oldest
//! first).

use keel_proto::api::apps::{REVISION_ANNOTATION, ROLLBACK_ANNOTATION, TEMPLATE_HASH_LABEL};
use keel_proto::api::{Deployment, ReplicaSet};

use super::plan::{Plan, View};
use super::reconcile::Action;

/// Old ReplicaSets kept for rollback when the Deployment does not say.
pub const DEFAULT_HISTORY_LIMIT: i64 = 10;

/// A ReplicaSet's revision annotation (0 when missing).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The revision the current template's ReplicaSet carries once rolled out:
/// its own if it is the newest, else one past the newest old one.
pub fn new_revision(v: &View) -> i64 {
    let newest_old = v.olds().map(revision).max().unwrap_or(0);
    match v.new_rs().map(revision) {
        Some(r) if r > newest_old => r,
        _ => newest_old + 1,
    }
}

/// The old ReplicaSets to delete: those the plan leaves empty that have no
/// pods left, beyond the history limit, oldest first.
pub fn beyond_limit<'a>(v: &View<'a>, plan: &Plan) -> Vec<&'a ReplicaSet> {
    let limit =
        v.d.spec
            .revision_history_limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .max(0) as usize;
    let empty: Vec<&ReplicaSet> = v
        .olds()
        .filter(|rs| {
            plan.target_of(v, rs) == 0
                && rs.status.replicas == 0
                && v.counts.live(rs) == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let excess = empty.len().saturating_sub(limit);
    empty.into_iter().take(excess).collect()
}

/// The rollback the annotation asks for: the template of that revision's
/// ReplicaSet (0: the one before the current), and the annotation removed;
/// a warning instead when there is no such revision.
pub fn rollback(d: &Deployment, owned: &[&ReplicaSet], to: &str) -> Vec<Action> {
    let mut nd = d.clone();
    nd.metadata.annotations.remove(ROLLBACK_ANNOTATION);
    let mut revs: Vec<i64> = owned
        .iter()
        .map(|rs| revision(rs))
        .filter(|r| *r > 0)
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::fixtures::*;
    use crate::controllers::deployment::plan::Target;

    #[test]
    fn the_new_replicaset_keeps_its_revision_only_while_it_is_the_newest() {
        let d = deployment(2, "v2");
        let old = rs("old", 3, 0);
        assert_eq!(new_revision(&view(&d, &[&old], &[])), 4, "created");
        let new = new_rs(&d, 5, 2);
        assert_eq!(new_revision(&view(&d, &[&old, &new], &[])), 5);
        // Rolled back to: an old template becomes the newest revision.
        let new = new_rs(&d, 2, 2);
        assert_eq!(new_revision(&view(&d, &[&old, &new], &[])), 4);
    }

    #[test]
    fn only_empty_old_replicasets_beyond_the_limit_go_oldest_first() {
        let mut d = deployment(2, "v9");
        d.spec.revision_history_limit = Some(1);
        let (a, b, c) = (rs("a", 1, 0), rs("b", 2, 0), rs("c", 3, 0));
        let busy = rs("busy", 4, 1);
        let new = new_rs(&d, 5, 2);
        let pods = pods_of(&c, 1, true);
        let v = view(&d, &[&c, &busy, &b, &new, &a], &pods);
        let plan = Plan {
            new_rs: Target::Scale(2),
            old: vec![
                ("a".into(), 0),
                ("b".into(), 0),
                ("c".into(), 0),
                ("busy".into(), 1),
            ],
        };
        let names: Vec<&str> = beyond_limit(&v, &plan)
            .iter()
            .map(|rs| rs.metadata.name.as_str())
            .collect();
        // Empty: a and b (c still has a pod, busy has replicas); keep one.
        assert_eq!(names, ["a"]);
    }
}
