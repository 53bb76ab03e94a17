//! Node lifecycle: agents renew a Lease named after their node in
//! `kube-node-lease`; a node whose Lease this leader has not seen change for
//! `node_monitor_grace` gets Ready=Unknown (reason NodeStatusUnknown) and the
//! `node.kubernetes.io/unreachable:NoExecute` taint, and once it has been
//! down for `pod_eviction_timeout` more its pods are deleted so their
//! ReplicaSets replace them elsewhere. A node whose Lease moves again gets
//! Ready=True and loses the taint.
//!
//! Time is this leader's monotonic clock, started when it saw each Lease's
//! resourceVersion change, never the renewTime the agent wrote: a newly
//! elected leader therefore first grants every node a full grace period, so
//! a master failover never marks healthy nodes down or moves their pods.
//!
//! Eviction is rate-limited (`eviction_rate` nodes per second, burst one)
//! and stops altogether when more than half of the nodes, or every node of a
//! zone that has more than one, look down: that is more likely a fault of
//! the control plane or the network than of the nodes (logged, and an Event
//! says why). A zone of one node is just that node.
//!
//! Nodes that never had a Lease (created through the API without an agent,
//! as tests and `keel bench schedule` create them) keep whatever Ready
//! condition they were created with until a Lease for them appears: nothing
//! heartbeats for them, so there is nothing to time out.
//!
//! `decide.rs` is the decision over plain values, `act.rs` carries out one
//! action; this file is the driver.

mod act;
pub mod decide;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::api::Lease;
use keel_proto::api::meta::condition;
use tokio::sync::Mutex;

pub use decide::{Action, Decision, Limiter, Observed, Timing, reconcile};

use super::driver::{Backoff, Controller, Outcome, singleton_key};
use super::{Ctx, pod_active};
use crate::informer::Delta;
use crate::scheduler::filter::ZONE_LABEL;

/// The taint an unreachable node gets.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// What the controller remembers between decisions (this leader's term only).
struct Memory {
    /// When the controller first decided: every node's grace starts there.
    started: Instant,
    /// Per Lease name: the resourceVersion last seen and when it changed.
    seen: HashMap<String, (String, Instant)>,
    limiter: Limiter,
    /// Why eviction was halted at the last decision, if it was.
    last_halt: Option<String>,
}

impl Memory {
    /// Notes Lease renewals: a resourceVersion not seen before restarts
    /// that node's clock.
    fn note(&mut self, leases: &[std::sync::Arc<Lease>]) {
        for l in leases {
            if l.metadata.namespace != keel_proto::api::coordination::NODE_LEASE_NAMESPACE {
                continue;
            }
            let rv = &l.metadata.resource_version;
            match self.seen.get_mut(&l.metadata.name) {
                Some(s) if &s.0 == rv => {}
                _ => {
                    self.seen
                        .insert(l.metadata.name.clone(), (rv.clone(), Instant::now()));
                }
            }
        }
    }
}

/// The driver: re-decides on every Lease change and a few times per grace
/// period; a failed action is retried with back-off, at most that period
/// apart.
pub async fn run(ctx: Ctx) {
    let timing = Timing {
        grace: ctx.cfg.node_monitor_grace,
        eviction_timeout: ctx.cfg.pod_eviction_timeout,
    };
    let every = (timing.grace / 5).clamp(Duration::from_millis(20), Duration::from_millis(500));
    let memory: Arc<Mutex<Option<Memory>>> = Arc::default();
    let inf = &ctx.inf;
    Controller::singleton("NodeLifecycle", &ctx.cancel)
        .watches(&inf.leases, |d| match d {
            Delta::Added(_) | Delta::Modified { .. } => vec![singleton_key()],
            Delta::Deleted(_) | Delta::Resync => vec![],
        })
        .reads(&inf.nodes)
        .reads(&inf.pods)
        .backoff(Backoff {
            max: every,
            ..Backoff::default()
        })
        .run({
            let ctx = ctx.clone();
            move |_| {
                let (ctx, memory) = (ctx.clone(), memory.clone());
                async move {
                    let mut memory = memory.lock().await;
                    let memory = memory.get_or_insert_with(|| first_memory(&ctx));
                    decide_and_act(&ctx, &timing, memory).await?;
                    Ok(Outcome::RequeueAfter(every))
                }
            }
        })
        .await
}

/// The memory at the first decision: every current Lease seen just now.
fn first_memory(ctx: &Ctx) -> Memory {
    let mut m = Memory {
        started: Instant::now(),
        seen: HashMap::new(),
        limiter: Limiter {
            rate: ctx.cfg.eviction_rate.max(0.0),
            tokens: 1.0,
            at: Instant::now(),
        },
        last_halt: None,
    };
    m.note(&ctx.inf.leases.list());
    tracing::info!(
        leases = m.seen.len(),
        "node lifecycle: every node starts with a full grace period"
    );
    m
}

/// One decision over every node, carried out; the first failed action's
/// error (the others are still tried).
async fn decide_and_act(
    ctx: &Ctx,
    timing: &Timing,
    memory: &mut Memory,
) -> Result<(), crate::ApiError> {
    memory.note(&ctx.inf.leases.list());
    let nodes = ctx.inf.nodes.list();
    let mut pods_on: HashMap<&str, usize> = HashMap::new();
    let pods = ctx
        .inf
        .pods
        .filter(|p| !p.spec.node_name.is_empty() && pod_active(p));
    for p in &pods {
        *pods_on.entry(p.spec.node_name.as_str()).or_default() += 1;
    }
    let now = Instant::now();
    let obs: Vec<Observed> = nodes
        .iter()
        .map(|n| {
            let ready = condition(&n.status.conditions, "Ready");
            Observed {
                name: n.metadata.name.clone(),
                zone: n
                    .metadata
                    .labels
                    .get(ZONE_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                lease_age: memory
                    .seen
                    .get(&n.metadata.name)
                    .map(|(_, at)| now.duration_since((*at).max(memory.started))),
                ready: ready.map(|c| c.status.clone()).unwrap_or_default(),
                ready_reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
                tainted: n.spec.taints.iter().any(|t| t.key == UNREACHABLE_TAINT),
                pods: pods_on.get(n.metadata.name.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();
    let decision = reconcile(&obs, timing, memory.limiter.available());
    if decision.halted != memory.last_halt {
        if let Some(why) = &decision.halted {
            tracing::warn!(%why, "node eviction halted");
            if let Some(n) = obs
                .iter()
                .find(|o| o.lease_age.is_some_and(|a| a > timing.grace))
                .and_then(|o| ctx.inf.nodes.get("", &o.name))
            {
                ctx.events.for_component("node-controller").warning(
                    &*n,
                    "EvictionHalted",
                    why.clone(),
                );
            }
        } else if memory.last_halt.is_some() {
            tracing::info!("node eviction resumed");
        }
        memory.last_halt = decision.halted.clone();
    }
    let mut first_err = None;
    for a in decision.actions {
        let name = match &a {
            Action::MarkUnreachable(n) | Action::MarkReachable(n) | Action::Evict(n) => n.clone(),
        };
        let span = tracing::info_span!("reconcile", kind = "Node", name = %name);
        let Some(node) = ctx.inf.nodes.get("", &name) else {
            continue;
        };
        let r = tracing::Instrument::instrument(act::act(ctx, &node, &a, &pods), span).await;
        if let Action::Evict(_) = a {
            memory.limiter.take();
        }
        if let Err(e) = r {
            tracing::debug!(node = %name, error = %e, "node action failed; retried with back-off");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
