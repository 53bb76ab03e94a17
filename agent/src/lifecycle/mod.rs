//! One pod's life on this node: a worker task that creates the sandbox,
//! starts the containers, restarts them per `restartPolicy`
//! (Always/OnFailure/Never) with kubelet's exponential back-off
//! (CrashLoopBackOff), runs their probes (readiness drives Ready, a failed
//! liveness probe restarts the container), reports the pod's status through
//! `/status`, and stops everything gracefully (SIGTERM, SIGKILL after
//! terminationGracePeriodSeconds) when the pod goes away.

mod config;
mod container;
mod report;
mod restart;
mod start;

use std::sync::Arc;
use std::time::Duration;

use keel_proto::api::Pod;
use keel_proto::api::core::{ContainerState, PodStatus, StateDetail};
use keel_proto::api::meta::now_rfc3339;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::Ctx;
use crate::probe::Outcome;
use crate::runtime::{Exit, Sandbox, SandboxConfig};
use crate::state::PodRecord;
pub use container::backoff;
use container::{Ctr, terminated};

/// The worker of one pod.
pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    sandbox: Sandbox,
    ctrs: Vec<Ctr>,
    exit_tx: mpsc::UnboundedSender<(usize, u64, Exit)>,
    probe_tx: mpsc::Sender<Outcome>,
    reported: Option<PodStatus>,
    start_time: String,
    retry_report: Option<Instant>,
}

/// Runs `pod` until it is deleted (`None` on `spec`) or the agent stops
/// (`spec`'s sender dropped: the processes keep running for the next agent
/// to adopt). `adopted` is what a previous agent left running.
pub async fn run(
    ctx: Arc<Ctx>,
    pod: Pod,
    adopted: Option<PodRecord>,
    spec: watch::Receiver<Option<Pod>>,
) {
    let span = tracing::info_span!(
        "pod",
        pod = %format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
        uid = %pod.metadata.uid
    );
    run_inner(ctx, pod, adopted, spec).instrument(span).await
}

async fn run_inner(
    ctx: Arc<Ctx>,
    pod: Pod,
    adopted: Option<PodRecord>,
    mut spec: watch::Receiver<Option<Pod>>,
) {
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let (probe_tx, mut probe_rx) = mpsc::channel(64);
    let Some(mut w) = Worker::new(ctx, pod, adopted, exit_tx, probe_tx).await else {
        return;
    };
    loop {
        w.start_due().await;
        w.report().await;
        let wake = w.next_wake();
        tokio::select! {
            r = spec.changed() => {
                if r.is_err() {
                    if w.ctx.cfg.stop_pods_on_exit {
                        break;
                    }
                    tracing::debug!("agent stopping; the pod's processes keep running");
                    return;
                }
                let next = spec.borrow_and_update().clone();
                match next {
                    None => break,
                    Some(p) if p.metadata.deletion_timestamp.is_some() => break,
                    Some(p) => {
                        if p.metadata.revision() >= w.pod.metadata.revision() {
                            w.pod = p;
                        }
                    }
                }
            }
            Some((i, g, exit)) = exit_rx.recv() => w.on_exit(i, g, exit),
            Some(o) = probe_rx.recv() => w.on_probe(o),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    w.stop_all().await;
}

impl Worker {
    async fn new(
        ctx: Arc<Ctx>,
        pod: Pod,
        adopted: Option<PodRecord>,
        exit_tx: mpsc::UnboundedSender<(usize, u64, Exit)>,
        probe_tx: mpsc::Sender<Outcome>,
    ) -> Option<Worker> {
        let m = &pod.metadata;
        let sandbox = match &adopted {
            Some(rec) => rec.sandbox.clone(),
            None => {
                let ip = if ctx.runtime.assigns_ips() {
                    None
                } else {
                    let Some(ip) = ctx.ipam.lock().expect("ipam lock").allocate() else {
                        tracing::error!("the node's pod range is exhausted");
                        return None;
                    };
                    Some(ip)
                };
                let hostname = match pod.spec.hostname.as_str() {
                    "" => m.name.clone(),
                    h => h.to_string(),
                };
                match ctx
                    .runtime
                    .create_sandbox(&SandboxConfig {
                        uid: m.uid.clone(),
                        namespace: m.namespace.clone(),
                        name: m.name.clone(),
                        ip,
                        hostname,
                    })
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create the pod sandbox");
                        if let Some(ip) = ip {
                            ctx.ipam.lock().expect("ipam lock").release(ip);
                        }
                        return None;
                    }
                }
            }
        };
        let start_time = pod
            .status
            .start_time
            .clone()
            .filter(|_| adopted.is_some())
            .unwrap_or_else(now_rfc3339);
        let mut w = Worker {
            ctrs: pod
                .spec
                .containers
                .iter()
                .map(|c| {
                    let base = adopted
                        .as_ref()
                        .and_then(|r| r.restarts.get(&c.name).copied())
                        .unwrap_or(0);
                    Ctr::new(c.clone(), base)
                })
                .collect(),
            ctx,
            pod,
            sandbox,
            exit_tx,
            probe_tx,
            reported: None,
            start_time,
            retry_report: None,
        };
        w.ctx.pods.lock().expect("pods lock").insert(
            format!("{}/{}", w.pod.metadata.namespace, w.pod.metadata.name),
            w.sandbox.clone(),
        );
        if let Some(rec) = adopted {
            w.adopt(&rec).await;
        }
        w.persist();
        Some(w)
    }

    /// Takes over the containers a previous agent left.
    async fn adopt(&mut self, rec: &PodRecord) {
        for i in 0..self.ctrs.len() {
            let name = self.ctrs[i].spec.name.clone();
            if let Some(code) = rec.finished.get(&name) {
                let c = &mut self.ctrs[i];
                c.attempts = 1;
                c.next_start = None;
                c.done = Some(*code);
                c.state = terminated(StateDetail {
                    reason: if *code == 0 { "Completed" } else { "Error" }.into(),
                    exit_code: Some(*code),
                    ..Default::default()
                });
                continue;
            }
            let Some(h) = rec.containers.get(&name) else {
                continue;
            };
            if self.ctx.runtime.adopt(&self.sandbox, h).await {
                tracing::info!(container = %name, pid = h.pid, "adopted running container");
                let config = self.config_for(i);
                let c = &mut self.ctrs[i];
                c.attempts = 1;
                c.next_start = None;
                c.started = Some(Instant::now());
                c.state = ContainerState {
                    running: Some(StateDetail {
                        started_at: Some(h.started_at.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                self.running(i, h.clone(), config);
            } else {
                tracing::info!(container = %name, pid = h.pid, "container exited while the agent was down");
                self.ctrs[i].attempts = 1;
                self.ctrs[i].next_start = None;
                self.after_end(
                    i,
                    StateDetail {
                        reason: "Unknown".into(),
                        message: "the container exited while the agent was down".into(),
                        started_at: Some(h.started_at.clone()),
                        finished_at: Some(now_rfc3339()),
                        ..Default::default()
                    },
                    None,
                );
            }
        }
    }

    fn policy(&self) -> &str {
        match self.pod.spec.restart_policy.as_str() {
            "" => "Always",
            p => p,
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.ctrs
            .iter()
            .filter(|c| c.handle.is_none() && c.done.is_none())
            .filter_map(|c| c.next_start)
            .chain(self.retry_report)
            .min()
            .unwrap_or(far)
    }

    /// Stops every container (SIGTERM, SIGKILL after the grace period) and
    /// removes the sandbox.
    async fn stop_all(mut self) {
        let grace = self.grace();
        tracing::info!(?grace, "stopping pod");
        let mut stops = Vec::new();
        for c in &mut self.ctrs {
            c.stop_probes();
            if let Some(h) = c.handle.take() {
                stops.push(self.ctx.runtime.stop(&h, grace));
            }
        }
        futures::future::join_all(stops).await;
        let key = format!("{}/{}", self.pod.metadata.namespace, self.pod.metadata.name);
        teardown(&self.ctx, &self.sandbox, &self.pod.metadata.uid, &key).await;
        tracing::info!("pod stopped");
    }
}

/// Removes a stopped pod's sandbox and every trace of it in the agent.
pub async fn teardown(ctx: &Ctx, sandbox: &Sandbox, uid: &str, key: &str) {
    ctx.runtime.remove_sandbox(sandbox).await;
    ctx.ipam.lock().expect("ipam lock").release(sandbox.ip);
    ctx.state.remove(uid);
    let mut pods = ctx.pods.lock().expect("pods lock");
    if pods.get(key).is_some_and(|s| s.id == sandbox.id) {
        pods.remove(key);
        let prefix = format!("{key}/");
        ctx.running
            .lock()
            .expect("running lock")
            .retain(|k, _| !k.starts_with(&prefix));
    }
}

/// Stops a pod a previous agent ran that no longer exists (deleted while
/// the agent was down).
pub async fn stop_orphan(ctx: Arc<Ctx>, rec: PodRecord) {
    let key = format!("{}/{}", rec.namespace, rec.name);
    let grace = Duration::from_secs(rec.grace_seconds.max(0) as u64);
    tracing::info!(pod = %key, "stopping a pod deleted while the agent was down");
    let mut stops = Vec::new();
    for h in rec.containers.values() {
        if ctx.runtime.adopt(&rec.sandbox, h).await {
            stops.push(ctx.runtime.stop(h, grace));
        }
    }
    futures::future::join_all(stops).await;
    teardown(&ctx, &rec.sandbox, &rec.uid, &key).await;
}

#[cfg(test)]
mod tests;
