//! Recreate: every old ReplicaSet goes to zero, and the new one is created
//! (or scaled up) only once no old pod is left alive.

use crate::controllers::deployment::plan::{Plan, Target, View};

pub fn plan(v: &View) -> Plan {
    let olds_up = v.olds().any(|rs| rs.replicas() > 0);
    let olds_live = v.olds().any(|rs| v.counts.live(rs) > 0);
    let old_gone = !olds_up && !olds_live;
    let size = if old_gone { v.replicas } else { 0 };
    let new_rs = match v.new_rs() {
        Some(_) => Target::Scale(size),
        None if old_gone => Target::Create(size),
        None => Target::Absent,
    };
    Plan {
        new_rs,
        old: v.olds().map(|rs| (rs.metadata.name.clone(), 0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::fixtures::*;

    #[test]
    fn old_pods_must_be_gone_before_the_new_replicaset_appears() {
        let d = recreate(deployment(3, "v2"));
        let old = rs("old", 1, 3);
        let pods = pods_of(&old, 3, true);
        // Old ReplicaSet up: it goes to zero, nothing new yet.
        let p = plan(&view(&d, &[&old], &pods));
        assert_eq!(p.new_rs, Target::Absent);
        assert_eq!(p.old, vec![("old".to_string(), 0)]);
        // Scaled to zero but pods still alive: still nothing new.
        let old = rs("old", 1, 0);
        assert_eq!(plan(&view(&d, &[&old], &pods)).new_rs, Target::Absent);
        // Every old pod gone: the new one at full size.
        assert_eq!(plan(&view(&d, &[&old], &[])).new_rs, Target::Create(3));
    }

    #[test]
    fn an_existing_new_replicaset_waits_at_zero() {
        let d = recreate(deployment(3, "v2"));
        let old = rs("old", 1, 2);
        let new = new_rs(&d, 2, 0);
        let p = plan(&view(&d, &[&old, &new], &[]));
        assert_eq!(p.new_rs, Target::Scale(0));
        let old = rs("old", 1, 0);
        let p = plan(&view(&d, &[&old, &new], &[]));
        assert_eq!(p.new_rs, Target::Scale(3));
    }
}
