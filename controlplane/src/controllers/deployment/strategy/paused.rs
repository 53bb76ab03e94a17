//! Paused: the rollout does not progress (nothing is created, no revision
//! moves), but a change of replicas is shared over the ReplicaSets that
//! have pods, in proportion to their sizes, the remainder to the largest.

use keel_proto::api::ReplicaSet;

use super::is_recreate;
use crate::controllers::deployment::plan::{Plan, Target, View};

pub fn plan(v: &View) -> Plan {
    // Every owned ReplicaSet with its size to be, in revision order.
    let mut sizes: Vec<(&ReplicaSet, i64)> =
        v.owned.iter().map(|rs| (*rs, rs.replicas())).collect();
    share_out(v, &mut sizes);
    let new_rs = match v.new_rs() {
        Some(new) => Target::Scale(
            sizes
                .iter()
                .find(|(rs, _)| rs.metadata.name == new.metadata.name)
                .map_or(new.replicas(), |(_, n)| *n),
        ),
        None => Target::Absent,
    };
    Plan {
        new_rs,
        old: sizes
            .iter()
            .filter(|(rs, _)| !v.is_new(rs))
            .map(|(rs, n)| (rs.metadata.name.clone(), *n))
            .collect(),
    }
}

fn share_out(v: &View, sizes: &mut [(&ReplicaSet, i64)]) {
    let active: Vec<usize> = (0..sizes.len())
        .filter(|i| sizes[*i].0.replicas() > 0 || v.is_new(sizes[*i].0))
        .collect();
    match active.len() {
        0 => {}
        1 => sizes[active[0]].1 = v.replicas,
        _ => {
            let total: i64 = active.iter().map(|i| sizes[*i].0.replicas()).sum();
            let allowed = if is_recreate(v.d) {
                v.replicas
            } else {
                v.replicas + v.max_surge
            };
            let delta = allowed - total;
            if delta == 0 || total == 0 {
                return;
            }
            let mut given = 0;
            let mut by_size = active;
            by_size.sort_by_key(|i| std::cmp::Reverse(sizes[*i].0.replicas()));
            for i in &by_size {
                let spec = sizes[*i].0.replicas();
                let share = spec * delta / total;
                sizes[*i].1 = (spec + share).max(0);
                given += share;
            }
            let first = by_size[0];
            sizes[first].1 = (sizes[first].1 + delta - given).max(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::fixtures::*;

    fn paused(mut d: keel_proto::api::Deployment) -> keel_proto::api::Deployment {
        d.spec.paused = true;
        d
    }

    #[test]
    fn a_lone_replicaset_takes_the_new_size_and_nothing_is_created() {
        let d = paused(deployment(5, "v2"));
        let old = rs("old", 1, 3);
        let p = plan(&view(&d, &[&old], &[]));
        assert_eq!(p.new_rs, Target::Absent, "no rollout while paused");
        assert_eq!(p.old, vec![("old".to_string(), 5)]);
    }

    #[test]
    fn mid_rollout_a_new_size_is_shared_in_proportion() {
        // 20 + 25% surge (5) = 25 over 6:4.
        let d = paused(deployment(20, "v2"));
        let old = rs("old", 1, 6);
        let new = new_rs(&d, 2, 4);
        let p = plan(&view(&d, &[&old, &new], &[]));
        assert_eq!(p.new_rs, Target::Scale(10));
        assert_eq!(p.old, vec![("old".to_string(), 15)]);
        // Recreate allows no surge: 20 over 6:4, the remainder to the larger.
        let d = recreate(paused(deployment(20, "v2")));
        let p = plan(&view(&d, &[&old, &new], &[]));
        assert_eq!(p.new_rs, Target::Scale(8));
        assert_eq!(p.old, vec![("old".to_string(), 12)]);
    }

    #[test]
    fn empty_old_replicasets_stay_empty() {
        let d = paused(deployment(4, "v2"));
        let gone = rs("gone", 1, 0);
        let new = new_rs(&d, 2, 2);
        let p = plan(&view(&d, &[&gone, &new], &[]));
        assert_eq!(p.new_rs, Target::Scale(4));
        assert_eq!(p.old, vec![("gone".to_string(), 0)]);
    }
}
