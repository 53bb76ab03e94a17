//! The worker's state machine on an in-memory runtime (`runtime::fake`):
//! restart policies, kubelet's back-off, restarts after a failed liveness
//! probe, OOM kills and start failures, observed as the container views the
//! status is made of. Time is paused: back-off passes by `advance`, never
//! by waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::{MasterClient, SharedCredentials};
use keel_proto::api::Pod;
use keel_proto::pki::Credentials;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::{Worker, backoff};
use crate::ipam::Ipam;
use crate::probe::{Kind, Outcome};
use crate::runtime::fake::{FakeRuntime, SIGTERM_EXIT, exit_code};
use crate::runtime::{Exit, RuntimeError};
use crate::state::StateStore;
use crate::status::ContainerView;
use crate::{Config, Ctx};

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

/// A pod with one container `c`; `spec` is merged into the pod spec.
fn pod(spec: serde_json::Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-p", "resourceVersion": "5"},
        "spec": {"containers": [{"name": "c", "command": ["run"]}]},
    });
    for (k, v) in spec.as_object().expect("an object") {
        p["spec"][k] = v.clone();
    }
    serde_json::from_value(p).expect("a pod")
}

/// One pod's worker on a fake runtime, with kubelet's back-off (10 s to 5 min).
struct Harness {
    w: Worker,
    rt: Arc<FakeRuntime>,
    exits: mpsc::UnboundedReceiver<(usize, u64, Exit)>,
    _probes: mpsc::Receiver<Outcome>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(pod: Pod) -> Harness {
        Self::with_runtime(pod, FakeRuntime::new()).await
    }

    async fn with_runtime(pod: Pod, rt: Arc<FakeRuntime>) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        // Nothing listens there: these tests never report status.
        let cfg = Config::new("n1", dir.path().to_path_buf(), vec!["127.0.0.1:9".into()]);
        let ctx = Arc::new(Ctx {
            node_ip: cfg.pod_range.node_ip(),
            client: MasterClient::new(
                &cfg.masters,
                SharedCredentials::new(Credentials::plaintext()),
            ),
            runtime: rt.clone(),
            state: StateStore::open(dir.path()).expect("state"),
            ipam: Mutex::new(Ipam::new(cfg.pod_range)),
            services: RwLock::new(Vec::new()),
            services_synced: watch::channel(false).0,
            pods: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            cfg,
        });
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let (probe_tx, probes) = mpsc::channel(64);
        let w = Worker::new(ctx, pod, None, exit_tx, probe_tx)
            .await
            .expect("a worker");
        Harness {
            w,
            rt,
            exits,
            _probes: probes,
            _dir: dir,
        }
    }

    /// Starts what is due, as the worker loop does on every turn.
    async fn tick(&mut self) {
        self.w.start_due().await;
    }

    /// Lets `d` pass, then starts what is due.
    async fn after(&mut self, d: Duration) {
        tokio::time::advance(d).await;
        self.tick().await;
    }

    /// Ends the running container `c` with `exit` and hands the exit to the
    /// worker, as its waiter does.
    async fn end(&mut self, exit: Exit) {
        let pid = self.rt.running_pid("c").expect("c is running");
        self.rt.exit(pid, exit);
        self.deliver_exit().await;
    }

    async fn deliver_exit(&mut self) {
        let (i, g, e) = self.exits.recv().await.expect("an exit");
        self.w.on_exit(i, g, e);
    }

    fn view(&self) -> ContainerView {
        self.w.views().remove(0)
    }

    fn waiting(&self) -> (String, String) {
        let w = self.view().state.waiting.expect("waiting");
        (w.reason, w.message)
    }

    fn last_terminated(&self) -> (String, Option<i32>, String) {
        let t = self
            .view()
            .last_state
            .and_then(|s| s.terminated)
            .expect("a terminated last state");
        (t.reason, t.exit_code, t.message)
    }
}

#[tokio::test(start_paused = true)]
async fn always_restarts_at_once_then_backs_off_doubling() {
    let mut h = Harness::new(pod(json!({}))).await;
    h.tick().await;
    assert_eq!(h.rt.starts_of("c"), 1);
    assert!(h.view().state.running.is_some());
    assert_eq!(h.view().restart_count, 0);

    // The first crash restarts at once.
    h.end(exit_code(1)).await;
    assert_eq!(h.waiting().0, "ContainerCreating");
    assert_eq!(h.last_terminated().0, "Error");
    assert_eq!(h.last_terminated().1, Some(1));
    h.tick().await;
    assert_eq!(h.rt.starts_of("c"), 2);
    assert_eq!(h.view().restart_count, 1);

    // Then 10 s, 20 s, 40 s: CrashLoopBackOff in between.
    for delay in [10, 20, 40] {
        h.end(exit_code(2)).await;
        let (reason, message) = h.waiting();
        assert_eq!(reason, "CrashLoopBackOff");
        assert!(
            message.starts_with(&format!("back-off {delay}s ")),
            "{message}"
        );
        let starts = h.rt.starts_of("c");
        h.after(Duration::from_secs(delay - 1)).await;
        assert_eq!(h.rt.starts_of("c"), starts, "restarted before {delay}s");
        h.after(Duration::from_secs(1)).await;
        assert_eq!(
            h.rt.starts_of("c"),
            starts + 1,
            "not restarted after {delay}s"
        );
    }
    assert_eq!(h.view().restart_count, 4);
    assert_eq!(h.last_terminated().1, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_container_that_ran_long_enough_starts_its_back_off_over() {
    let mut h = Harness::new(pod(json!({}))).await;
    h.tick().await;
    h.end(exit_code(1)).await;
    h.tick().await;
    h.end(exit_code(1)).await;
    assert_eq!(h.waiting().0, "CrashLoopBackOff");
    h.after(Duration::from_secs(10)).await;
    // Ten minutes of running (twice the 5 min cap) reset the streak.
    tokio::time::advance(Duration::from_secs(600)).await;
    h.end(exit_code(1)).await;
    assert_eq!(h.waiting().0, "ContainerCreating");
}

#[tokio::test(start_paused = true)]
async fn on_failure_restarts_failures_only() {
    let mut h = Harness::new(pod(json!({"restartPolicy": "OnFailure"}))).await;
    h.tick().await;
    h.end(exit_code(3)).await;
    h.tick().await;
    assert_eq!(h.rt.starts_of("c"), 2);
    h.end(exit_code(0)).await;
    let v = h.view();
    let t = v.state.terminated.expect("terminated");
    assert_eq!((t.reason.as_str(), t.exit_code), ("Completed", Some(0)));
    assert_eq!(v.done, Some(0));
    h.after(Duration::from_secs(3600)).await;
    assert_eq!(h.rt.starts_of("c"), 2);
}

#[tokio::test(start_paused = true)]
async fn never_leaves_a_failed_container_terminated() {
    let mut h = Harness::new(pod(json!({"restartPolicy": "Never"}))).await;
    h.tick().await;
    h.end(exit_code(1)).await;
    let v = h.view();
    let t = v.state.terminated.expect("terminated");
    assert_eq!((t.reason.as_str(), t.exit_code), ("Error", Some(1)));
    assert_eq!(v.done, Some(1));
    assert!(v.last_state.is_none());
    h.after(Duration::from_secs(3600)).await;
    assert_eq!(h.rt.starts_of("c"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_liveness_probe_stops_and_restarts_the_container() {
    let p = pod(json!({"containers": [{
        "name": "c",
        "command": ["run"],
        "livenessProbe": {"exec": {"command": ["check"]}, "failureThreshold": 2},
    }]}));
    let mut h = Harness::new(p).await;
    h.tick().await;
    let pid = h.rt.running_pid("c").expect("running");
    let generation = h.w.ctrs[0].generation;
    let failed = |generation| Outcome {
        container: 0,
        generation,
        kind: Kind::Liveness,
        ok: false,
        message: "exit code 1".into(),
    };
    h.w.on_probe(failed(generation));
    assert!(
        h.rt.stops().is_empty(),
        "stopped below the failure threshold"
    );
    // A result of an earlier run of the container counts for nothing.
    h.w.on_probe(failed(generation - 1));
    assert!(h.rt.stops().is_empty());
    h.w.on_probe(failed(generation));
    assert_eq!(h.rt.stops(), vec![pid]);
    h.deliver_exit().await;
    let (reason, code, message) = h.last_terminated();
    assert_eq!((reason.as_str(), code), ("Error", Some(SIGTERM_EXIT)));
    assert!(message.contains("liveness probe"), "{message}");
    h.tick().await;
    assert_eq!(h.rt.starts_of("c"), 2);
    assert_eq!(h.view().restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_the_last_state() {
    let mut h = Harness::new(pod(json!({}))).await;
    h.tick().await;
    let oom = || Exit {
        code: Some(137),
        signal: Some(9),
        finished_at: "2026-01-01T00:00:00Z".into(),
        reason: Some("OOMKilled".into()),
    };
    h.end(oom()).await;
    assert_eq!(h.last_terminated().0, "OOMKilled");
    assert_eq!(h.last_terminated().1, Some(137));
    h.tick().await;
    h.end(oom()).await;
    assert_eq!(h.waiting().0, "CrashLoopBackOff");
    assert_eq!(h.last_terminated().0, "OOMKilled");
}

#[tokio::test(start_paused = true)]
async fn a_command_that_cannot_run_is_a_crash() {
    let rt = FakeRuntime::new();
    rt.fail_next_start("c", RuntimeError::CannotRun("no such file".into()));
    rt.fail_next_start("c", RuntimeError::CannotRun("no such file".into()));
    let mut h = Harness::with_runtime(pod(json!({})), rt).await;
    h.tick().await;
    assert_eq!(h.rt.starts_of("c"), 0);
    let (reason, code, message) = h.last_terminated();
    assert_eq!((reason.as_str(), code), ("ContainerCannotRun", Some(128)));
    assert_eq!(message, "no such file");
    h.tick().await;
    assert_eq!(h.waiting().0, "CrashLoopBackOff");
    h.after(Duration::from_secs(10)).await;
    assert_eq!(h.rt.starts_of("c"), 1);
    assert_eq!(h.view().restart_count, 2);
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_backs_off_without_counting_restarts() {
    let rt = FakeRuntime::new();
    for _ in 0..3 {
        rt.fail_next_start("c", RuntimeError::ImagePull("manifest unknown".into()));
    }
    let mut h = Harness::with_runtime(pod(json!({})), rt).await;
    h.tick().await;
    assert_eq!(h.waiting().0, "ErrImagePull");
    h.after(Duration::from_secs(10)).await;
    assert_eq!(h.waiting().0, "ErrImagePull");
    h.after(Duration::from_secs(20)).await;
    let (reason, message) = h.waiting();
    assert_eq!(reason, "ImagePullBackOff");
    assert!(message.starts_with("Back-off pulling image"), "{message}");
    h.after(Duration::from_secs(39)).await;
    assert_eq!(h.rt.starts_of("c"), 0);
    h.after(Duration::from_secs(1)).await;
    assert_eq!(h.rt.starts_of("c"), 1);
    assert_eq!(h.view().restart_count, 0);
}
