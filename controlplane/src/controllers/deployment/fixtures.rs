//! Plain values for the deployment controller's unit tests.

use keel_proto::api::apps::{DeploymentStrategy, RollingUpdate};
use keel_proto::api::core::Container;
use keel_proto::api::meta::{Condition, IntOrString};
use keel_proto::api::{Deployment, OwnerReference, Pod, ReplicaSet};

use super::plan::View;
use super::template::{new_replicaset, template_hash};

/// The Deployment `default/web` (uid `d-uid`, generation 1) of `image`.
pub fn deployment(replicas: i64, image: &str) -> Deployment {
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

pub fn rolling(mut d: Deployment, surge: i64, unavailable: i64) -> Deployment {
    d.spec.strategy = Some(DeploymentStrategy {
        type_: "RollingUpdate".into(),
        rolling_update: Some(RollingUpdate {
            max_surge: Some(IntOrString::Int(surge)),
            max_unavailable: Some(IntOrString::Int(unavailable)),
        }),
    });
    d
}

pub fn recreate(mut d: Deployment) -> Deployment {
    d.spec.strategy = Some(DeploymentStrategy {
        type_: "Recreate".into(),
        rolling_update: None,
    });
    d
}

/// An old ReplicaSet of `web` named `name` (uid `uid-<name>`), running an
/// image of its own.
pub fn rs(name: &str, revision: i64, replicas: i64) -> ReplicaSet {
    let old = deployment(0, &format!("image-of-{name}"));
    let hash = template_hash(&old.spec.template);
    let mut rs = new_replicaset(&old, &hash, revision, replicas);
    rs.metadata.name = name.into();
    rs.metadata.uid = format!("uid-{name}");
    rs
}

/// The ReplicaSet of `d`'s current template (uid `uid-new`).
pub fn new_rs(d: &Deployment, revision: i64, replicas: i64) -> ReplicaSet {
    let mut rs = new_replicaset(d, &template_hash(&d.spec.template), revision, replicas);
    rs.metadata.uid = "uid-new".into();
    rs
}

/// The Ready condition of a pod ready long ago (so also available).
pub fn ready_condition() -> Condition {
    Condition {
        type_: "Ready".into(),
        status: "True".into(),
        last_transition_time: Some("2020-01-01T00:00:00Z".into()),
        ..Default::default()
    }
}

/// `n` running pods of `rs`, ready or not.
pub fn pods_of(rs: &ReplicaSet, n: usize, ready: bool) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            let mut p = Pod::new("default", &format!("{}-{i}", rs.metadata.name));
            p.metadata.labels = rs.spec.template.metadata.labels.clone();
            p.metadata.owner_references.push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: rs.metadata.name.clone(),
                uid: rs.metadata.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            });
            p.status.phase = "Running".into();
            if ready {
                p.status.conditions.push(ready_condition());
            }
            p
        })
        .collect()
}

/// The view of `d` owning `rss`, over `pods`, at time 0.
pub fn view<'a>(d: &'a Deployment, rss: &[&'a ReplicaSet], pods: &[Pod]) -> View<'a> {
    let pods: Vec<&Pod> = pods.iter().collect();
    View::new(d, rss.to_vec(), &pods, 0)
}

#[test]
fn fixtures_tell_old_from_new() {
    let d = deployment(1, "v1");
    let (old, new) = (rs("old", 1, 1), new_rs(&d, 2, 1));
    let v = view(&d, &[&old, &new], &[]);
    assert_eq!(v.olds().count(), 1);
    assert!(v.new_rs().is_some());
    assert_eq!(v.hash, template_hash(&d.spec.template));
}
