//! RollingUpdate: the new ReplicaSet grows as far as maxSurge allows (or
//! shrinks to size); once it is where it should be, old ReplicaSets shrink
//! as far as availability allows (never below replicas - maxUnavailable
//! available pods), their unhealthy pods first.

use keel_proto::api::ReplicaSet;

use crate::controllers::deployment::plan::{Plan, Target, View};

/// An old ReplicaSet and the size it is to have.
struct Old<'a> {
    rs: &'a ReplicaSet,
    target: i64,
}

pub fn plan(v: &View) -> Plan {
    let new_spec = v.new_rs().map_or(0, |rs| rs.replicas());
    let new_target = new_size(v, new_spec);
    let mut olds: Vec<Old> = v
        .olds()
        .map(|rs| Old {
            rs,
            target: rs.replicas(),
        })
        .collect();
    let new_rs = match v.new_rs() {
        Some(new) => {
            if new_target == new_spec {
                scale_down_olds(v, new, &mut olds);
            }
            Target::Scale(new_target)
        }
        None => Target::Create(new_target),
    };
    Plan {
        new_rs,
        old: olds
            .into_iter()
            .map(|o| (o.rs.metadata.name.clone(), o.target))
            .collect(),
    }
}

/// The new ReplicaSet's size: up within the surge, or down to size.
fn new_size(v: &View, new_spec: i64) -> i64 {
    if new_spec > v.replicas {
        return v.replicas;
    }
    if new_spec == v.replicas {
        return new_spec;
    }
    let current: i64 = v.owned.iter().map(|rs| v.counts.size(rs)).sum();
    let max_total = v.replicas + v.max_surge;
    if current < max_total {
        new_spec + (max_total - current).min(v.replicas - new_spec)
    } else {
        new_spec
    }
}

/// Shrinks old ReplicaSets as far as availability allows: unhealthy pods
/// first (they serve nothing), then healthy ones, oldest first.
fn scale_down_olds(v: &View, new: &ReplicaSet, olds: &mut [Old]) {
    if olds.iter().map(|o| o.rs.replicas()).sum::<i64>() == 0 {
        return;
    }
    let min_available = v.replicas - v.max_unavailable;
    let all: i64 = v.owned.iter().map(|rs| rs.replicas()).sum();
    let new_unavailable = new.replicas() - v.counts.available(new);
    let mut room = all - min_available - new_unavailable;
    if room <= 0 {
        return;
    }
    for o in olds.iter_mut() {
        if room <= 0 {
            break;
        }
        let unhealthy = o.target - v.counts.available(o.rs);
        if unhealthy > 0 {
            let cut = unhealthy.min(room);
            o.target -= cut;
            room -= cut;
        }
    }
    let available = new.replicas().min(v.counts.available(new))
        + olds
            .iter()
            .map(|o| o.target.min(v.counts.available(o.rs)))
            .sum::<i64>();
    let mut cut_total = available - min_available;
    for o in olds.iter_mut() {
        if cut_total <= 0 {
            break;
        }
        let cut = o.target.min(cut_total);
        o.target -= cut;
        cut_total -= cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::fixtures::*;

    #[test]
    fn a_new_deployment_creates_its_replicaset_at_full_size() {
        let d = rolling(deployment(6, "v1"), 2, 1);
        let p = plan(&view(&d, &[], &[]));
        assert_eq!(p.new_rs, Target::Create(6));
        assert!(p.old.is_empty());
    }

    #[test]
    fn the_new_replicaset_grows_within_the_surge_first() {
        let d = rolling(deployment(6, "v2"), 2, 1);
        let old = rs("old", 1, 6);
        let pods = pods_of(&old, 6, true);
        // A template change: 6 + 2 surge, the old one untouched for now.
        let p = plan(&view(&d, &[&old], &pods));
        assert_eq!(p.new_rs, Target::Create(2));
        assert_eq!(p.old, vec![("old".to_string(), 6)]);
        // The new one at 2, not ready yet: no room to grow, and the old one
        // shrinks by maxUnavailable only (6 - 1 = 5 must stay available).
        let new = new_rs(&d, 2, 2);
        let mut pods = pods_of(&old, 6, true);
        pods.extend(pods_of(&new, 2, false));
        let p = plan(&view(&d, &[&old, &new], &pods));
        assert_eq!(p.new_rs, Target::Scale(2));
        assert_eq!(p.old, vec![("old".to_string(), 5)]);
    }

    #[test]
    fn old_replicasets_shrink_as_new_pods_become_available() {
        let d = rolling(deployment(6, "v2"), 2, 1);
        let old = rs("old", 1, 6);
        let new = new_rs(&d, 2, 2);
        let mut pods = pods_of(&old, 6, true);
        pods.extend(pods_of(&new, 2, true));
        // 8 available, 5 needed: three old pods may go.
        let p = plan(&view(&d, &[&old, &new], &pods));
        assert_eq!(p.new_rs, Target::Scale(2));
        assert_eq!(p.old, vec![("old".to_string(), 3)]);
    }

    #[test]
    fn unhealthy_old_pods_go_before_healthy_older_ones() {
        let d = rolling(deployment(4, "v2"), 1, 1);
        let older = rs("older", 1, 2);
        let old = rs("old", 2, 2);
        let new = new_rs(&d, 3, 1);
        // The newer old ReplicaSet's pods are not ready; the others are.
        let mut pods = pods_of(&older, 2, true);
        pods.extend(pods_of(&old, 2, false));
        pods.extend(pods_of(&new, 1, true));
        let p = plan(&view(&d, &[&older, &old, &new], &pods));
        assert_eq!(
            p.old,
            vec![("older".to_string(), 2), ("old".to_string(), 0)],
            "the two unready pods go; 3 available stay (4 - maxUnavailable)"
        );
    }

    #[test]
    fn a_finished_rollout_only_scales() {
        let d = rolling(deployment(2, "v1"), 1, 0);
        let new = new_rs(&d, 1, 6);
        let pods = pods_of(&new, 6, true);
        let p = plan(&view(&d, &[&new], &pods));
        assert_eq!(p.new_rs, Target::Scale(2));
        assert!(p.old.is_empty());
    }
}
