//! `keel chaos run`: the chaos harness as a command. Parses the flags (each
//! also from a `KEEL_*` variable), runs `keel_chaos::run` against a cluster
//! of this very binary's masters, prints where the report is, and fails
//! when any checker found a violation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use keel_chaos::nemesis::schedule::{Nemesis, parse_duration};
use keel_chaos::run::{RunConfig, Workload};

#[derive(Subcommand)]
pub enum ChaosCmd {
    /// Start a cluster, run a workload while injecting faults, check the
    /// history, write a report; exit non-zero on any violation.
    Run(RunArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Masters to start (3 or 5).
    #[arg(long, env = "KEEL_CHAOS_MASTERS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub masters: u8,
    /// How long the workload runs (`120s`, `10m`).
    #[arg(long, env = "KEEL_CHAOS_DURATION", default_value = "120s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Faults to inject: kill, leader-kill, pause, partition, restart,
    /// member-replace (and the partition shapes partition-leader,
    /// partition-majority, partition-bridge, partition-ring).
    #[arg(long, env = "KEEL_CHAOS_NEMESIS", default_value = "kill,leader-kill,pause,partition", value_delimiter = ',', value_parser = nemesis)]
    pub nemesis: Vec<Nemesis>,
    /// Workloads: register, kv, watch, deployments (comma-separated to run several).
    #[arg(long, env = "KEEL_CHAOS_WORKLOAD", default_value = "register", value_delimiter = ',', value_parser = Workload::parse)]
    pub workload: Vec<Workload>,
    /// Concurrent clients per workload.
    #[arg(long, env = "KEEL_CHAOS_CLIENTS", default_value_t = 8)]
    pub clients: u64,
    /// Seed of the fault schedule (same seed, same schedule).
    #[arg(long, env = "KEEL_CHAOS_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Report directory (history.json, summary.json, report.md, timeline.svg).
    #[arg(long, env = "KEEL_CHAOS_OUT", default_value = "chaos-report")]
    pub out: PathBuf,
    /// DEBUG: start the masters with --unsafe-local-reads (the run must fail).
    #[arg(long, env = "KEEL_CHAOS_UNSAFE_LOCAL_READS")]
    pub unsafe_local_reads: bool,
    /// Timeout of each client request; a write that times out is `unknown`.
    #[arg(long, env = "KEEL_CHAOS_OP_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// Register keys in use at a time.
    #[arg(long, env = "KEEL_CHAOS_KEYS", default_value_t = 4)]
    pub keys: u64,
    /// The register workload moves to fresh keys this often.
    #[arg(long, env = "KEEL_CHAOS_KEY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub key_period: Duration,
    /// Linearizability search steps per key before giving up on it.
    #[arg(long, env = "KEEL_CHAOS_BUDGET", default_value_t = 2_000_000)]
    pub budget: u64,
}

fn nemesis(s: &str) -> Result<Nemesis, String> {
    Nemesis::parse_list(s)?
        .pop()
        .ok_or_else(|| "empty nemesis name".to_string())
}

pub async fn run(cmd: ChaosCmd) -> anyhow::Result<()> {
    let ChaosCmd::Run(a) = cmd;
    let mut nemeses = a.nemesis.clone();
    nemeses.sort();
    nemeses.dedup();
    let cfg = RunConfig {
        bin: std::env::current_exe()?,
        masters: a.masters as usize,
        duration: a.duration,
        nemeses,
        workloads: a.workload.clone(),
        clients: a.clients,
        seed: a.seed,
        out: a.out.clone(),
        unsafe_local_reads: a.unsafe_local_reads,
        op_timeout: a.op_timeout,
        keys: a.keys,
        key_period: a.key_period,
        budget: a.budget,
    };
    let s = keel_chaos::run::run(&cfg).await?;
    let ops: u64 = s.ops.values().map(|c| c.total).sum();
    let faults: u64 = s.faults_by_kind.values().sum();
    println!(
        "{}: {ops} operations, {faults} faults, {} violations; report in {}",
        if s.passed { "PASSED" } else { "FAILED" },
        s.violations.len(),
        a.out.join("report.md").display()
    );
    for v in &s.violations {
        println!("  {}: {}", v.checker, v.message);
    }
    if !s.passed {
        anyhow::bail!("{} violations", s.violations.len());
    }
    Ok(())
}
