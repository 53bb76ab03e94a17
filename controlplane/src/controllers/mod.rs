//! The controllers the leader runs. Each is a pure decision,
//! `reconcile(desired, observed) -> Vec<Action>` over plain values (tested
//! with plain values), plus a thin driver that feeds it from the shared
//! informers, carries out its actions with CAS writes, and requeues on
//! conflict. This module holds what the drivers share.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod node_lifecycle;
pub mod replicaset;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::api::{Deployment, Endpoints, Lease, Node, Pod, ReplicaSet, Service};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::events::Recorder;
use crate::informer::{Informer, Key};
use crate::leader::ControllerConfig;
use crate::registry::Registry;
use crate::workqueue::WorkQueue;

/// One informer per kind, shared by the scheduler and every controller of a term.
#[derive(Clone)]
pub struct Informers {
    pub pods: Informer<Pod>,
    pub nodes: Informer<Node>,
    pub replicasets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub services: Informer<Service>,
    pub endpoints: Informer<Endpoints>,
    pub leases: Informer<Lease>,
}

impl Informers {
    pub fn start(reg: &Registry, cancel: &CancellationToken) -> Informers {
        Informers {
            pods: Informer::start(reg.clone(), cancel.clone()),
            nodes: Informer::start(reg.clone(), cancel.clone()),
            replicasets: Informer::start(reg.clone(), cancel.clone()),
            deployments: Informer::start(reg.clone(), cancel.clone()),
            services: Informer::start(reg.clone(), cancel.clone()),
            endpoints: Informer::start(reg.clone(), cancel.clone()),
            leases: Informer::start(reg.clone(), cancel.clone()),
        }
    }

    /// Waits until every cache holds its first list.
    pub async fn synced(&self) {
        self.pods.synced().await;
        self.nodes.synced().await;
        self.replicasets.synced().await;
        self.deployments.synced().await;
        self.services.synced().await;
        self.endpoints.synced().await;
        self.leases.synced().await;
    }
}

/// What every driver gets.
#[derive(Clone)]
pub struct Ctx {
    pub registry: Registry,
    pub inf: Informers,
    pub events: Recorder,
    pub cfg: ControllerConfig,
}

/// Starts every controller in `tasks`.
pub fn spawn_all(
    tasks: &mut JoinSet<()>,
    registry: &Registry,
    inf: &Informers,
    events: &Recorder,
    cfg: &ControllerConfig,
    cancel: &CancellationToken,
) {
    let ctx = Ctx {
        registry: registry.clone(),
        inf: inf.clone(),
        events: events.clone(),
        cfg: cfg.clone(),
    };
    tasks.spawn(replicaset::run(ctx.clone()));
    tasks.spawn(deployment::run(ctx.clone()));
    tasks.spawn(endpoints::run(ctx.clone()));
    tasks.spawn(gc::run(ctx.clone()));
    tasks.spawn(node_lifecycle::run(ctx.clone()));
    let _ = cancel;
}

/// What a sync asks of its driver afterwards.
pub type SyncResult = Result<Option<Duration>, ApiError>;

/// Runs `workers` workers over `queue`, each calling `sync` for a key inside
/// a `reconcile` span; a failed sync is retried with back-off (a conflict
/// soon, anything else later), `Ok(Some(d))` re-checks the key after `d`.
pub async fn work<F, Fut>(kind: &'static str, queue: Arc<WorkQueue<Key>>, workers: usize, sync: F)
where
    F: Fn(Key) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = SyncResult> + Send,
{
    use tracing::Instrument;
    let one = |sync: F, queue: Arc<WorkQueue<Key>>| async move {
        let mut failures: std::collections::HashMap<Key, u32> = Default::default();
        loop {
            let k = queue.next().await;
            let span = tracing::debug_span!("reconcile", kind, name = %format!("{}/{}", k.0, k.1));
            let r = sync(k.clone()).instrument(span).await;
            queue.done(&k);
            match r {
                Ok(again) => {
                    failures.remove(&k);
                    if let Some(d) = again {
                        queue.add_after(k, d);
                    }
                }
                Err(e) => {
                    let n = failures.entry(k.clone()).or_insert(0);
                    *n += 1;
                    let base = if crate::write::is_stale(&e) { 20 } else { 200 };
                    let d = Duration::from_millis((base << (*n).min(6)).min(5_000));
                    tracing::debug!(kind, key = ?k, error = %e, retry_ms = d.as_millis() as u64, "sync failed");
                    queue.add_after(k, d);
                }
            }
        }
    };
    let all: Vec<_> = (0..workers)
        .map(|_| one(sync.clone(), queue.clone()))
        .collect();
    futures::future::join_all(all).await;
}

/// The controlling owner of `meta` if it is of `kind`.
pub fn owner_of<'a>(
    meta: &'a keel_proto::api::ObjectMeta,
    kind: &str,
) -> Option<&'a keel_proto::api::OwnerReference> {
    meta.controller().filter(|o| o.kind == kind)
}

/// An owner reference to `o`, marked as its controller.
pub fn controller_ref<T: keel_proto::api::Resource>(o: &T) -> keel_proto::api::OwnerReference {
    keel_proto::api::OwnerReference {
        api_version: T::API_VERSION.into(),
        kind: T::KIND.into(),
        name: o.meta().name.clone(),
        uid: o.meta().uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Seconds since the epoch, for the decisions that compare timestamps.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a pod counts as available: Ready for at least `min_ready` seconds.
pub fn pod_available(p: &Pod, min_ready: i64, now: i64) -> bool {
    let Some(c) = keel_proto::api::meta::condition(&p.status.conditions, "Ready") else {
        return false;
    };
    if c.status != "True" {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    c.last_transition_time
        .as_deref()
        .and_then(keel_proto::api::meta::parse_rfc3339)
        .is_some_and(|t| t + min_ready <= now)
}

/// Whether a pod is live for its controller: not terminal, not being deleted.
pub fn pod_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !p.is_terminal()
}
