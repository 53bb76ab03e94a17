//! The ReplicaSet controller: keeps `replicas` live pods made from the
//! template, owned by the ReplicaSet (adopting orphans its selector matches,
//! releasing pods it no longer matches), deleting the least useful pods first
//! when there are too many, and reports replicas/ready/available in status.

use std::time::Duration;

use futures::StreamExt;
use keel_proto::api::apps::ReplicaSetStatus;
use keel_proto::api::{Pod, ReplicaSet};

use super::driver::{Controller, Outcome, ReconcileResult};
use super::{Ctx, controller_ref, owner_of, pod_active, pod_available};
use crate::informer::{Delta, Key, key_of};
use crate::write;

/// Pods created or deleted per reconcile at most (the rest next time).
pub const BURST: usize = 500;

/// What the ReplicaSet controller does.
// Actions are few and short-lived; boxing the objects would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(Pod),
    Delete(Pod),
    /// Adopt (add our controller reference) or release (remove it).
    Update {
        old: Pod,
        new: Pod,
    },
    Status(ReplicaSetStatus),
}

/// A new pod from the ReplicaSet's template, named `<rs>-<random>`.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let t = &rs.spec.template;
    let mut p = Pod::new(&rs.metadata.namespace, "");
    p.metadata.generate_name = format!("{}-", rs.metadata.name);
    p.metadata.labels = t.metadata.labels.clone();
    p.metadata.annotations = t.metadata.annotations.clone();
    p.metadata.owner_references = vec![controller_ref(rs)];
    p.spec = t.spec.clone();
    p
}

/// The order in which surplus pods go: unscheduled before scheduled,
/// pending before running, not ready before ready, newest first.
fn deletion_rank(p: &Pod) -> (bool, u8, bool, std::cmp::Reverse<String>) {
    let phase = match p.status.phase.as_str() {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    (
        !p.spec.node_name.is_empty(),
        phase,
        p.is_ready(),
        std::cmp::Reverse(p.metadata.creation_timestamp.clone().unwrap_or_default()),
    )
}

/// Decides what to do for `rs` given the pods of its namespace, at `now`
/// (seconds since the epoch, for minReadySeconds).
pub fn reconcile(rs: &ReplicaSet, pods: &[&Pod], now: i64) -> Vec<Action> {
    let mut actions = Vec::new();
    if rs.metadata.deletion_timestamp.is_some() {
        return actions;
    }
    let uid = &rs.metadata.uid;
    let sel = &rs.spec.selector;
    let mut mine: Vec<&Pod> = Vec::new();
    for p in pods.iter().copied() {
        if p.metadata.namespace != rs.metadata.namespace {
            continue;
        }
        match p.metadata.controller() {
            Some(o) if &o.uid == uid => {
                if sel.matches(&p.metadata.labels) || !pod_active(p) {
                    mine.push(p);
                } else {
                    let mut new = p.clone();
                    new.metadata.owner_references.retain(|o| &o.uid != uid);
                    actions.push(Action::Update {
                        old: p.clone(),
                        new,
                    });
                }
            }
            Some(_) => {}
            None => {
                if !sel.is_empty() && pod_active(p) && sel.matches(&p.metadata.labels) {
                    let mut new = p.clone();
                    new.metadata.owner_references.push(controller_ref(rs));
                    actions.push(Action::Update {
                        old: p.clone(),
                        new,
                    });
                    mine.push(p);
                }
            }
        }
    }
    let mut active: Vec<&Pod> = mine.iter().copied().filter(|p| pod_active(p)).collect();
    let want = rs.replicas().max(0) as usize;
    if active.len() < want {
        for _ in 0..(want - active.len()).min(BURST) {
            actions.push(Action::Create(pod_from_template(rs)));
        }
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        for p in active.iter().take((active.len() - want).min(BURST)) {
            actions.push(Action::Delete((*p).clone()));
        }
    }
    let min_ready = rs.spec.min_ready_seconds;
    let template_labels = &rs.spec.template.metadata.labels;
    let status = ReplicaSetStatus {
        replicas: active.len() as i64,
        fully_labeled_replicas: active
            .iter()
            .filter(|p| {
                template_labels
                    .iter()
                    .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
            })
            .count() as i64,
        ready_replicas: active.iter().filter(|p| p.is_ready()).count() as i64,
        available_replicas: active
            .iter()
            .filter(|p| pod_available(p, min_ready, now))
            .count() as i64,
        observed_generation: rs.metadata.generation,
    };
    if status != rs.status {
        actions.push(Action::Status(status));
    }
    actions
}

/// An action carried out: the Event to record, if any, and the revision written.
type Done = (Option<(&'static str, String)>, i64);

fn rs_key_for_pod(p: &Pod) -> Option<Key> {
    owner_of(&p.metadata, "ReplicaSet").map(|o| (p.metadata.namespace.clone(), o.name.clone()))
}

/// The ReplicaSets a pod change concerns: its owner's, and for an orphan
/// every ReplicaSet whose selector matches it (it may adopt the pod).
fn keys_for_pod(inf: &super::Informers, p: &Pod) -> Vec<Key> {
    let mut keys: Vec<Key> = rs_key_for_pod(p).into_iter().collect();
    if p.metadata.controller().is_none() {
        keys.extend(
            inf.replicasets
                .filter(|rs| {
                    rs.metadata.namespace == p.metadata.namespace
                        && !rs.spec.selector.is_empty()
                        && rs.spec.selector.matches(&p.metadata.labels)
                })
                .iter()
                .map(|rs| key_of(&**rs)),
        );
    }
    keys
}

/// The driver: ReplicaSet and pod changes queue ReplicaSets.
pub async fn run(ctx: Ctx) {
    let inf = ctx.inf.clone();
    Controller::for_kind("ReplicaSet", &ctx.cancel, &ctx.inf.replicasets)
        .watches(&ctx.inf.pods, move |d| match d {
            Delta::Added(p) | Delta::Deleted(p) => keys_for_pod(&inf, p),
            Delta::Modified { old, new } => {
                let mut keys: Vec<Key> = rs_key_for_pod(old).into_iter().collect();
                keys.extend(keys_for_pod(&inf, new));
                keys
            }
            Delta::Resync => vec![],
        })
        .workers(4)
        .run(move |k| {
            let ctx = ctx.clone();
            async move { sync(&ctx, k).await }
        })
        .await
}

async fn sync(ctx: &Ctx, k: Key) -> ReconcileResult {
    let Some(rs) = ctx.inf.replicasets.get(&k.0, &k.1) else {
        return Ok(Outcome::Done);
    };
    let pods = ctx.inf.pods.filter(|p| p.metadata.namespace == k.0);
    let refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
    let now = super::now_secs();
    let actions = reconcile(&rs, &refs, now);
    let mut pod_rev = 0i64;
    let mut first_err = None;
    let mut status = None;
    let reg = &ctx.registry;
    let results: Vec<Result<Done, crate::ApiError>> =
        futures::stream::iter(actions.into_iter().filter_map(|a| match a {
            Action::Status(s) => {
                status = Some(s);
                None
            }
            a => Some(a),
        }))
        .map(|a| async move {
            match a {
                Action::Create(p) => {
                    let p = reg.create_t(&p).await?;
                    Ok((
                        Some((
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.metadata.name),
                        )),
                        p.metadata.revision(),
                    ))
                }
                Action::Delete(p) => {
                    let rev = write::delete(reg, &p).await?;
                    Ok((
                        Some((
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", p.metadata.name),
                        )),
                        rev,
                    ))
                }
                Action::Update { old, new } => {
                    let p = write::replace(reg, &old, &new).await?;
                    Ok((None, p.metadata.revision()))
                }
                Action::Status(_) => Ok((None, 0)),
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        match r {
            Ok((ev, rev)) => {
                pod_rev = pod_rev.max(rev);
                if let Some((reason, msg)) = ev {
                    ctx.events.normal(&*rs, reason, msg);
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // Read our own writes before this ReplicaSet is looked at again.
    if pod_rev > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.inf.pods.wait_for(pod_rev)).await;
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if let Some(s) = status {
        let mut new = (*rs).clone();
        new.status = s;
        let done = write::replace(reg, &*rs, &new).await?;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            ctx.inf.replicasets.wait_for(done.metadata.revision()),
        )
        .await;
    }
    // Pods ready but not yet available for minReadySeconds: look again then.
    let waiting = rs.spec.min_ready_seconds > 0
        && pods.iter().any(|p| {
            owner_of(&p.metadata, "ReplicaSet").is_some_and(|o| o.uid == rs.metadata.uid)
                && p.is_ready()
                && !pod_available(p, rs.spec.min_ready_seconds, now)
        });
    Ok(if waiting {
        Outcome::RequeueAfter(Duration::from_secs(1))
    } else {
        Outcome::Done
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::OwnerReference;
    use keel_proto::api::meta::Condition;

    fn rs(replicas: i64) -> ReplicaSet {
        let mut rs = ReplicaSet::new("default", "web-abc");
        rs.metadata.uid = "rs-uid".into();
        rs.metadata.generation = 3;
        rs.spec.replicas = Some(replicas);
        rs.spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        rs
    }

    fn pod(name: &str, owner: Option<&str>, node: &str, ready: bool, created: &str) -> Pod {
        let mut p = Pod::new("default", name);
        p.metadata.labels.insert("app".into(), "web".into());
        p.metadata.creation_timestamp = Some(created.into());
        if let Some(uid) = owner {
            p.metadata.owner_references.push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-abc".into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: None,
            });
        }
        p.spec.node_name = node.into();
        p.status.phase = if node.is_empty() {
            "Pending"
        } else {
            "Running"
        }
        .into();
        if ready {
            p.status.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some("2020-01-01T00:00:00Z".into()),
                ..Default::default()
            });
        }
        p
    }

    fn creates(a: &[Action]) -> usize {
        a.iter().filter(|a| matches!(a, Action::Create(_))).count()
    }

    fn deleted(a: &[Action]) -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Action::Delete(p) => Some(p.metadata.name.clone()),
                _ => None,
            })
            .collect()
    }

    fn status(a: &[Action]) -> Option<&ReplicaSetStatus> {
        a.iter().find_map(|a| match a {
            Action::Status(s) => Some(s),
            _ => None,
        })
    }

    #[test]
    fn scales_up_from_nothing_with_owned_labelled_pods() {
        let a = reconcile(&rs(3), &[], 0);
        assert_eq!(creates(&a), 3);
        let Action::Create(p) = &a[0] else { panic!() };
        assert_eq!(p.metadata.generate_name, "web-abc-");
        assert_eq!(p.metadata.labels["app"], "web");
        let o = p.metadata.controller().unwrap();
        assert_eq!((o.uid.as_str(), o.kind.as_str()), ("rs-uid", "ReplicaSet"));
        assert_eq!(status(&a).unwrap().observed_generation, 3);
    }

    #[test]
    fn scales_down_unscheduled_and_unready_first() {
        let ps = [
            pod(
                "old-ready",
                Some("rs-uid"),
                "n1",
                true,
                "2020-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                Some("rs-uid"),
                "n1",
                true,
                "2020-01-02T00:00:00Z",
            ),
            pod(
                "unready",
                Some("rs-uid"),
                "n2",
                false,
                "2020-01-01T00:00:00Z",
            ),
            pod("unbound", Some("rs-uid"), "", false, "2020-01-01T00:00:00Z"),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        let a = reconcile(&rs(1), &refs, 0);
        assert_eq!(deleted(&a), vec!["unbound", "unready", "new-ready"]);
        assert_eq!(creates(&a), 0);
    }

    #[test]
    fn steady_state_does_nothing() {
        let ps = [
            pod("a", Some("rs-uid"), "n1", true, "2020-01-01T00:00:00Z"),
            pod("b", Some("rs-uid"), "n2", true, "2020-01-01T00:00:00Z"),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        let mut r = rs(2);
        r.status = ReplicaSetStatus {
            replicas: 2,
            fully_labeled_replicas: 2,
            ready_replicas: 2,
            available_replicas: 2,
            observed_generation: 3,
        };
        assert_eq!(reconcile(&r, &refs, 0), vec![]);
    }

    #[test]
    fn adopts_matching_orphans_and_ignores_others_pods() {
        let mut other = pod(
            "theirs",
            Some("other-uid"),
            "n1",
            true,
            "2020-01-01T00:00:00Z",
        );
        other.metadata.owner_references[0].name = "other".into();
        let mut unrelated = pod("db", None, "n1", true, "2020-01-01T00:00:00Z");
        unrelated.metadata.labels.insert("app".into(), "db".into());
        let ps = [
            pod("orphan", None, "n1", true, "2020-01-01T00:00:00Z"),
            other,
            unrelated,
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        let a = reconcile(&rs(2), &refs, 0);
        let adopted: Vec<&Pod> = a
            .iter()
            .filter_map(|a| match a {
                Action::Update { new, .. } => Some(new),
                _ => None,
            })
            .collect();
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].metadata.name, "orphan");
        assert_eq!(adopted[0].metadata.controller().unwrap().uid, "rs-uid");
        assert_eq!(creates(&a), 1, "the adopted orphan counts");
    }

    #[test]
    fn releases_owned_pods_that_no_longer_match() {
        let mut relabelled = pod("x", Some("rs-uid"), "n1", true, "2020-01-01T00:00:00Z");
        relabelled
            .metadata
            .labels
            .insert("app".into(), "debug".into());
        let refs = [&relabelled];
        let a = reconcile(&rs(1), &refs, 0);
        assert!(a.iter().any(
            |a| matches!(a, Action::Update { new, .. } if new.metadata.owner_references.is_empty())
        ));
        assert_eq!(creates(&a), 1);
    }

    #[test]
    fn deleting_and_terminal_pods_do_not_count() {
        let mut gone = pod("gone", Some("rs-uid"), "n1", true, "2020-01-01T00:00:00Z");
        gone.metadata.deletion_timestamp = Some("2020-01-01T00:00:00Z".into());
        let mut failed = pod(
            "failed",
            Some("rs-uid"),
            "n1",
            false,
            "2020-01-01T00:00:00Z",
        );
        failed.status.phase = "Failed".into();
        let refs = [&gone, &failed];
        let a = reconcile(&rs(2), &refs, 0);
        assert_eq!(creates(&a), 2);
        assert!(deleted(&a).is_empty());
    }

    #[test]
    fn a_deleted_replicaset_does_nothing() {
        let mut r = rs(3);
        r.metadata.deletion_timestamp = Some("2020-01-01T00:00:00Z".into());
        assert!(reconcile(&r, &[], 0).is_empty());
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let ps = [pod("a", Some("rs-uid"), "n1", true, "2020-01-01T00:00:00Z")];
        let refs: Vec<&Pod> = ps.iter().collect();
        let mut r = rs(1);
        r.spec.min_ready_seconds = 30;
        let t0 = keel_proto::api::meta::parse_rfc3339("2020-01-01T00:00:00Z").unwrap();
        let s = status(&reconcile(&r, &refs, t0 + 10)).cloned().unwrap();
        assert_eq!((s.ready_replicas, s.available_replicas), (1, 0));
        let s = status(&reconcile(&r, &refs, t0 + 30)).cloned().unwrap();
        assert_eq!(s.available_replicas, 1);
    }

    #[test]
    fn creates_at_most_a_burst() {
        let a = reconcile(&rs(2000), &[], 0);
        assert_eq!(creates(&a), BURST);
    }
}
