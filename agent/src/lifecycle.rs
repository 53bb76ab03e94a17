//! One pod's life on this node: a worker task that creates the sandbox,
//! starts the containers, restarts them per `restartPolicy`
//! (Always/OnFailure/Never) with kubelet's exponential back-off
//! (CrashLoopBackOff), runs their probes (readiness drives Ready, a failed
//! liveness probe restarts the container), reports the pod's status through
//! `/status`, and stops everything gracefully (SIGTERM, SIGKILL after
//! terminationGracePeriodSeconds) when the pod goes away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::api::Pod;
use keel_proto::api::core::{Container, ContainerState, PodStatus, StateDetail};
use keel_proto::api::meta::now_rfc3339;
use keel_proto::api::quantity;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::Ctx;
use crate::env;
use crate::probe::{self, Kind, Outcome, Timing, Tracker};
use crate::runtime::{
    ContainerConfig, ContainerHandle, Exit, Mount, RuntimeError, Sandbox, SandboxConfig,
};
use crate::state::PodRecord;
use crate::status::{self, ContainerView};

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
fn reset_after(max: Duration) -> Duration {
    (max * 2).max(Duration::from_secs(60))
}

struct Ctr {
    spec: Container,
    config: Option<ContainerConfig>,
    handle: Option<ContainerHandle>,
    /// Bumped on every start, so stale exits and probe results are ignored.
    generation: u64,
    state: ContainerState,
    last_state: Option<ContainerState>,
    /// Start attempts in this agent's life plus restarts recorded before.
    attempts: i64,
    restart_base: i64,
    streak: u32,
    /// Image pulls failed in a row (ImagePullBackOff's own back-off).
    pull_streak: u32,
    next_start: Option<Instant>,
    done: Option<i32>,
    readiness: Option<Tracker>,
    liveness: Option<Tracker>,
    probes: Vec<tokio::task::JoinHandle<()>>,
    started: Option<Instant>,
    killed_by_liveness: bool,
}

impl Ctr {
    fn new(spec: Container, restart_base: i64) -> Ctr {
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

    fn restart_count(&self) -> i64 {
        self.restart_base + (self.attempts - 1).max(0)
    }

    fn ready(&self) -> bool {
        self.handle.is_some() && self.readiness.as_ref().is_none_or(Tracker::result)
    }

    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(StateDetail {
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn terminated(d: StateDetail) -> ContainerState {
    ContainerState {
        terminated: Some(d),
        ..Default::default()
    }
}

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

    fn config_for(&self, i: usize) -> ContainerConfig {
        let spec = &self.ctrs[i].spec;
        let services = self.ctx.services.read().expect("services lock").clone();
        let mut env = env::container_env(
            &self.pod,
            spec,
            &self.sandbox.ip.to_string(),
            &self.ctx.cfg.name,
            &self.ctx.node_ip.to_string(),
            &services,
        );
        if self.ctx.runtime.uses_images() && !spec.env.iter().any(|e| e.name == "PATH") {
            // The image's PATH, not the agent's.
            env.retain(|(k, _)| k != "PATH");
        }
        let limits = spec.resources.as_ref().map(|r| &r.limits);
        let memory_limit = limits
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity::bytes(q).ok())
            .and_then(|b| u64::try_from(b).ok());
        let nano_cpus = limits
            .and_then(|l| l.get("cpu"))
            .and_then(|q| quantity::cpu_millis(q).ok())
            .map(|m| m * 1_000_000);
        let expand = |v: &[String]| v.iter().map(|a| env::expand(a, &env)).collect();
        let mounts = spec
            .volume_mounts
            .iter()
            .filter_map(|vm| {
                let v = self.pod.spec.volumes.iter().find(|v| v.name == vm.name)?;
                v.empty_dir.as_ref()?;
                Some(Mount {
                    host_path: self.sandbox.dir.join("volumes").join(&v.name),
                    container_path: vm.mount_path.clone(),
                    read_only: vm.read_only,
                    create: true,
                })
            })
            .collect();
        ContainerConfig {
            name: spec.name.clone(),
            argv: env::argv(spec, &env),
            command: expand(&spec.command),
            args: expand(&spec.args),
            working_dir: spec.working_dir.clone(),
            memory_limit,
            nano_cpus,
            image: spec.image.clone(),
            pull_policy: env::pull_policy(spec),
            ports: spec
                .ports
                .iter()
                .filter_map(|p| Some((u16::try_from(p.container_port).ok()?, p.protocol.clone())))
                .collect(),
            mounts,
            env,
        }
    }

    /// Starts every container whose (re)start is due.
    async fn start_due(&mut self) {
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
            let bad_mounts = (!unmounted.is_empty())
                .then(|| format!("volumeMounts {unmounted:?} name no emptyDir volume of the pod"));
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
    fn running(&mut self, i: usize, h: ContainerHandle, config: ContainerConfig) {
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

    fn on_exit(&mut self, i: usize, g: u64, exit: Exit) {
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
    fn after_end(&mut self, i: usize, term: StateDetail, code: Option<i32>) {
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

    fn on_probe(&mut self, o: Outcome) {
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

    fn views(&self) -> Vec<ContainerView> {
        self.ctrs
            .iter()
            .map(|c| ContainerView {
                name: c.spec.name.clone(),
                image: c.spec.image.clone(),
                state: c.state.clone(),
                last_state: c.last_state.clone(),
                restart_count: c.restart_count(),
                ready: c.ready(),
                started_once: c.attempts > 0,
                done: c.done,
            })
            .collect()
    }

    /// Writes the pod's status if it changed since the last report.
    async fn report(&mut self) {
        if self.retry_report.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.retry_report = None;
        let st = status::pod_status(
            &self.views(),
            &self.sandbox.ip.to_string(),
            &self.ctx.node_ip.to_string(),
            &self.start_time,
            &self.pod.status,
            &now_rfc3339(),
        );
        if self.reported.as_ref() == Some(&st) {
            return;
        }
        let mut p = self.pod.clone();
        p.status = st.clone();
        let c = &self.ctx.client;
        match c.update_status(&p).await {
            Ok(updated) => {
                tracing::debug!(phase = %st.phase, "status reported");
                self.pod = updated;
                self.reported = Some(st);
            }
            Err(e) if e.code() == 409 => {
                let m = &self.pod.metadata;
                match c.get::<Pod>(&m.namespace, &m.name).await {
                    Ok(cur) if cur.metadata.uid == m.uid => {
                        self.pod.metadata.resource_version = cur.metadata.resource_version;
                        self.retry_report = Some(Instant::now());
                    }
                    _ => self.retry_report = Some(Instant::now() + Duration::from_secs(1)),
                }
            }
            Err(e) => {
                if e.code() != 404 {
                    tracing::warn!(error = %e, "cannot report the pod's status; retrying");
                }
                self.retry_report = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    fn persist(&self) {
        let m = &self.pod.metadata;
        let mut containers = BTreeMap::new();
        let mut restarts = BTreeMap::new();
        let mut finished = BTreeMap::new();
        for c in &self.ctrs {
            if let Some(h) = &c.handle {
                containers.insert(c.spec.name.clone(), h.clone());
            }
            if let Some(code) = c.done {
                finished.insert(c.spec.name.clone(), code);
            }
            restarts.insert(c.spec.name.clone(), c.restart_count());
        }
        self.ctx.state.put(PodRecord {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            sandbox: self.sandbox.clone(),
            grace_seconds: self.grace().as_secs() as i64,
            containers,
            restarts,
            finished,
        });
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
mod tests {
    use super::*;

    #[test]
    fn backoff_is_kubelets_schedule() {
        let s = Duration::from_secs;
        let b = |n| backoff(n, s(10), s(300));
        assert_eq!(
            (0..8).map(b).collect::<Vec<_>>(),
            vec![s(0), s(10), s(20), s(40), s(80), s(160), s(300), s(300)]
        );
        assert_eq!(backoff(1000, s(10), s(300)), s(300));
        let ms = Duration::from_millis;
        assert_eq!(backoff(3, ms(500), s(2)), s(2));
        assert_eq!(backoff(2, ms(500), s(2)), s(1));
    }
}
