//! The scheduler (leader only): binds each unbound pod to a node. It keeps
//! its own accounting of what is placed where (bound pods from the pod
//! informer, plus binds still in flight), filters nodes (`filter.rs`), scores
//! the ones that fit (`score.rs`) and binds with a CAS write on the pod's
//! revision, many binds at once. A conflict just requeues the pod. A pod that
//! fits nowhere gets `PodScheduled=False` (reason Unschedulable, a message
//! saying why) through its status and is retried when nodes or pods change.

pub mod filter;
pub mod score;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::api::meta::{Condition, condition, now_rfc3339, set_condition};
use keel_proto::api::{Node, Pod};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::events::Recorder;
use crate::informer::{Delta, Informer, Key, key_of};
use crate::registry::Registry;
use crate::write;
use filter::{NodeInfo, Resources, Unfit};
use score::Candidate;

/// Binds (and status writes) in flight at most. The store does its best
/// throughput with tens of concurrent writers.
pub const MAX_IN_FLIGHT: usize = 128;
/// Unschedulable pods are retried at least this often even if nothing changed.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(10);

/// Whether the scheduler should place this pod.
pub fn wants_scheduling(p: &Pod) -> bool {
    p.spec.node_name.is_empty() && p.metadata.deletion_timestamp.is_none() && !p.is_terminal()
}

/// How many feasible nodes to look for before scoring, as Kubernetes'
/// percentageOfNodesToScore: all of a small cluster, a shrinking share of a
/// big one, never fewer than 100.
pub fn nodes_to_find(total: usize) -> usize {
    if total <= 100 {
        return total;
    }
    let pct = (50 - total as i64 / 125).max(5) as usize;
    (total * pct / 100).max(100).min(total)
}

struct Placed {
    node: String,
    req: Resources,
    workload: Option<String>,
}

/// The scheduler's view: nodes, and what is placed on them.
#[derive(Default)]
struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Node names in a fixed order; scheduling walks them from a rotating start.
    order: Vec<String>,
    next_start: usize,
    used: HashMap<String, Resources>,
    placed: HashMap<Key, Placed>,
    /// Per workload: its pods per node.
    spread: HashMap<String, HashMap<String, u32>>,
}

impl Cache {
    fn place(&mut self, k: Key, node: &str, req: Resources, workload: Option<String>) {
        self.unplace(&k);
        self.used.entry(node.to_string()).or_default().add(&req);
        if let Some(w) = &workload {
            *self
                .spread
                .entry(w.clone())
                .or_default()
                .entry(node.to_string())
                .or_insert(0) += 1;
        }
        self.placed.insert(
            k,
            Placed {
                node: node.to_string(),
                req,
                workload,
            },
        );
    }

    fn unplace(&mut self, k: &Key) -> bool {
        let Some(p) = self.placed.remove(k) else {
            return false;
        };
        if let Some(u) = self.used.get_mut(&p.node) {
            u.sub(&p.req);
        }
        if let Some(w) = &p.workload
            && let Some(m) = self.spread.get_mut(w)
        {
            if let Some(c) = m.get_mut(&p.node) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    m.remove(&p.node);
                }
            }
            if m.is_empty() {
                self.spread.remove(w);
            }
        }
        true
    }

    fn set_nodes(&mut self, nodes: impl IntoIterator<Item = NodeInfo>) {
        self.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        self.reorder();
    }

    fn reorder(&mut self) {
        self.order = self.nodes.keys().cloned().collect();
        self.order.sort();
    }

    /// Filters and scores the nodes for `pod`: the chosen node, or the
    /// per-reason counts of why none fits.
    fn choose(&mut self, pod: &Pod, tie: usize) -> Result<String, BTreeMap<Unfit, usize>> {
        let req = filter::requests(pod);
        let total = self.order.len();
        let want = nodes_to_find(total);
        let mut cands = Vec::new();
        let mut unfit: BTreeMap<Unfit, usize> = BTreeMap::new();
        let start = if total == 0 {
            0
        } else {
            self.next_start % total
        };
        let mut seen = 0;
        for i in 0..total {
            let name = &self.order[(start + i) % total];
            seen += 1;
            let Some(n) = self.nodes.get(name) else {
                continue;
            };
            let used = self.used.get(name).copied().unwrap_or_default();
            match filter::check(n, &used, pod, &req) {
                Ok(()) => {
                    cands.push(Candidate { node: n, used });
                    if cands.len() >= want {
                        break;
                    }
                }
                Err(u) => *unfit.entry(u).or_insert(0) += 1,
            }
        }
        self.next_start = start + seen;
        let w = score::workload(pod);
        let per_node = w.as_ref().and_then(|w| self.spread.get(w));
        match score::pick(&cands, &req, per_node, tie) {
            Some(i) => Ok(cands[i].node.name.clone()),
            None => Err(unfit),
        }
    }
}

enum Done {
    Bind {
        key: Key,
        node: String,
        result: Result<(), ApiError>,
    },
    Status,
}

struct Scheduler {
    registry: Registry,
    pods: Informer<Pod>,
    cache: Cache,
    queue: VecDeque<Key>,
    queued: HashSet<Key>,
    in_flight: HashSet<Key>,
    /// Pods that fit nowhere, with the generation that did not fit.
    unschedulable: HashMap<Key, i64>,
    events: Recorder,
    tie: usize,
}

/// Runs the scheduler until `cancel` fires.
pub async fn run(
    registry: Registry,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    events: Recorder,
    cancel: CancellationToken,
) {
    let mut pod_sub = pods.subscribe();
    let mut node_sub = nodes.subscribe();
    pods.synced().await;
    nodes.synced().await;
    let mut s = Scheduler {
        registry,
        pods: pods.clone(),
        cache: Cache::default(),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        in_flight: HashSet::new(),
        unschedulable: HashMap::new(),
        events: events.for_component("default-scheduler"),
        tie: 0,
    };
    s.resync_nodes(&nodes);
    s.resync_pods();
    let mut binds: JoinSet<Done> = JoinSet::new();
    let mut retry = tokio::time::interval(RETRY_UNSCHEDULABLE);
    retry.tick().await;
    loop {
        // Take in every change already waiting before deciding anything.
        while let Some(d) = node_sub.try_next() {
            s.on_node(d, &nodes);
        }
        while let Some(d) = pod_sub.try_next() {
            s.on_pod(d);
        }
        let mut budget = 256;
        while binds.len() < MAX_IN_FLIGHT && budget > 0 {
            let Some(k) = s.queue.pop_front() else { break };
            s.queued.remove(&k);
            s.schedule_one(k, &mut binds);
            budget -= 1;
        }
        let idle = s.queue.is_empty() || binds.len() >= MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            Some(done) = binds.join_next(), if !binds.is_empty() => {
                if let Ok(done) = done {
                    s.on_done(done);
                }
            }
            d = node_sub.next(), if idle => match d {
                Some(d) => s.on_node(d, &nodes),
                None => return,
            },
            d = pod_sub.next(), if idle => match d {
                Some(d) => s.on_pod(d),
                None => return,
            },
            _ = retry.tick() => s.retry_unschedulable(),
            _ = std::future::ready(()), if !idle => {}
        }
    }
}

impl Scheduler {
    fn enqueue(&mut self, k: Key) {
        if !self.in_flight.contains(&k) && self.queued.insert(k.clone()) {
            self.queue.push_back(k);
        }
    }

    fn retry_unschedulable(&mut self) {
        let keys: Vec<Key> = self.unschedulable.drain().map(|(k, _)| k).collect();
        for k in keys {
            self.enqueue(k);
        }
    }

    fn resync_nodes(&mut self, nodes: &Informer<Node>) {
        self.cache
            .set_nodes(nodes.list().iter().map(|n| NodeInfo::from_node(n)));
        self.retry_unschedulable();
    }

    fn resync_pods(&mut self) {
        let in_flight = &self.in_flight;
        let stale: Vec<Key> = self
            .cache
            .placed
            .keys()
            .filter(|k| !in_flight.contains(*k))
            .cloned()
            .collect();
        for k in stale {
            self.cache.unplace(&k);
        }
        for p in self.pods.list() {
            self.observe(&p);
        }
    }

    fn on_node(&mut self, d: Delta<Node>, nodes: &Informer<Node>) {
        match d {
            Delta::Added(n) | Delta::Modified { new: n, .. } => {
                let info = NodeInfo::from_node(&n);
                let changed = self.cache.nodes.get(&info.name) != Some(&info);
                if changed {
                    if !self.cache.nodes.contains_key(&info.name) {
                        self.cache.nodes.insert(info.name.clone(), info);
                        self.cache.reorder();
                    } else {
                        self.cache.nodes.insert(info.name.clone(), info);
                    }
                    self.retry_unschedulable();
                }
            }
            Delta::Deleted(n) => {
                self.cache.nodes.remove(&n.metadata.name);
                self.cache.reorder();
            }
            Delta::Resync => self.resync_nodes(nodes),
        }
    }

    fn on_pod(&mut self, d: Delta<Pod>) {
        match d {
            Delta::Added(p) => self.observe(&p),
            Delta::Modified { new, .. } => self.observe(&new),
            Delta::Deleted(p) => {
                let k = key_of(&*p);
                self.unschedulable.remove(&k);
                if self.cache.unplace(&k) {
                    // Room freed up: pods that did not fit may fit now.
                    self.retry_unschedulable();
                }
            }
            Delta::Resync => self.resync_pods(),
        }
    }

    /// Accounts a pod as the informer shows it.
    fn observe(&mut self, p: &Arc<Pod>) {
        let k = key_of(&**p);
        if !p.spec.node_name.is_empty() {
            self.unschedulable.remove(&k);
            if p.is_terminal() {
                if self.cache.unplace(&k) {
                    self.retry_unschedulable();
                }
            } else if self
                .cache
                .placed
                .get(&k)
                .is_none_or(|x| x.node != p.spec.node_name)
            {
                self.cache.place(
                    k,
                    &p.spec.node_name,
                    filter::requests(p),
                    score::workload(p),
                );
            }
            return;
        }
        if !wants_scheduling(p) || self.in_flight.contains(&k) {
            return;
        }
        if self.unschedulable.get(&k) == Some(&p.metadata.generation) {
            return;
        }
        self.enqueue(k);
    }

    fn schedule_one(&mut self, k: Key, binds: &mut JoinSet<Done>) {
        let Some(pod) = self.pods.get(&k.0, &k.1) else {
            return;
        };
        if !wants_scheduling(&pod) || self.in_flight.contains(&k) {
            return;
        }
        self.tie = self.tie.wrapping_add(7919);
        match self.cache.choose(&pod, self.tie) {
            Ok(node) => {
                self.cache.place(
                    k.clone(),
                    &node,
                    filter::requests(&pod),
                    score::workload(&pod),
                );
                self.in_flight.insert(k.clone());
                self.unschedulable.remove(&k);
                let reg = self.registry.clone();
                let events = self.events.clone();
                let span = tracing::debug_span!("reconcile", kind = "Pod", name = %format!("{}/{}", k.0, k.1), node = %node);
                binds.spawn(
                    async move {
                        let result = bind(&reg, &pod, &node).await;
                        match &result {
                            Ok(()) => events.normal(
                                &*pod,
                                "Scheduled",
                                format!("Successfully assigned {}/{} to {node}", k.0, k.1),
                            ),
                            Err(e) => tracing::debug!(error = %e, "bind failed, requeued"),
                        }
                        Done::Bind {
                            key: k,
                            node,
                            result,
                        }
                    }
                    .instrument(span),
                );
            }
            Err(unfit) => {
                let msg = filter::unschedulable_message(self.cache.order.len(), &unfit);
                self.unschedulable
                    .insert(k.clone(), pod.metadata.generation);
                let current = condition(&pod.status.conditions, "PodScheduled");
                if current.is_some_and(|c| {
                    c.status == "False" && c.reason == "Unschedulable" && c.message == msg
                }) {
                    return;
                }
                tracing::debug!(pod = %format!("{}/{}", k.0, k.1), %msg, "unschedulable");
                self.events.warning(&*pod, "FailedScheduling", msg.clone());
                let reg = self.registry.clone();
                binds.spawn(async move {
                    let mut new = (*pod).clone();
                    set_condition(
                        &mut new.status.conditions,
                        Condition {
                            type_: "PodScheduled".into(),
                            status: "False".into(),
                            reason: "Unschedulable".into(),
                            message: msg,
                            ..Default::default()
                        },
                        &now_rfc3339(),
                    );
                    if new.status.phase.is_empty() {
                        new.status.phase = "Pending".into();
                    }
                    if let Err(e) = write::replace(&reg, &*pod, &new).await {
                        tracing::debug!(error = %e, "unschedulable condition not written");
                    }
                    Done::Status
                });
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        let Done::Bind { key, node, result } = d else {
            return;
        };
        self.in_flight.remove(&key);
        if let Err(e) = result {
            if self.cache.placed.get(&key).is_some_and(|p| p.node == node) {
                self.cache.unplace(&key);
            }
            if !e.is_not_found() {
                // The pod moved (or the store hiccuped): look at it again.
                self.enqueue(key);
            }
        }
    }
}

/// Binds `pod` to `node`: sets spec.nodeName and PodScheduled=True in one
/// write, conditional on the revision the scheduler read.
pub async fn bind(reg: &Registry, pod: &Pod, node: &str) -> Result<(), ApiError> {
    let mut new = pod.clone();
    new.spec.node_name = node.to_string();
    set_condition(
        &mut new.status.conditions,
        Condition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            ..Default::default()
        },
        &now_rfc3339(),
    );
    if new.status.phase.is_empty() {
        new.status.phase = "Pending".into();
    }
    // Binding is not a change of the desired spec: keep the generation.
    write::replace_keep_generation(reg, pod, &new)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::filter::tests::{node, pod};
    use super::*;

    #[test]
    fn nodes_to_find_shrinks_with_the_cluster() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(20_000), 1000);
        assert_eq!(nodes_to_find(150), 100);
    }

    #[test]
    fn accounting_spreads_six_replicas_two_per_zone() {
        let mut c = Cache::default();
        c.set_nodes(
            [("a", "z1"), ("b", "z2"), ("c", "z3")]
                .iter()
                .map(|(n, z)| NodeInfo::from_node(&node(n, z, "4", "8Gi"))),
        );
        let mut per_zone: HashMap<String, u32> = HashMap::new();
        for i in 0..6 {
            let mut p = pod("100m", "64Mi");
            p.metadata.name = format!("p{i}");
            p.metadata.labels.insert("app".into(), "web".into());
            let n = c.choose(&p, i * 31).unwrap();
            c.place(key_of(&p), &n, filter::requests(&p), score::workload(&p));
            *per_zone.entry(n).or_default() += 1;
        }
        assert_eq!(
            per_zone.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
        // Unplacing gives the room back.
        for i in 0..6 {
            assert!(c.unplace(&("default".into(), format!("p{i}"))));
        }
        assert!(c.used.values().all(|u| *u == Resources::default()));
        assert!(c.spread.is_empty());
    }

    #[test]
    fn full_nodes_explain_why() {
        let mut c = Cache::default();
        c.set_nodes(
            [("a", "z1"), ("b", "z2")]
                .iter()
                .map(|(n, z)| NodeInfo::from_node(&node(n, z, "1", "8Gi"))),
        );
        let big = pod("2", "64Mi");
        let unfit = c.choose(&big, 0).unwrap_err();
        assert_eq!(
            filter::unschedulable_message(2, &unfit),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
    }
}
