//! The controllers the leader runs. Each is a pure decision,
//! `reconcile(desired, observed) -> Vec<Action>` over plain values (tested
//! with plain values), plus a thin executor that feeds it from the shared
//! informers and carries out its actions with CAS writes. One generic
//! driver (`driver.rs`) owns the rest: watching, queueing, retries with
//! back-off, requeue-after and cancellation. This module holds what the
//! controllers share: their settings, the informers and the context.

pub mod deployment;
pub mod driver;
pub mod endpoints;
pub mod gc;
pub mod node_lifecycle;
pub mod propagation;
pub mod replicaset;

use std::time::Duration;

use keel_proto::api::{Deployment, Endpoints, Lease, Node, Pod, ReplicaSet, Service};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::Recorder;
use crate::informer::Informer;
use crate::registry::Registry;

/// Settings of the leader-only loops.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose Lease is not renewed for this long is marked NotReady.
    pub node_monitor_grace: Duration,
    /// A NotReady node's pods are deleted after this long.
    pub pod_eviction_timeout: Duration,
    /// At most this many nodes' pods are evicted per second.
    pub eviction_rate: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(10),
            pod_eviction_timeout: Duration::from_secs(20),
            eviction_rate: 0.1,
        }
    }
}

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

/// What every controller gets.
#[derive(Clone)]
pub struct Ctx {
    pub registry: Registry,
    pub inf: Informers,
    pub events: Recorder,
    pub cfg: ControllerConfig,
    /// Fires when this leader's term ends; every controller stops then.
    pub cancel: CancellationToken,
}

/// Starts every controller in `tasks`; each stops when `cancel` fires.
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
        cancel: cancel.clone(),
    };
    tasks.spawn(replicaset::run(ctx.clone()));
    tasks.spawn(deployment::run(ctx.clone()));
    tasks.spawn(endpoints::run(ctx.clone()));
    tasks.spawn(gc::run(ctx.clone()));
    tasks.spawn(node_lifecycle::run(ctx));
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
