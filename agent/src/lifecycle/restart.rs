//! What happens when a container ends: its exit reason (OOMKilled, a failed
//! liveness probe, Completed, Error), then `restartPolicy` with kubelet's
//! back-off (CrashLoopBackOff) or done; a failed liveness probe stops it.

use keel_proto::api::core::StateDetail;
use tokio::time::Instant;

use super::Worker;
use super::container::{backoff, reset_after, terminated, waiting};
use crate::probe::{Kind, Outcome};
use crate::runtime::Exit;

impl Worker {
    pub(super) fn on_exit(&mut self, i: usize, g: u64, exit: Exit) {
        let Some(c) = self.ctrs.get_mut(i) else {
            return;
        };
        if c.generation != g || c.handle.is_none() {
            return;
        }
        c.handle = None;
        c.stop_probes();
        let started_at = c.state.running.as_ref().and_then(|r| r.started_at.clone());
        let (reason, message) = match exit.code {
            _ if exit.reason.is_some() => {
                (exit.reason.as_deref().unwrap_or_default(), String::new())
            }
            _ if c.killed_by_liveness => (
                "Error",
                format!(
                    "container {} failed its liveness probe and was restarted",
                    c.spec.name
                ),
            ),
            Some(0) => ("Completed", String::new()),
            Some(_) => ("Error", String::new()),
            None => ("Unknown", "exit code unknown (adopted process)".into()),
        };
        tracing::info!(container = %c.spec.name, code = ?exit.code, reason, "container exited");
        self.after_end(
            i,
            StateDetail {
                reason: reason.into(),
                message,
                exit_code: exit.code,
                started_at,
                finished_at: Some(exit.finished_at),
            },
            exit.code,
        );
        self.persist();
    }

    /// A container ended (or could not start): restart it per the policy,
    /// with back-off, or mark it done.
    pub(super) fn after_end(&mut self, i: usize, term: StateDetail, code: Option<i32>) {
        let restart = match self.policy() {
            "Never" => false,
            "OnFailure" => code != Some(0),
            _ => true,
        };
        let (initial, max) = (self.ctx.cfg.backoff_initial, self.ctx.cfg.backoff_max);
        let pod_name = self.pod.metadata.name.clone();
        let c = &mut self.ctrs[i];
        if c.started.is_some_and(|s| s.elapsed() >= reset_after(max)) {
            c.streak = 0;
        }
        c.started = None;
        if !restart {
            c.done = Some(code.unwrap_or(-1));
            c.state = terminated(term);
            return;
        }
        let delay = backoff(c.streak, initial, max);
        c.streak = c.streak.saturating_add(1);
        c.last_state = Some(terminated(term));
        c.next_start = Some(Instant::now() + delay);
        c.state = if delay.is_zero() {
            waiting("ContainerCreating", "")
        } else {
            waiting(
                "CrashLoopBackOff",
                &format!(
                    "back-off {}s restarting failed container={} pod={pod_name}",
                    delay.as_secs_f64(),
                    c.spec.name
                ),
            )
        };
    }

    pub(super) fn on_probe(&mut self, o: Outcome) {
        let grace = self.grace();
        let Some(c) = self.ctrs.get_mut(o.container) else {
            return;
        };
        if c.generation != o.generation || c.handle.is_none() {
            return;
        }
        match o.kind {
            Kind::Readiness => {
                if let Some(flip) = c.readiness.as_mut().and_then(|t| t.record(o.ok)) {
                    tracing::info!(container = %c.spec.name, ready = flip, message = %o.message, "readiness changed");
                }
            }
            Kind::Liveness => {
                if c.liveness.as_mut().and_then(|t| t.record(o.ok)) == Some(false) {
                    tracing::warn!(container = %c.spec.name, message = %o.message, "liveness probe failed; restarting the container");
                    c.killed_by_liveness = true;
                    c.stop_probes();
                    if let Some(h) = &c.handle {
                        let stop = self.ctx.runtime.stop(h, grace);
                        tokio::spawn(async move {
                            stop.await;
                        });
                    }
                }
            }
        }
    }
}
