//! `keel bench ...`: benchmarks that print figures. The store benchmarks
//! drive any etcd v3 endpoint set, so Keel and a real etcd get exactly the
//! same workload; `apply` measures the state machine's apply alone;
//! `schedule` drives the REST API.

mod apply;
mod compare;
mod failover;
mod kv;
mod pods;
mod schedule;

use clap::Subcommand;
use keel_proto::pki::Credentials;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Put or get throughput and latency against etcd-v3 endpoints (Keel or
    /// etcd), or `--against-etcd`: Keel and etcd clusters it starts, compared.
    Kv(kv::KvArgs),
    /// CPU and bytes written per put of the state machine's apply alone
    /// (no Raft, no network), on a key space in a scratch directory.
    Apply(apply::ApplyArgs),
    /// Write unavailability after SIGKILL of the leader, on a cluster it starts.
    Failover(failover::FailoverArgs),
    /// Write N distinct keys once each (to prepare data for backup benchmarks).
    Load(kv::LoadArgs),
    /// Pods bound per second and create-to-bound latency over simulated nodes.
    Schedule(schedule::ScheduleArgs),
    /// Create-to-Running latency of pods run by real agents (3 masters, 2 agents).
    Pods(pods::PodsArgs),
}

impl BenchCmd {
    /// Whether the benchmark drives an existing cluster (so it dials with
    /// the client config) rather than one it starts.
    pub fn dials_a_running_cluster(&self) -> bool {
        match self {
            BenchCmd::Kv(a) => !a.against_etcd,
            BenchCmd::Load(_) => true,
            BenchCmd::Schedule(a) => a.server.is_some(),
            BenchCmd::Apply(_) | BenchCmd::Failover(_) | BenchCmd::Pods(_) => false,
        }
    }
}

/// Runs a benchmark; `creds` dial a running cluster (those that start
/// their own use that cluster's).
pub async fn run(cmd: BenchCmd, creds: &Credentials) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Kv(a) => kv::run(a, creds).await,
        BenchCmd::Apply(a) => tokio::task::spawn_blocking(move || apply::run(a)).await?,
        BenchCmd::Failover(a) => failover::run(a).await,
        BenchCmd::Load(a) => kv::load(a, creds).await,
        BenchCmd::Schedule(a) => schedule::run(a, creds).await,
        BenchCmd::Pods(a) => pods::run(a).await,
    }
}
