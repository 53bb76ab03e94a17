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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_proto::api::core::Taint;
use keel_proto::api::meta::{Condition, condition, now_rfc3339, set_condition};
use keel_proto::api::{Lease, Node, Pod};
use tokio::sync::Mutex;

use super::driver::{Backoff, Controller, Outcome, singleton_key};
use super::{Ctx, pod_active};
use crate::informer::Delta;
use crate::scheduler::filter::ZONE_LABEL;
use crate::write;

/// The taint an unreachable node gets.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// What the controller knows of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub name: String,
    pub zone: String,
    /// Time since this leader saw the node's Lease change (or since it
    /// became leader); `None` when the node has no Lease.
    pub lease_age: Option<Duration>,
    /// The Ready condition's status ("" when absent) and reason.
    pub ready: String,
    pub ready_reason: String,
    pub tainted: bool,
    /// Live pods bound to the node.
    pub pods: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub grace: Duration,
    pub eviction_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ready=Unknown and the unreachable taint.
    MarkUnreachable(String),
    /// Ready=True and no unreachable taint.
    MarkReachable(String),
    /// Delete the node's pods.
    Evict(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Why eviction is stopped, when it is.
    pub halted: Option<String>,
}

/// Decides over every node at once; `budget` is how many nodes may be
/// evicted now (the rate limiter's tokens).
pub fn reconcile(nodes: &[Observed], t: &Timing, budget: usize) -> Decision {
    let mut d = Decision::default();
    let watched: Vec<&Observed> = nodes.iter().filter(|n| n.lease_age.is_some()).collect();
    let is_down = |n: &Observed| n.lease_age.is_some_and(|a| a > t.grace);
    for n in &watched {
        if is_down(n) {
            if n.ready != "Unknown" || n.ready_reason != "NodeStatusUnknown" || !n.tainted {
                d.actions.push(Action::MarkUnreachable(n.name.clone()));
            }
        } else if n.tainted || n.ready_reason == "NodeStatusUnknown" {
            d.actions.push(Action::MarkReachable(n.name.clone()));
        }
    }
    let down = watched.iter().filter(|n| is_down(n)).count();
    let mut zones: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for n in &watched {
        let z = zones.entry(n.zone.as_str()).or_default();
        z.0 += 1;
        if is_down(n) {
            z.1 += 1;
        }
    }
    if down * 2 > watched.len() {
        d.halted = Some(format!(
            "{down} of {} nodes look down: more likely a control-plane or network fault than node failures; not evicting pods",
            watched.len()
        ));
    } else if let Some((z, (n, _))) = zones
        .iter()
        .find(|(_, (total, down))| *total > 1 && down == total)
    {
        d.halted = Some(format!(
            "all {n} nodes of zone {z:?} look down: more likely a network fault than node failures; not evicting pods"
        ));
    }
    if d.halted.is_some() {
        return d;
    }
    let evict_after = t.grace + t.eviction_timeout;
    let mut due: Vec<&&Observed> = watched
        .iter()
        .filter(|n| n.pods > 0 && n.lease_age.is_some_and(|a| a >= evict_after))
        .collect();
    due.sort_by(|a, b| b.lease_age.cmp(&a.lease_age).then(a.name.cmp(&b.name)));
    for n in due.into_iter().take(budget) {
        d.actions.push(Action::Evict(n.name.clone()));
    }
    d
}

/// A token bucket: `rate` tokens a second, at most one banked.
struct Limiter {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    fn available(&mut self) -> usize {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(1.0);
        self.at = now;
        self.tokens.floor() as usize
    }
    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

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
        let r = tracing::Instrument::instrument(act(ctx, &node, &a, &pods), span).await;
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

async fn act(
    ctx: &Ctx,
    node: &Node,
    a: &Action,
    pods: &[std::sync::Arc<Pod>],
) -> Result<(), crate::ApiError> {
    let events = ctx.events.for_component("node-controller");
    let now = now_rfc3339();
    match a {
        Action::MarkUnreachable(name) => {
            let mut n = node.clone();
            set_condition(
                &mut n.status.conditions,
                Condition {
                    type_: "Ready".into(),
                    status: "Unknown".into(),
                    reason: "NodeStatusUnknown".into(),
                    message: "Kubelet stopped posting node status.".into(),
                    ..Default::default()
                },
                &now,
            );
            if !n.spec.taints.iter().any(|t| t.key == UNREACHABLE_TAINT) {
                n.spec.taints.push(Taint {
                    key: UNREACHABLE_TAINT.into(),
                    value: String::new(),
                    effect: "NoExecute".into(),
                });
            }
            write::replace(&ctx.registry, node, &n).await?;
            tracing::warn!(node = %name, "node NotReady: its Lease was not renewed within the grace period");
            events.warning(
                node,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady (Lease not renewed)"),
            );
        }
        Action::MarkReachable(name) => {
            let mut n = node.clone();
            n.spec.taints.retain(|t| t.key != UNREACHABLE_TAINT);
            if condition(&n.status.conditions, "Ready")
                .is_none_or(|c| c.reason == "NodeStatusUnknown")
            {
                set_condition(
                    &mut n.status.conditions,
                    Condition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        reason: "KubeletReady".into(),
                        message: "Node Lease renewed again.".into(),
                        ..Default::default()
                    },
                    &now,
                );
            }
            write::replace(&ctx.registry, node, &n).await?;
            tracing::info!(node = %name, "node Ready again: its Lease is renewed");
            events.normal(
                node,
                "NodeReady",
                format!("Node {name} status is now: NodeReady"),
            );
        }
        Action::Evict(name) => {
            let mine: Vec<&std::sync::Arc<Pod>> =
                pods.iter().filter(|p| &p.spec.node_name == name).collect();
            tracing::warn!(node = %name, pods = mine.len(), "evicting the pods of an unreachable node");
            events.warning(
                node,
                "EvictingPods",
                format!("Deleting {} pods of unreachable node {name}", mine.len()),
            );
            let reg = ctx.registry.clone();
            let mine: Vec<std::sync::Arc<Pod>> = mine.into_iter().cloned().collect();
            let results: Vec<Result<i64, crate::ApiError>> = futures::stream::iter(mine)
                .map(move |p| {
                    let reg = reg.clone();
                    async move { write::delete(&reg, &*p).await }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            for r in results {
                if let Err(e) = r
                    && !write::is_stale(&e)
                {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        grace: Duration::from_secs(10),
        eviction_timeout: Duration::from_secs(20),
    };

    fn node(name: &str, zone: &str, age: Option<u64>, pods: usize) -> Observed {
        Observed {
            name: name.into(),
            zone: zone.into(),
            lease_age: age.map(Duration::from_secs),
            ready: "True".into(),
            ready_reason: "KubeletReady".into(),
            tainted: false,
            pods,
        }
    }

    fn down(mut o: Observed) -> Observed {
        o.ready = "Unknown".into();
        o.ready_reason = "NodeStatusUnknown".into();
        o.tainted = true;
        o
    }

    #[test]
    fn a_fresh_lease_keeps_a_node_ready() {
        let d = reconcile(&[node("a", "z1", Some(9), 3)], &T, 1);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn an_expired_lease_marks_the_node_unreachable() {
        let d = reconcile(
            &[
                node("a", "z1", Some(11), 3),
                node("b", "z2", Some(1), 1),
                node("c", "z3", Some(1), 1),
            ],
            &T,
            1,
        );
        assert_eq!(d.actions, vec![Action::MarkUnreachable("a".into())]);
        // Already marked: nothing more until the eviction timeout.
        let d = reconcile(
            &[
                down(node("a", "z1", Some(25), 3)),
                node("b", "z2", Some(1), 1),
                node("c", "z3", Some(1), 1),
            ],
            &T,
            1,
        );
        assert!(d.actions.is_empty());
    }

    #[test]
    fn pods_are_evicted_after_the_timeout_within_the_budget() {
        let nodes = [
            down(node("a", "z1", Some(31), 3)),
            down(node("b", "z2", Some(40), 2)),
            down(node("e", "z3", Some(31), 0)),
            node("c", "z3", Some(1), 1),
            node("d", "z3", Some(1), 1),
            node("f", "z1", Some(1), 1),
        ];
        let d = reconcile(&nodes, &T, 1);
        assert_eq!(
            d.actions,
            vec![Action::Evict("b".into())],
            "longest down first, one per token"
        );
        let d = reconcile(&nodes, &T, 5);
        assert_eq!(
            d.actions,
            vec![Action::Evict("b".into()), Action::Evict("a".into())],
            "empty nodes need no eviction"
        );
        assert!(
            reconcile(&nodes, &T, 0).actions.is_empty(),
            "no tokens, no eviction"
        );
    }

    #[test]
    fn eviction_stops_when_most_nodes_look_down() {
        let nodes = [
            down(node("a", "z1", Some(31), 3)),
            down(node("b", "z2", Some(31), 3)),
            node("c", "z3", Some(1), 3),
        ];
        let d = reconcile(&nodes, &T, 5);
        assert!(d.actions.is_empty());
        assert!(d.halted.unwrap().contains("2 of 3 nodes"));
    }

    #[test]
    fn eviction_stops_when_a_whole_zone_looks_down() {
        let nodes = [
            down(node("a1", "z1", Some(31), 3)),
            down(node("a2", "z1", Some(31), 3)),
            node("b1", "z2", Some(1), 3),
            node("b2", "z2", Some(1), 3),
            node("c1", "z3", Some(1), 3),
        ];
        let d = reconcile(&nodes, &T, 5);
        assert!(d.actions.is_empty());
        assert!(d.halted.unwrap().contains("zone \"z1\""));
        // One node of a multi-node zone is just a node failure.
        let nodes = [
            down(node("a1", "z1", Some(31), 3)),
            node("a2", "z1", Some(1), 3),
            node("b1", "z2", Some(1), 3),
        ];
        assert_eq!(
            reconcile(&nodes, &T, 5).actions,
            vec![Action::Evict("a1".into())]
        );
    }

    #[test]
    fn a_single_node_zone_going_down_is_a_node_failure() {
        let nodes = [
            down(node("a", "z1", Some(31), 2)),
            node("b", "z2", Some(1), 2),
            node("c", "z3", Some(1), 2),
        ];
        let d = reconcile(&nodes, &T, 1);
        assert_eq!(d.halted, None);
        assert_eq!(d.actions, vec![Action::Evict("a".into())]);
    }

    #[test]
    fn a_node_that_comes_back_is_ready_again() {
        let d = reconcile(&[down(node("a", "z1", Some(1), 0))], &T, 1);
        assert_eq!(d.actions, vec![Action::MarkReachable("a".into())]);
    }

    #[test]
    fn nodes_without_a_lease_are_left_alone() {
        let mut n = node("sim", "z1", None, 5);
        n.ready = "False".into();
        let d = reconcile(&[n, down(node("x", "z2", Some(100), 0))], &T, 1);
        assert_eq!(
            d.actions,
            vec![],
            "the leaseless node is not touched, nor counted"
        );
        assert!(d.halted.is_some(), "1 of 1 watched nodes is down");
    }

    #[test]
    fn the_rate_limiter_refills() {
        let mut l = Limiter {
            rate: 10.0,
            tokens: 1.0,
            at: Instant::now(),
        };
        assert_eq!(l.available(), 1);
        l.take();
        assert_eq!(l.available(), 0);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(l.available(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(l.available(), 1, "at most one banked");
    }
}
