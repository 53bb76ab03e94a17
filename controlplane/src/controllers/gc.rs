//! Garbage collection: an object whose owners (by uid) are all gone is
//! deleted, as Kubernetes' default background propagation does. This is how
//! deleting a Deployment takes its ReplicaSets and their pods with it, and a
//! Service its Endpoints. Before deleting, the collector confirms with a
//! linearizable read that each owner is really gone (its caches may be
//! behind the dependent's), and the delete is conditional on the dependent's
//! revision.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use keel_proto::api::{Deployment, Endpoints, ObjectMeta, Pod, ReplicaSet, Resource, Service};

use super::Ctx;
use super::driver::{Controller, Outcome, singleton_key};
use crate::informer::{Delta, Key};
use crate::kinds;
use crate::write;

/// Owner kinds the collector knows; references to other kinds keep an object.
pub const OWNER_KINDS: [&str; 3] = ["Deployment", "ReplicaSet", "Service"];
/// A full scan runs at least this often (and at once when an owner goes).
const SCAN_EVERY: Duration = Duration::from_secs(2);

/// Whether `meta` is garbage: it has owners, all of known kinds, and none of
/// them is in `live` (the uids of existing owners).
pub fn is_garbage(meta: &ObjectMeta, live: &HashSet<String>) -> bool {
    meta.deletion_timestamp.is_none()
        && !meta.owner_references.is_empty()
        && meta
            .owner_references
            .iter()
            .all(|o| OWNER_KINDS.contains(&o.kind.as_str()) && !live.contains(&o.uid))
}

/// The dependents among `objects` to delete.
pub fn reconcile<'a, T: Resource>(objects: &'a [&'a T], live: &HashSet<String>) -> Vec<&'a T> {
    objects
        .iter()
        .copied()
        .filter(|o| is_garbage(o.meta(), live))
        .collect()
}

/// Owner deletions, and owners marked for an orphan or foreground delete,
/// start a scan at once.
fn owner_gone<T: Resource>(d: &Delta<T>) -> Vec<Key> {
    match d {
        Delta::Deleted(_) => vec![singleton_key()],
        Delta::Modified { new, .. } if super::propagation::pending(&**new).is_some() => {
            vec![singleton_key()]
        }
        _ => vec![],
    }
}

/// The driver: scans when an owner is deleted, and every couple of seconds.
pub async fn run(ctx: Ctx) {
    let inf = &ctx.inf;
    Controller::singleton("GarbageCollector", &ctx.cancel)
        .watches(&inf.deployments, owner_gone)
        .watches(&inf.replicasets, owner_gone)
        .watches(&inf.services, owner_gone)
        .reads(&inf.pods)
        .reads(&inf.endpoints)
        .run({
            let ctx = ctx.clone();
            move |_| {
                let ctx = ctx.clone();
                async move {
                    scan(&ctx).await;
                    Ok(Outcome::RequeueAfter(SCAN_EVERY))
                }
            }
        })
        .await
}

async fn scan(ctx: &Ctx) {
    let inf = &ctx.inf;
    let mut live: HashSet<String> = HashSet::new();
    live.extend(
        inf.deployments
            .list()
            .iter()
            .map(|o| o.metadata.uid.clone()),
    );
    live.extend(
        inf.replicasets
            .list()
            .iter()
            .map(|o| o.metadata.uid.clone()),
    );
    live.extend(inf.services.list().iter().map(|o| o.metadata.uid.clone()));
    collect::<ReplicaSet>(ctx, &inf.replicasets.list(), &live).await;
    collect::<Pod>(ctx, &inf.pods.list(), &live).await;
    collect::<Endpoints>(ctx, &inf.endpoints.list(), &live).await;
    // Owners deleted with propagationPolicy Orphan or Foreground.
    use super::propagation::settle;
    settle::<Deployment, ReplicaSet>(ctx, &inf.deployments.list()).await;
    settle::<ReplicaSet, Pod>(ctx, &inf.replicasets.list()).await;
    settle::<Service, Endpoints>(ctx, &inf.services.list()).await;
}

async fn collect<T: Resource>(ctx: &Ctx, objs: &[std::sync::Arc<T>], live: &HashSet<String>) {
    let refs: Vec<&T> = objs.iter().map(|o| &**o).collect();
    let garbage = reconcile(&refs, live);
    if garbage.is_empty() {
        return;
    }
    futures::stream::iter(garbage)
        .for_each_concurrent(16, |o| async move {
            let m = o.meta();
            for owner in &m.owner_references {
                if owner_exists(ctx, &m.namespace, owner).await {
                    return;
                }
            }
            match write::delete(&ctx.registry, o).await {
                Ok(_) => {
                    tracing::info!(kind = T::KIND, namespace = %m.namespace, name = %m.name, "deleted: its owner is gone");
                    ctx.events.for_component("garbage-collector").normal(
                        o,
                        "GarbageCollected",
                        format!("Deleted {} {}: its owner is gone", T::KIND, m.name),
                    );
                }
                Err(e) => tracing::debug!(error = %e, "garbage not deleted yet"),
            }
        })
        .await;
}

/// Whether the owner exists with that uid (linearizable; an error counts as
/// "exists", so an unavailable store never causes a deletion).
async fn owner_exists(ctx: &Ctx, ns: &str, o: &keel_proto::api::OwnerReference) -> bool {
    let kind = match o.kind.as_str() {
        "Deployment" => kinds::of::<Deployment>(),
        "ReplicaSet" => kinds::of::<ReplicaSet>(),
        "Service" => kinds::of::<Service>(),
        _ => return true,
    };
    match ctx.registry.get(kind, ns, &o.name).await {
        Ok(v) => crate::registry::str_at(&v, &["metadata", "uid"]) == o.uid,
        Err(e) => !e.is_not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::OwnerReference;

    fn owned(name: &str, refs: &[(&str, &str)]) -> Pod {
        let mut p = Pod::new("default", name);
        for (kind, uid) in refs {
            p.metadata.owner_references.push(OwnerReference {
                kind: kind.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                ..Default::default()
            });
        }
        p
    }

    #[test]
    fn dependents_of_gone_owners_are_garbage() {
        let live: HashSet<String> = ["rs-1".to_string()].into();
        let ps = [
            owned("kept", &[("ReplicaSet", "rs-1")]),
            owned("orphaned", &[("ReplicaSet", "rs-gone")]),
            owned("bare", &[]),
            owned(
                "one-owner-left",
                &[("ReplicaSet", "rs-gone"), ("ReplicaSet", "rs-1")],
            ),
            owned("unknown-kind", &[("CronJob", "cj-1")]),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        let names: Vec<&str> = reconcile(&refs, &live)
            .iter()
            .map(|p| p.metadata.name.as_str())
            .collect();
        assert_eq!(names, vec!["orphaned"]);
    }

    #[test]
    fn objects_already_being_deleted_are_left_alone() {
        let mut p = owned("going", &[("Deployment", "gone")]);
        p.metadata.deletion_timestamp = Some("2020-01-01T00:00:00Z".into());
        assert!(!is_garbage(&p.metadata, &HashSet::new()));
        let rs_of_deleted_deployment = {
            let mut rs = ReplicaSet::new("default", "web-abc");
            rs.metadata.owner_references.push(OwnerReference {
                kind: "Deployment".into(),
                uid: "d-gone".into(),
                ..Default::default()
            });
            rs
        };
        assert!(is_garbage(
            &rs_of_deleted_deployment.metadata,
            &HashSet::new()
        ));
    }
}
