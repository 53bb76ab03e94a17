//! What a rollout decision reads and what it decides. A [`View`] is the
//! Deployment with the ReplicaSets it owns (oldest revision first, the one
//! for its current template singled out) and their pods counted; a
//! [`Plan`] is the size every one of them should have, computed by the
//! strategy in force (`strategy/`), from which `reconcile` emits each
//! action once.
//!
//! The counts are conservative, since two caches may lag: a ReplicaSet's
//! size is the larger of its spec and its live pods (so pods not yet
//! deleted after a scale-down still count against the surge), and its
//! availability the smaller of its spec and its available pods (so pods
//! about to be deleted never count as available).

use std::collections::HashMap;

use keel_proto::api::{Deployment, Pod, ReplicaSet};

use super::history::revision;
use super::strategy::surge_and_unavailable;
use super::template::{runs_template, template_hash};
use crate::controllers::{owner_of, pod_active, pod_available};

/// Per ReplicaSet (by uid): its live, ready and available pods.
#[derive(Debug, Default)]
pub struct PodCounts {
    live: HashMap<String, i64>,
    ready: HashMap<String, i64>,
    available: HashMap<String, i64>,
}

impl PodCounts {
    /// Counts `pods` by their controlling ReplicaSet at `now` (seconds).
    pub fn new(pods: &[&Pod], min_ready: i64, now: i64) -> PodCounts {
        let mut c = PodCounts::default();
        for p in pods.iter().filter(|p| pod_active(p)) {
            let Some(o) = owner_of(&p.metadata, "ReplicaSet") else {
                continue;
            };
            *c.live.entry(o.uid.clone()).or_default() += 1;
            if p.is_ready() {
                *c.ready.entry(o.uid.clone()).or_default() += 1;
            }
            if pod_available(p, min_ready, now) {
                *c.available.entry(o.uid.clone()).or_default() += 1;
            }
        }
        c
    }

    fn get(m: &HashMap<String, i64>, rs: &ReplicaSet) -> i64 {
        m.get(&rs.metadata.uid).copied().unwrap_or(0)
    }

    /// Live pods of `rs`.
    pub fn live(&self, rs: &ReplicaSet) -> i64 {
        Self::get(&self.live, rs)
    }

    /// Ready pods of `rs`.
    pub fn ready(&self, rs: &ReplicaSet) -> i64 {
        Self::get(&self.ready, rs)
    }

    /// Available pods of `rs`, whatever its spec.
    pub fn available_pods(&self, rs: &ReplicaSet) -> i64 {
        Self::get(&self.available, rs)
    }

    /// Pods counted against the surge: spec or live pods, whichever is more.
    pub fn size(&self, rs: &ReplicaSet) -> i64 {
        rs.replicas().max(self.live(rs))
    }

    /// Pods counted as available: available pods, at most the spec.
    pub fn available(&self, rs: &ReplicaSet) -> i64 {
        rs.replicas().min(self.available_pods(rs))
    }
}

/// The Deployment and what it owns, as a decision reads them.
pub struct View<'a> {
    pub d: &'a Deployment,
    /// The hash of the Deployment's current template.
    pub hash: String,
    /// Every owned ReplicaSet, by revision then name.
    pub owned: Vec<&'a ReplicaSet>,
    /// The name of the owned ReplicaSet that runs the current template.
    pub new_name: Option<String>,
    pub counts: PodCounts,
    /// The Deployment's replicas (never negative).
    pub replicas: i64,
    pub max_surge: i64,
    pub max_unavailable: i64,
}

impl<'a> View<'a> {
    /// The view of `d` owning `owned` (any order), over `pods` at `now`.
    pub fn new(
        d: &'a Deployment,
        mut owned: Vec<&'a ReplicaSet>,
        pods: &[&Pod],
        now: i64,
    ) -> View<'a> {
        owned.sort_by_key(|rs| (revision(rs), rs.metadata.name.clone()));
        let hash = template_hash(&d.spec.template);
        let new_name = owned
            .iter()
            .find(|rs| runs_template(rs, &hash))
            .map(|rs| rs.metadata.name.clone());
        let (max_surge, max_unavailable) = surge_and_unavailable(d);
        View {
            d,
            hash,
            owned,
            new_name,
            counts: PodCounts::new(pods, d.spec.min_ready_seconds, now),
            replicas: d.replicas().max(0),
            max_surge,
            max_unavailable,
        }
    }

    /// Whether `rs` is the ReplicaSet of the current template.
    pub fn is_new(&self, rs: &ReplicaSet) -> bool {
        self.new_name.as_deref() == Some(rs.metadata.name.as_str())
    }

    /// The ReplicaSet of the current template, if it exists.
    pub fn new_rs(&self) -> Option<&'a ReplicaSet> {
        self.owned.iter().copied().find(|rs| self.is_new(rs))
    }

    /// Every other owned ReplicaSet, oldest first.
    pub fn olds(&self) -> impl Iterator<Item = &'a ReplicaSet> + '_ {
        self.owned.iter().copied().filter(|rs| !self.is_new(rs))
    }
}

/// What becomes of the ReplicaSet for the current template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// There is none, and none is to be created yet.
    Absent,
    /// Create it with this many replicas.
    Create(i64),
    /// It exists and should have this many replicas.
    Scale(i64),
}

/// The decision of a strategy: the size of every ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub new_rs: Target,
    /// Every other owned ReplicaSet's size, by name, oldest first.
    pub old: Vec<(String, i64)>,
}

impl Plan {
    /// The size `plan` gives `rs` (its own spec if the plan does not say).
    pub fn target_of(&self, view: &View, rs: &ReplicaSet) -> i64 {
        if view.is_new(rs) {
            return match self.new_rs {
                Target::Scale(n) => n,
                Target::Absent | Target::Create(_) => rs.replicas(),
            };
        }
        self.old
            .iter()
            .find(|(name, _)| name == &rs.metadata.name)
            .map_or(rs.replicas(), |(_, n)| *n)
    }
}
