//! The Deployment's status: replica counts over every ReplicaSet it owns,
//! and the Available (enough pods available within maxUnavailable) and
//! Progressing (paused, rolling out, or the new ReplicaSet complete)
//! conditions.

use keel_proto::api::apps::DeploymentStatus;
use keel_proto::api::meta::{Condition, rfc3339, set_condition};

use super::plan::View;

/// The status `view` shows at `now` (seconds since the epoch).
pub fn status(v: &View, now: i64) -> DeploymentStatus {
    let d = v.d;
    let replicas: i64 = v.owned.iter().map(|rs| v.counts.live(rs)).sum();
    let ready: i64 = v.owned.iter().map(|rs| v.counts.ready(rs)).sum();
    let available: i64 = v.owned.iter().map(|rs| v.counts.available_pods(rs)).sum();
    let updated = v.new_rs().map_or(0, |rs| v.counts.live(rs));
    let want = v.replicas;
    let mut conditions = d.status.conditions.clone();
    let now_s = rfc3339(now);
    let ok = available >= want - v.max_unavailable;
    set_condition(
        &mut conditions,
        Condition {
            type_: "Available".into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: if ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            }
            .into(),
            message: if ok {
                "Deployment has minimum availability."
            } else {
                "Deployment does not have minimum availability."
            }
            .into(),
            ..Default::default()
        },
        &now_s,
    );
    let new_name = v.new_name.clone().unwrap_or_default();
    let (status, reason, message) = if d.spec.paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_string(),
        )
    } else if v.new_name.is_some() && updated == want && replicas == want && available == want {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    set_condition(
        &mut conditions,
        Condition {
            type_: "Progressing".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            ..Default::default()
        },
        &now_s,
    );
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas,
        updated_replicas: updated,
        ready_replicas: ready,
        available_replicas: available,
        unavailable_replicas: (want - available).max(0),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::fixtures::*;

    fn reason(s: &DeploymentStatus, t: &str) -> String {
        keel_proto::api::meta::condition(&s.conditions, t)
            .unwrap()
            .reason
            .clone()
    }

    #[test]
    fn counts_every_owned_replicaset_and_says_how_far_the_rollout_is() {
        let d = rolling(deployment(3, "v2"), 1, 1);
        let old = rs("old", 1, 1);
        let new = new_rs(&d, 2, 2);
        let mut pods = pods_of(&old, 1, true);
        pods.extend(pods_of(&new, 2, false));
        let s = status(&view(&d, &[&old, &new], &pods), 0);
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas
            ),
            (3, 2, 1, 1)
        );
        assert_eq!(s.unavailable_replicas, 2);
        assert_eq!(s.observed_generation, d.metadata.generation);
        assert_eq!(reason(&s, "Available"), "MinimumReplicasUnavailable");
        assert_eq!(reason(&s, "Progressing"), "ReplicaSetUpdated");

        let new = new_rs(&d, 2, 3);
        let pods = pods_of(&new, 3, true);
        let s = status(&view(&d, &[&old, &new], &pods), 0);
        assert_eq!(reason(&s, "Available"), "MinimumReplicasAvailable");
        assert_eq!(reason(&s, "Progressing"), "NewReplicaSetAvailable");
    }
}
