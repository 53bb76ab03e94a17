//! One chaos run, end to end: start a cluster of real `keel master`
//! processes with a proxy on every peer link, run the workloads while the
//! nemeses follow the seed's schedule, heal everything, wait for recovery,
//! collect final states, run every checker and hand the results to the
//! report. The binary's `keel chaos run` is a thin wrapper around `run`.

use keel_proto::client::ApiClient;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::check::{converge, leaders, linearizable, lost_write, watch as watch_check};
use crate::cluster::{ClusterError, Flavor, ProcessCluster};
use crate::nemesis::schedule::{self, Timing};
use crate::nemesis::{self, Ctx};
use crate::proxy::Mesh;
use crate::report::{self, Histories, Summary, Violation};
use crate::workload::deployments;
use crate::workload::{kv, probe, range_prefix, register, watch as watch_wl};

pub use crate::config::{RunConfig, Workload};

/// Why a run could not be carried out (violations are not errors: they are
/// in the summary).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("report: {0}")]
    Report(String),
}

/// Retries `f` until it succeeds or `max` passes.
async fn retry<T, E: std::fmt::Display, F, Fut>(
    max: Duration,
    what: &str,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + max;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(format!("{what}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs the whole experiment and writes the report into `cfg.out`.
pub async fn run(cfg: &RunConfig) -> Result<Summary, RunError> {
    std::fs::create_dir_all(&cfg.out)?;
    let cluster_dir = cfg.out.join("cluster");
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir)?;
    }
    let n = cfg.masters;
    let mut extra = Vec::new();
    if cfg.unsafe_local_reads {
        extra.push("--unsafe-local-reads".to_string());
    }
    let mut cluster = ProcessCluster::plan(Flavor::Keel, &cfg.bin, &cluster_dir, n, None, &extra)?;
    cluster.use_pki(&cluster_dir.join("pki"))?;
    let peers: Vec<String> = cluster.members.iter().map(|m| m.peer_addr()).collect();
    let mesh = Mesh::start(&peers).await?;
    let names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
    for (i, m) in cluster.members.iter_mut().enumerate() {
        for (j, name) in names.iter().enumerate() {
            if let Some(addr) = mesh.addr(i, j) {
                m.own_args.push("--peer-override".into());
                m.own_args.push(format!("{name}={addr}"));
            }
        }
    }
    cluster.spawn_all()?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let plan = schedule::plan(
        cfg.seed,
        n,
        &cfg.nemeses,
        Timing::for_duration(cfg.duration),
    );
    tracing::info!(faults = plan.len(), seed = cfg.seed, "chaos run starting");

    let start = Instant::now();
    let endpoints = cluster.endpoints();
    let creds = cluster.credentials().clone();
    let (stop_poll, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(leaders::poll(
        creds.clone(),
        endpoints.clone(),
        start,
        Duration::from_millis(100),
        stop_rx,
    ));
    let probes = tokio::spawn(probe::run(
        creds.clone(),
        endpoints.clone(),
        cfg.duration,
        cfg.op_timeout,
        Duration::from_millis(50),
        start,
    ));
    let has = |w| cfg.workloads.contains(&w);
    let reg = has(Workload::Register).then(|| {
        let w = register::RegisterWorkload {
            endpoints: endpoints.clone(),
            creds: creds.clone(),
            clients: cfg.clients,
            keys: cfg.keys,
            duration: cfg.duration,
            timeout: cfg.op_timeout,
            key_period: Some(cfg.key_period),
        };
        tokio::spawn(async move { register::run_at(&w, start).await })
    });
    let kvw = has(Workload::Kv).then(|| {
        let w = kv::KvWorkload {
            endpoints: endpoints.clone(),
            creds: creds.clone(),
            clients: cfg.clients,
            duration: cfg.duration,
            timeout: cfg.op_timeout,
        };
        tokio::spawn(async move { kv::run(&w, start).await })
    });
    let watchers = 2;
    let mut wat = has(Workload::Watch).then(|| {
        watch_wl::start(
            &watch_wl::WatchWorkload {
                endpoints: endpoints.clone(),
                creds: creds.clone(),
                writers: cfg.clients,
                watchers,
                duration: cfg.duration,
                timeout: cfg.op_timeout,
                idle: Duration::from_secs(2),
            },
            start,
        )
    });

    // Deployments through the REST API of random masters (set up before the
    // first fault, so the run starts from a known desired state).
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api_addr()).collect();
    let dep_cfg = deployments::DeploymentsWorkload {
        apis: apis.clone(),
        creds: creds.clone(),
        namespace: "chaos".into(),
        deployments: 3,
        clients: cfg.clients.min(4),
        duration: cfg.duration,
        timeout: cfg.op_timeout,
    };
    let dep = if has(Workload::Deployments) {
        match retry(Duration::from_secs(30), "deployments setup", || {
            deployments::setup(&dep_cfg)
        })
        .await
        {
            Ok(()) => {
                let w = dep_cfg.clone();
                Some(tokio::spawn(
                    async move { deployments::run_at(&w, start).await },
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "deployments workload not started");
                None
            }
        }
    } else {
        None
    };

    let mut ctx = Ctx {
        cluster: &mut cluster,
        mesh: &mesh,
        start,
    };
    let faults = nemesis::run_schedule(&mut ctx, &plan).await;
    nemesis::heal_all(&mut ctx);
    tokio::time::sleep_until((start + cfg.duration).into()).await;
    let recovered = ctx.wait_recovered(Duration::from_secs(60)).await;
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    if recovered.is_none() {
        violations.push(Violation::new(
            "recovery",
            "the cluster did not agree on a leader within 60s after healing",
        ));
    }

    let mut h = Histories {
        probes: probes.await.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(t) = reg {
        h.register = t.await.unwrap_or_default();
    }
    if let Some(t) = kvw {
        h.kv = t.await.unwrap_or_default();
    }
    if has(Workload::Deployments) {
        match dep {
            Some(t) => h.deployments = t.await.unwrap_or_default(),
            None => violations.push(Violation::new(
                "convergence",
                "the deployments workload could not be set up",
            )),
        }
        // After healing the control plane must reach the desired state.
        for v in converge::converged(
            &ApiClient::new(&apis, &creds),
            &dep_cfg.namespace,
            Duration::from_secs(90),
        )
        .await
        {
            violations.push(Violation::new("convergence", &v));
        }
    }
    let final_timeout = Duration::from_secs(5);
    if !h.kv.is_empty() {
        let mut finals = Vec::new();
        for (i, ep) in endpoints.iter().enumerate() {
            match retry(Duration::from_secs(30), "final read", || {
                kv::final_state(&creds, ep, "kv/", final_timeout)
            })
            .await
            {
                Ok(s) => finals.push((names[i].clone(), s)),
                Err(e) => violations.push(Violation::new(
                    "lost-write",
                    &format!("{} did not answer the final read: {e}", names[i]),
                )),
            }
        }
        for l in lost_write::check(&h.kv, &finals) {
            violations.push(Violation::detail("lost-write", &l));
        }
    }
    if let Some(w) = wat.as_mut() {
        w.writers_done().await;
    }
    if let Some(w) = wat {
        let expected: Result<BTreeSet<i64>, String> =
            retry(Duration::from_secs(30), "final watch read", || {
                range_prefix(&creds, &endpoints[0], watch_wl::PREFIX, final_timeout)
            })
            .await
            .map(|kvs| kvs.iter().map(|kv| kv.mod_revision).collect());
        match expected {
            Ok(expected) => {
                let last = expected.iter().next_back().copied().unwrap_or(0);
                h.watch = w.drain(last, Duration::from_secs(60)).await;
                for v in watch_check::check(watchers, &h.watch.received, &expected) {
                    violations.push(Violation::detail("watch", &v));
                }
            }
            Err(e) => violations.push(Violation::new("watch", &e)),
        }
    }
    stop_poll.send_replace(true);
    h.status = poller.await.unwrap_or_default();
    for v in leaders::check(&h.status) {
        violations.push(Violation::detail("two-leaders", &v));
    }
    if !h.register.is_empty() {
        let ops = h.register.clone();
        let budget = cfg.budget;
        let verdict = tokio::task::spawn_blocking(move || linearizable::check(&ops, budget))
            .await
            .unwrap_or(linearizable::Verdict::Unknown {
                key: "(checker crashed)".into(),
            });
        match verdict {
            linearizable::Verdict::Linearizable => {}
            linearizable::Verdict::Violation(v) => {
                violations.push(report::linearizability_violation(&v))
            }
            linearizable::Verdict::Unknown { key } => notes.push(format!(
                "linearizability: search budget ran out on key {key} (no verdict for it)"
            )),
        }
    }
    cluster.stop_all();
    // Keep the member logs, drop their data.
    for m in &cluster.members {
        let _ = std::fs::remove_dir_all(&m.data_dir);
    }
    let summary = report::summarize(cfg, &names, &plan, &faults, &h, violations, notes);
    report::write(&cfg.out, &summary, &h, &names).map_err(RunError::Report)?;
    Ok(summary)
}
