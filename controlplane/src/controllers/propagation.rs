//! Orphan and foreground deletion (`DeleteOptions.propagationPolicy`), as
//! Kubernetes' garbage collector does them. The API marks the owner with a
//! deletionTimestamp and the `orphan` or `foregroundDeletion` finalizer
//! (`Registry::delete_with_finalizer`); the garbage collector's scans then
//! release the owner's dependents (drop it from their ownerReferences) or
//! delete them, and once none is left drop the finalizer, which deletes the
//! owner. A foreground delete marks a dependent that has dependents of its
//! own (a Deployment's ReplicaSets) for foreground deletion in turn, so the
//! whole tree is gone before the owner. Background deletion (the default)
//! needs none of this: the owner goes at once and `gc.rs` collects what it
//! leaves.

use std::sync::Arc;

use keel_proto::api::Resource;

use super::Ctx;
use crate::write;

/// The finalizer of `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";
/// The finalizer of `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";

/// One thing to do for a marked owner.
#[derive(Debug, PartialEq)]
pub enum Step<'a, T> {
    /// Orphan: drop the owner from this dependent's ownerReferences.
    Release(&'a T),
    /// Foreground: delete this dependent.
    Delete(&'a T),
    /// No dependent is left: drop the finalizer (the owner goes).
    Finish,
}

/// The finalizer of `owner` this module acts on, when it is being deleted.
pub fn pending(owner: &impl Resource) -> Option<&'static str> {
    let m = owner.meta();
    m.deletion_timestamp.as_ref()?;
    [ORPHAN, FOREGROUND]
        .into_iter()
        .find(|f| m.finalizers.iter().any(|x| x == f))
}

/// Whether objects of `kind` own dependents this module settles (the
/// owners of `gc.rs`'s `settle` calls): a foreground delete reaches their
/// dependents too. Others would keep a foreground finalizer nobody drops.
pub fn has_dependents(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "Service")
}

/// What to do for the owner `owner_uid`, marked with `finalizer`, given the
/// objects that may depend on it (read linearizably). A foreground delete
/// waits for dependents already going.
pub fn plan<'a, T: Resource>(
    owner_uid: &str,
    finalizer: &str,
    objects: &'a [T],
) -> Vec<Step<'a, T>> {
    let mine: Vec<&T> = objects
        .iter()
        .filter(|d| d.meta().owner_references.iter().any(|o| o.uid == owner_uid))
        .collect();
    if mine.is_empty() {
        return vec![Step::Finish];
    }
    mine.into_iter()
        .filter_map(|d| match finalizer {
            ORPHAN => Some(Step::Release(d)),
            _ if d.meta().deletion_timestamp.is_some() => None,
            _ => Some(Step::Delete(d)),
        })
        .collect()
}

/// Carries out the plan of every marked owner among `owners`, whose
/// dependents are of kind `D`.
pub async fn settle<O: Resource, D: Resource>(ctx: &Ctx, owners: &[Arc<O>]) {
    for owner in owners {
        let Some(finalizer) = pending(&**owner) else {
            continue;
        };
        let m = owner.meta();
        let Ok((objects, _)) = ctx.registry.list_t::<D>(Some(&m.namespace)).await else {
            continue;
        };
        for step in plan(&m.uid, finalizer, &objects) {
            let r = match step {
                Step::Release(d) => {
                    let mut new = d.clone();
                    new.meta_mut().owner_references.retain(|o| o.uid != m.uid);
                    write::replace_keep_generation(&ctx.registry, d, &new)
                        .await
                        .map(|_| ())
                }
                // A dependent with dependents of its own goes in the
                // foreground too, so the whole tree is gone before the owner.
                Step::Delete(d) if has_dependents(D::KIND) => {
                    write::delete_with_finalizer(&ctx.registry, d, FOREGROUND)
                        .await
                        .map(|_| ())
                }
                Step::Delete(d) => write::delete(&ctx.registry, d).await.map(|_| ()),
                Step::Finish => {
                    let mut new = (**owner).clone();
                    new.meta_mut().finalizers.retain(|f| f != finalizer);
                    write::replace_keep_generation(&ctx.registry, &**owner, &new)
                        .await
                        .map(|_| ())
                }
            };
            match r {
                Ok(()) => {
                    tracing::info!(kind = O::KIND, name = %m.name, finalizer, "propagating a delete")
                }
                Err(e) => tracing::debug!(error = %e, "propagation step not done yet"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::{OwnerReference, Pod, ReplicaSet};

    fn owned_by(name: &str, uid: &str) -> Pod {
        let mut p = Pod::new("default", name);
        p.metadata.owner_references.push(OwnerReference {
            kind: "ReplicaSet".into(),
            uid: uid.into(),
            ..Default::default()
        });
        p
    }

    #[test]
    fn orphan_releases_foreground_deletes_and_both_finish_when_none_is_left() {
        let pods = vec![
            owned_by("a", "u1"),
            owned_by("b", "u1"),
            owned_by("c", "other"),
        ];
        let steps = plan("u1", ORPHAN, &pods);
        assert_eq!(
            steps,
            vec![Step::Release(&pods[0]), Step::Release(&pods[1])]
        );
        let steps = plan("u1", FOREGROUND, &pods);
        assert_eq!(steps, vec![Step::Delete(&pods[0]), Step::Delete(&pods[1])]);
        // A dependent already going is waited for, not deleted again.
        let mut going = pods.clone();
        going[0].metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(
            plan("u1", FOREGROUND, &going),
            vec![Step::Delete(&going[1])]
        );
        assert_eq!(plan("u1", ORPHAN, &pods[2..]), vec![Step::Finish]);
        assert_eq!(plan("u1", FOREGROUND, &[] as &[Pod]), vec![Step::Finish]);
    }

    #[test]
    fn foreground_reaches_down_only_through_owners() {
        assert!(has_dependents("ReplicaSet") && has_dependents("Deployment"));
        assert!(!has_dependents("Pod") && !has_dependents("Endpoints"));
    }

    #[test]
    fn only_a_marked_owner_with_the_finalizer_is_pending() {
        let mut rs = ReplicaSet::new("default", "r");
        assert_eq!(pending(&rs), None);
        rs.metadata.finalizers = vec![ORPHAN.into()];
        assert_eq!(pending(&rs), None, "not being deleted yet");
        rs.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(pending(&rs), Some(ORPHAN));
        rs.metadata.finalizers = vec!["example.com/other".into(), FOREGROUND.into()];
        assert_eq!(pending(&rs), Some(FOREGROUND));
    }
}
