//! Nemeses: the faults the harness injects into a running cluster, one at a
//! time, following the seed's schedule (`schedule`). Each kind lives in its
//! own module and knows how to inject itself, hold, and heal; this module
//! resolves targets (who leads now), runs the schedule, waits for the
//! cluster to recover after each fault, and records every fault window for
//! the report.

pub mod kill;
pub mod member_replace;
pub mod partition;
pub mod pause;
pub mod restart;
pub mod schedule;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{ClusterError, ProcessCluster, status_of};
use crate::proxy::Mesh;
use schedule::{Nemesis, Planned, Target};

/// Why a fault could not be injected or healed.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("no leader to target")]
    NoLeader,
    #[error("membership change failed: {0}")]
    Membership(String),
}

/// What a fault did, for the report (times in microseconds since the start).
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub nemesis: Nemesis,
    /// What the target resolved to (`m2 (leader)`, `{m1} | {m2,m3}`...).
    pub target: String,
    /// Members the fault touched: killed, paused, restarted, replaced, or on
    /// the minority side of a partition (none for bridge and ring shapes,
    /// where every member still sees a majority).
    pub affected: Vec<usize>,
    pub start: u64,
    /// When the fault was healed (the member is back, links restored).
    pub healed: u64,
    /// When every member agreed on a leader again, if they did.
    pub recovered: Option<u64>,
    /// An error, if the fault could not be carried out as planned.
    pub error: Option<String>,
}

/// What a nemesis needs: the cluster it owns while running, the proxies,
/// and the run's clock.
pub struct Ctx<'a> {
    pub cluster: &'a mut ProcessCluster,
    pub mesh: &'a Mesh,
    pub start: Instant,
}

impl Ctx<'_> {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn name(&self, i: usize) -> String {
        self.cluster.members[i].name.clone()
    }

    /// The member that the highest term's answers name leader, if any
    /// running member answers (members are asked concurrently).
    pub async fn current_leader(&self) -> Option<usize> {
        let asks = (0..self.cluster.members.len())
            .filter(|i| self.cluster.members[*i].is_running())
            .map(|i| {
                let ep = self.cluster.members[i].client_addr();
                let creds = self.cluster.credentials();
                async move { status_of(creds, &ep).await.map(|s| (i, s)) }
            });
        let answers: Vec<(usize, (u64, u64, u64))> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        let (_, (_, leader, _)) = answers
            .iter()
            .filter(|(_, (_, l, _))| *l != 0)
            .max_by_key(|(_, (_, _, term))| *term)?;
        answers
            .iter()
            .find(|(_, (id, _, _))| id == leader)
            .map(|(i, _)| *i)
    }

    /// Resolves a member target (`Leader` or `Member`) to an index.
    pub async fn member(&self, t: &Target) -> Result<usize, NemesisError> {
        match t {
            Target::Member { index } => Ok(*index % self.cluster.members.len()),
            _ => self.current_leader().await.ok_or(NemesisError::NoLeader),
        }
    }

    /// `m2`, or `m2 (leader)` if it leads.
    pub async fn describe(&self, i: usize) -> String {
        if self.current_leader().await == Some(i) {
            format!("{} (leader)", self.name(i))
        } else {
            self.name(i)
        }
    }

    /// Waits up to `max` until every running member agrees on a leader.
    pub async fn wait_recovered(&self, max: Duration) -> Option<u64> {
        let deadline = Instant::now() + max;
        loop {
            if self.cluster.leader().await.is_some() {
                return Some(self.now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a nemesis reports: its target described, and the members it touched.
pub type Injected = Result<(String, Vec<usize>), NemesisError>;

/// Sleeps while a fault holds (this is the fault's length, not a wait for
/// readiness).
pub async fn hold(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Runs one planned fault: inject, hold, heal, wait for recovery.
pub async fn run_one(ctx: &mut Ctx<'_>, p: &Planned) -> FaultRecord {
    let start = ctx.now();
    let r = match p.nemesis {
        Nemesis::Kill | Nemesis::LeaderKill => kill::run(ctx, p).await,
        Nemesis::Pause => pause::run(ctx, p).await,
        Nemesis::Restart => restart::run(ctx, p).await,
        Nemesis::MemberReplace => member_replace::run(ctx, p).await,
        Nemesis::Partition
        | Nemesis::PartitionLeader
        | Nemesis::PartitionMajority
        | Nemesis::PartitionBridge
        | Nemesis::PartitionRing => partition::run(ctx, p).await,
    };
    // Whatever happened, leave nothing broken behind.
    heal_all(ctx);
    let healed = ctx.now();
    let recovered = ctx.wait_recovered(Duration::from_secs(30)).await;
    let (target, affected, error) = match r {
        Ok((t, a)) => (t, a, None),
        Err(e) => (String::new(), Vec::new(), Some(e.to_string())),
    };
    tracing::info!(nemesis = p.nemesis.name(), %target, ?error, "fault healed");
    FaultRecord {
        nemesis: p.nemesis,
        target,
        affected,
        start,
        healed,
        recovered,
        error,
    }
}

/// Restores every link, resumes every member, starts any that is down.
pub fn heal_all(ctx: &mut Ctx<'_>) {
    ctx.mesh.heal();
    for i in 0..ctx.cluster.members.len() {
        ctx.cluster.resume(i);
    }
    if let Err(e) = ctx.cluster.spawn_all() {
        tracing::error!(error = %e, "restarting members while healing");
    }
}

/// Runs the whole schedule, waiting for each fault's planned start.
pub async fn run_schedule(ctx: &mut Ctx<'_>, plan: &[Planned]) -> Vec<FaultRecord> {
    let mut out = Vec::new();
    for p in plan {
        let at = ctx.start + Duration::from_millis(p.at_ms);
        tokio::time::sleep_until(at.into()).await;
        out.push(run_one(ctx, p).await);
    }
    out
}
