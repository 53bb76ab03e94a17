//! Where a write's time goes on one member: a counter per stage of the write
//! path (how many times it ran, total and worst time, items handled), kept
//! with relaxed atomics so the hot path pays a few nanoseconds. `keel bench
//! kv --against-etcd` reads every member's counters over the peer port
//! (`RaftService.Stages`) and prints the per-stage breakdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One stage of the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// A client's Put/Txn/DeleteRange on this member, receive to answer.
    Serve = 0,
    /// A follower sending a write to the leader and getting its answer.
    Forward,
    /// The leader's `client_write`: propose to the applied answer.
    Propose,
    /// One log append on this member: encode, one redb commit, its fsync.
    LogAppend,
    /// The fsync-ing commit alone (inside `LogAppend`).
    LogFsync,
    /// One AppendEntries round trip from the leader to a follower
    /// (network, the follower's log append and fsync).
    Replicate,
    /// Applying one batch of committed entries to the key space.
    Apply,
}

const NAMES: [&str; 7] = [
    "serve (client receive to answer)",
    "forward to leader (round trip)",
    "propose to applied (leader)",
    "log append incl. fsync",
    "log fsync (commit)",
    "replication round trip",
    "apply batch to key space",
];

#[derive(Default)]
struct Slot {
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
    items: AtomicU64,
}

/// The counters of one member; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Stages(Arc<[Slot; 7]>);

/// A finished reading of one stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageFigure {
    pub stage: String,
    pub count: u64,
    pub mean_us: f64,
    pub max_us: f64,
    /// Items per run (entries per append or apply batch), 0 when not counted.
    pub items_per_run: f64,
}

impl Stages {
    /// Records one run of `stage` that started at `since` and handled `items`.
    pub fn record(&self, stage: Stage, since: Instant, items: u64) {
        let ns = since.elapsed().as_nanos() as u64;
        let s = &self.0[stage as usize];
        s.count.fetch_add(1, Ordering::Relaxed);
        s.total_ns.fetch_add(ns, Ordering::Relaxed);
        s.max_ns.fetch_max(ns, Ordering::Relaxed);
        s.items.fetch_add(items, Ordering::Relaxed);
    }

    /// Every stage that ran, with its mean and worst time.
    pub fn figures(&self) -> Vec<StageFigure> {
        self.0
            .iter()
            .zip(NAMES)
            .filter_map(|(s, name)| {
                let count = s.count.load(Ordering::Relaxed);
                (count > 0).then(|| StageFigure {
                    stage: name.to_string(),
                    count,
                    mean_us: s.total_ns.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0,
                    max_us: s.max_ns.load(Ordering::Relaxed) as f64 / 1000.0,
                    items_per_run: s.items.load(Ordering::Relaxed) as f64 / count as f64,
                })
            })
            .collect()
    }

    /// Starts counting afresh (between benchmark rows).
    pub fn reset(&self) {
        for s in self.0.iter() {
            s.count.store(0, Ordering::Relaxed);
            s.total_ns.store(0, Ordering::Relaxed);
            s.max_ns.store(0, Ordering::Relaxed);
            s.items.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_report_runs_means_and_items_and_reset_clears_them() {
        let s = Stages::default();
        assert!(s.figures().is_empty());
        let t = Instant::now();
        s.record(Stage::Apply, t, 4);
        s.record(Stage::Apply, t, 2);
        let f = s.figures();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 2);
        assert_eq!(f[0].items_per_run, 3.0);
        assert!(f[0].max_us >= f[0].mean_us);
        s.reset();
        assert!(s.figures().is_empty());
    }
}
