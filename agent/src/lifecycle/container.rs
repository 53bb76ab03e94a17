//! One container's state in its pod's worker (`Ctr`): its spec, handle,
//! Kubernetes state and last state, restart counts and back-off streaks,
//! probe trackers; and kubelet's back-off schedule.

use std::time::Duration;

use keel_proto::api::core::{Container, ContainerState, StateDetail};
use tokio::time::Instant;

use crate::probe::Tracker;
use crate::runtime::{ContainerConfig, ContainerHandle};

/// The delay before restart number `streak + 1` of a crashing container:
/// the first restart is immediate, then `initial` doubling up to `max`
/// (kubelet: 10 s doubling to 5 min).
pub fn backoff(streak: u32, initial: Duration, max: Duration) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (streak - 1).min(24);
    initial.saturating_mul(factor).min(max)
}

/// A container that ran this long without crashing starts its back-off over.
pub(super) fn reset_after(max: Duration) -> Duration {
    (max * 2).max(Duration::from_secs(60))
}

pub(super) struct Ctr {
    pub(super) spec: Container,
    pub(super) config: Option<ContainerConfig>,
    pub(super) handle: Option<ContainerHandle>,
    /// Bumped on every start, so stale exits and probe results are ignored.
    pub(super) generation: u64,
    pub(super) state: ContainerState,
    pub(super) last_state: Option<ContainerState>,
    /// Start attempts in this agent's life plus restarts recorded before.
    pub(super) attempts: i64,
    pub(super) restart_base: i64,
    pub(super) streak: u32,
    /// Image pulls failed in a row (ImagePullBackOff's own back-off).
    pub(super) pull_streak: u32,
    pub(super) next_start: Option<Instant>,
    pub(super) done: Option<i32>,
    pub(super) readiness: Option<Tracker>,
    pub(super) liveness: Option<Tracker>,
    pub(super) probes: Vec<tokio::task::JoinHandle<()>>,
    pub(super) started: Option<Instant>,
    pub(super) killed_by_liveness: bool,
}

impl Ctr {
    pub(super) fn new(spec: Container, restart_base: i64) -> Ctr {
        Ctr {
            spec,
            config: None,
            handle: None,
            generation: 0,
            state: waiting("ContainerCreating", ""),
            last_state: None,
            attempts: 0,
            restart_base,
            streak: 0,
            pull_streak: 0,
            next_start: Some(Instant::now()),
            done: None,
            readiness: None,
            liveness: None,
            probes: Vec::new(),
            started: None,
            killed_by_liveness: false,
        }
    }

    pub(super) fn restart_count(&self) -> i64 {
        self.restart_base + (self.attempts - 1).max(0)
    }

    pub(super) fn ready(&self) -> bool {
        self.handle.is_some() && self.readiness.as_ref().is_none_or(Tracker::result)
    }

    pub(super) fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

pub(super) fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(StateDetail {
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn terminated(d: StateDetail) -> ContainerState {
    ContainerState {
        terminated: Some(d),
        ..Default::default()
    }
}
