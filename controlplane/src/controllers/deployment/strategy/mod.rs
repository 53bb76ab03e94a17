//! The rollout strategies, each a plain function from a [`View`] to a
//! [`Plan`]: `rolling` (RollingUpdate within maxSurge/maxUnavailable and
//! pod availability), `recreate` (every old pod gone before a new one
//! starts) and `paused` (no rollout progress, but a change of replicas is
//! shared out). [`plan`] picks the one in force.

pub mod paused;
pub mod recreate;
pub mod rolling;

use keel_proto::api::Deployment;
use keel_proto::api::meta::IntOrString;

use super::plan::{Plan, View};

/// The plan of the strategy in force for `view`'s Deployment.
pub fn plan(view: &View) -> Plan {
    if view.d.spec.paused {
        paused::plan(view)
    } else if is_recreate(view.d) {
        recreate::plan(view)
    } else {
        rolling::plan(view)
    }
}

/// Whether the Deployment's strategy is Recreate (else RollingUpdate).
pub fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .strategy
        .as_ref()
        .is_some_and(|s| s.type_ == "Recreate")
}

/// maxSurge and maxUnavailable as counts (defaults 25%/25%; both zero
/// would block the rollout, so maxUnavailable becomes 1 then).
pub fn surge_and_unavailable(d: &Deployment) -> (i64, i64) {
    let replicas = d.replicas();
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let quarter = IntOrString::Str("25%".into());
    let surge = ru
        .max_surge
        .as_ref()
        .unwrap_or(&quarter)
        .scaled(replicas, true)
        .unwrap_or(1)
        .max(0);
    let unavailable = ru
        .max_unavailable
        .as_ref()
        .unwrap_or(&quarter)
        .scaled(replicas, false)
        .unwrap_or(0)
        .max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}
