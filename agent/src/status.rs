//! A pod's status as the agent reports it, computed from its containers as a
//! pure function: phase (Pending until every container was started once;
//! Succeeded/Failed when all ended for good; Running otherwise), the
//! Initialized/Ready/ContainersReady/PodScheduled conditions, podIP, hostIP
//! and the containerStatuses.

use keel_proto::api::core::{ContainerState, ContainerStatus, PodStatus};
use keel_proto::api::meta::{Condition, set_condition};

/// One container as the status needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub restart_count: i64,
    pub ready: bool,
    /// Whether a start was attempted at least once.
    pub started_once: bool,
    /// Ended and will not be restarted; with its exit code.
    pub done: Option<i32>,
}

/// The status of a pod whose containers are `cs`.
pub fn pod_status(
    cs: &[ContainerView],
    pod_ip: &str,
    host_ip: &str,
    start_time: &str,
    prev: &PodStatus,
    now: &str,
) -> PodStatus {
    let phase = if cs.iter().any(|c| !c.started_once) {
        "Pending"
    } else if !cs.is_empty() && cs.iter().all(|c| c.done.is_some()) {
        if cs.iter().all(|c| c.done == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let unready: Vec<&str> = cs
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let ready = phase == "Running" && unready.is_empty();
    let (reason, message) = match (ready, phase) {
        (true, _) => (String::new(), String::new()),
        (false, "Succeeded" | "Failed") => ("PodCompleted".to_string(), String::new()),
        (false, _) => (
            "ContainersNotReady".to_string(),
            format!("containers with unready status: [{}]", unready.join(" ")),
        ),
    };
    let mut conds: Vec<Condition> = prev.conditions.clone();
    let cond = |t: &str, ok: bool, reason: &str, message: &str| Condition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        ..Default::default()
    };
    set_condition(&mut conds, cond("Initialized", true, "", ""), now);
    set_condition(&mut conds, cond("Ready", ready, &reason, &message), now);
    set_condition(
        &mut conds,
        cond("ContainersReady", ready, &reason, &message),
        now,
    );
    set_condition(&mut conds, cond("PodScheduled", true, "", ""), now);
    PodStatus {
        phase: phase.into(),
        conditions: conds,
        pod_ip: pod_ip.into(),
        host_ip: host_ip.into(),
        start_time: Some(start_time.to_string()),
        container_statuses: cs
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                ready: c.ready,
                restart_count: c.restart_count,
                state: Some(c.state.clone()),
                last_state: c.last_state.clone(),
                image: c.image.clone(),
                started: Some(c.state.running.is_some()),
            })
            .collect(),
        reason: String::new(),
        message: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::core::StateDetail;

    fn view(name: &str, running: bool, ready: bool, done: Option<i32>) -> ContainerView {
        let detail = StateDetail::default();
        ContainerView {
            name: name.into(),
            image: String::new(),
            state: ContainerState {
                running: running.then(|| detail.clone()),
                terminated: done.map(|c| StateDetail {
                    exit_code: Some(c),
                    ..Default::default()
                }),
                waiting: None,
            },
            last_state: None,
            restart_count: 0,
            ready,
            started_once: running || done.is_some(),
            done,
        }
    }

    fn phase(cs: &[ContainerView]) -> (String, bool) {
        let s = pod_status(
            cs,
            "127.9.0.2",
            "127.9.0.1",
            "t",
            &PodStatus::default(),
            "t",
        );
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (s.phase, ready)
    }

    #[test]
    fn phases_and_readiness() {
        let mut pending = view("a", false, false, None);
        pending.started_once = false;
        assert_eq!(phase(&[pending]), ("Pending".into(), false));
        assert_eq!(
            phase(&[view("a", true, true, None), view("b", true, true, None)]),
            ("Running".into(), true)
        );
        assert_eq!(
            phase(&[view("a", true, true, None), view("b", true, false, None)]),
            ("Running".into(), false)
        );
        assert_eq!(
            phase(&[view("a", false, false, Some(0))]),
            ("Succeeded".into(), false)
        );
        assert_eq!(
            phase(&[
                view("a", false, false, Some(0)),
                view("b", false, false, Some(2))
            ]),
            ("Failed".into(), false)
        );
        assert_eq!(
            phase(&[
                view("a", false, false, Some(1)),
                view("b", true, true, None)
            ]),
            ("Running".into(), false)
        );
    }
}
