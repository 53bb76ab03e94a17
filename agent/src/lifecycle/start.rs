//! Starting the containers that are due: a start, an image that is not
//! there (ErrImagePull, ImagePullBackOff) or a command that cannot run
//! (ContainerCannotRun); a running container gets its exit waiter and probes.

use keel_proto::api::core::{ContainerState, StateDetail};
use keel_proto::api::meta::now_rfc3339;
use tokio::time::Instant;

use super::Worker;
use super::container::{backoff, waiting};
use crate::probe::{self, Kind, Timing, Tracker};
use crate::runtime::{ContainerConfig, ContainerHandle, RuntimeError};

impl Worker {
    /// Checks (and makes, for the `*OrCreate` types) the hostPath volumes
    /// container `i` mounts.
    fn prepare_host_paths(&self, i: usize) -> Result<(), String> {
        for vm in &self.ctrs[i].spec.volume_mounts {
            let v = self.pod.spec.volumes.iter().find(|v| v.name == vm.name);
            if let Some(h) = v.and_then(|v| v.host_path.as_ref()) {
                crate::host_path::prepare(&vm.name, h)?;
            }
        }
        Ok(())
    }

    /// Starts every container whose (re)start is due.
    pub(super) async fn start_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if c.handle.is_some() || c.done.is_some() || c.next_start.is_none_or(|t| t > now) {
                continue;
            }
            let config = self.config_for(i);
            let unmounted: Vec<&str> = self.ctrs[i]
                .spec
                .volume_mounts
                .iter()
                .filter(|m| {
                    !config
                        .mounts
                        .iter()
                        .any(|x| x.container_path == m.mount_path)
                })
                .map(|m| m.name.as_str())
                .collect();
            let bad_mounts = if unmounted.is_empty() {
                self.prepare_host_paths(i).err()
            } else {
                Some(format!(
                    "volumeMounts {unmounted:?} name no volume of the pod"
                ))
            };
            let c = &mut self.ctrs[i];
            c.next_start = None;
            c.attempts += 1;
            let started = match bad_mounts {
                Some(m) => Err(RuntimeError::Setup(m)),
                None => {
                    self.ctx
                        .runtime
                        .start_container(&self.sandbox, &config)
                        .await
                }
            };
            let c = &mut self.ctrs[i];
            match started {
                Ok(h) => {
                    c.pull_streak = 0;
                    tracing::info!(container = %config.name, pid = h.pid, restarts = c.restart_count(), "started container");
                    c.started = Some(Instant::now());
                    c.killed_by_liveness = false;
                    c.state = ContainerState {
                        running: Some(StateDetail {
                            started_at: Some(h.started_at.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    self.running(i, h, config);
                }
                Err(e @ (RuntimeError::ImagePull(_) | RuntimeError::ImageNeverPull(_))) => {
                    // Not a start: the image is not there. Wait, retry
                    // with back-off, restart count untouched (kubelet).
                    c.attempts -= 1;
                    let (initial, max) = (self.ctx.cfg.backoff_initial, self.ctx.cfg.backoff_max);
                    c.pull_streak = c.pull_streak.saturating_add(1);
                    c.next_start = Some(Instant::now() + backoff(c.pull_streak, initial, max));
                    let reason = match (&e, c.pull_streak) {
                        (RuntimeError::ImageNeverPull(_), _) => "ErrImageNeverPull",
                        // The first failures show as ErrImagePull (long
                        // enough to be seen), then ImagePullBackOff.
                        (_, 1 | 2) => "ErrImagePull",
                        _ => "ImagePullBackOff",
                    };
                    let message = if reason == "ImagePullBackOff" {
                        format!("Back-off pulling image {:?}: {e}", config.image)
                    } else {
                        e.to_string()
                    };
                    tracing::warn!(container = %config.name, image = %config.image, reason, error = %e, "image not available");
                    c.state = waiting(reason, &message);
                }
                Err(e) => {
                    let reason = match e {
                        RuntimeError::CannotRun(_) => "ContainerCannotRun",
                        _ => "CreateContainerError",
                    };
                    tracing::warn!(container = %config.name, reason, error = %e, "container cannot start");
                    let now = now_rfc3339();
                    self.after_end(
                        i,
                        StateDetail {
                            reason: reason.into(),
                            message: e.to_string(),
                            exit_code: Some(128),
                            started_at: Some(now.clone()),
                            finished_at: Some(now),
                        },
                        Some(128),
                    );
                }
            }
            self.persist();
        }
    }

    /// Records a running container and starts its exit waiter and probes.
    pub(super) fn running(&mut self, i: usize, h: ContainerHandle, config: ContainerConfig) {
        self.ctx.running.lock().expect("running lock").insert(
            format!(
                "{}/{}/{}",
                self.pod.metadata.namespace, self.pod.metadata.name, config.name
            ),
            (h.clone(), config.clone()),
        );
        let c = &mut self.ctrs[i];
        c.generation += 1;
        let g = c.generation;
        let wait = self.ctx.runtime.wait(&h);
        let tx = self.exit_tx.clone();
        tokio::spawn(async move {
            let e = wait.await;
            let _ = tx.send((i, g, e));
        });
        c.readiness = c
            .spec
            .readiness_probe
            .as_ref()
            .map(|p| Tracker::new(&Timing::of(p), false));
        c.liveness = c
            .spec
            .liveness_probe
            .as_ref()
            .map(|p| Tracker::new(&Timing::of(p), true));
        c.stop_probes();
        for (kind, p) in [
            (Kind::Readiness, c.spec.readiness_probe.clone()),
            (Kind::Liveness, c.spec.liveness_probe.clone()),
        ] {
            let Some(p) = p else { continue };
            c.probes.push(probe::spawn(
                kind,
                p,
                probe::Target {
                    runtime: self.ctx.runtime.clone(),
                    sandbox: self.sandbox.clone(),
                    spec: c.spec.clone(),
                    config: config.clone(),
                    container: i,
                    generation: g,
                },
                self.probe_tx.clone(),
            ));
        }
        c.config = Some(config);
        c.handle = Some(h);
    }
}
