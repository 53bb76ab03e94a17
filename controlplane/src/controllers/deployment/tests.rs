//! The Deployment controller's behaviour over whole rollouts: the decision
//! run step by step against a simulated ReplicaSet controller and kubelet,
//! plus single decisions over plain values.

use std::collections::HashMap;

use keel_proto::api::apps::{REVISION_ANNOTATION, ROLLBACK_ANNOTATION, TEMPLATE_HASH_LABEL};
use keel_proto::api::meta::Condition;
use keel_proto::api::{Deployment, Pod, ReplicaSet};

use keel_proto::api::apps::{DeploymentStrategy, RollingUpdate};
use keel_proto::api::meta::IntOrString;

use super::fixtures::{deployment, ready_condition};
use super::*;
use crate::controllers::replicaset;

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
                Action::DeleteRs(rs) => self.rss.retain(|r| r.metadata.name != rs.metadata.name),
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
    assert!(a.iter().any(
        |a| matches!(a, Action::Update(nd) if nd.metadata.annotations[REVISION_ANNOTATION] == "1")
    ));
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
