//! `keel chaos run`: the chaos harness as a command. Parses the flags (each
//! also from a `KEEL_*` variable), runs `keel_chaos::run` against a cluster
//! of this very binary's masters, prints where the report is, and fails
//! when any checker found a violation. `keel chaos diff`: the differential
//! test against a real etcd (`keel_chaos::diff`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use keel_chaos::diff::generator::{Avoid, GenOptions};
use keel_chaos::nemesis::schedule::{Nemesis, parse_duration};
use keel_chaos::run::{RunConfig, Workload};

#[derive(Subcommand)]
pub enum ChaosCmd {
    /// Start a cluster, run a workload while injecting faults, check the
    /// history, write a report; exit non-zero on any violation.
    Run(RunArgs),
    /// Send the same seeded sequence of random etcd requests to a 3-member
    /// Keel and a 3-member etcd 3.4 and compare every answer; exit non-zero
    /// at the first difference, printing the request and a seed to replay it.
    Diff(DiffArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DiffArgs {
    /// Seed of the request sequence (same seed, same sequence).
    #[arg(long, env = "KEEL_DIFF_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Requests to generate (a watch counts once, with its writes).
    #[arg(long, env = "KEEL_DIFF_REQUESTS", default_value_t = 3000)]
    pub requests: u64,
    /// The etcd 3.4 binary (Debian's etcd-server).
    #[arg(long, env = "KEEL_DIFF_ETCD_BIN", default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Where both clusters keep data and logs (default: a new temporary
    /// directory, removed after a run without difference).
    #[arg(long, env = "KEEL_DIFF_DIR")]
    pub dir: Option<PathBuf>,
    /// Request shapes to leave out, to look past a known difference:
    /// reversed-in-writes (ranges whose end sorts before their key in Txns
    /// and deletes), serializable, put-ignore-value-with-lease,
    /// count-only-with-limit, nested-txn-writes, range-compare.
    #[arg(long, env = "KEEL_DIFF_AVOID", value_delimiter = ',', value_parser = Avoid::parse)]
    pub avoid: Vec<Avoid>,
    /// Timeout of each request.
    #[arg(long, env = "KEEL_DIFF_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `name` as given when it holds a `/`, else the first match on PATH.
fn find_binary(name: &std::path::Path) -> anyhow::Result<PathBuf> {
    if name.components().count() > 1 {
        anyhow::ensure!(name.is_file(), "{} does not exist", name.display());
        return Ok(name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not on PATH: install etcd 3.4 (Debian: apt-get install etcd-server) \
                 or pass --etcd-bin",
                name.display()
            )
        })
}

async fn diff(a: DiffArgs) -> anyhow::Result<()> {
    let etcd_bin = find_binary(&a.etcd_bin)?;
    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("keel-diff-{}-{}", std::process::id(), a.seed)),
            true,
        ),
    };
    let cfg = keel_chaos::diff::DiffConfig {
        keel_bin: std::env::current_exe()?,
        etcd_bin,
        dir: dir.clone(),
        seed: a.seed,
        steps: a.requests,
        options: GenOptions {
            avoid: a.avoid.iter().copied().collect(),
        },
        timeout: a.timeout,
    };
    println!(
        "differential test: seed {}, {} requests, Keel against etcd ({})",
        a.seed,
        a.requests,
        cfg.etcd_bin.display()
    );
    match keel_chaos::diff::run(&cfg).await {
        Ok(r) => {
            if temporary {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let kinds: Vec<String> = r
                .by_kind
                .iter()
                .map(|(k, (n, refused))| format!("{k} {n} ({refused} refused)"))
                .collect();
            println!(
                "PASSED: seed {}, {} requests ({} sent to each cluster), no difference; \
                 final revision {}, {:.1}s\n  {}",
                r.seed,
                r.steps,
                r.requests,
                r.revision,
                r.elapsed.as_secs_f64(),
                kinds.join(", ")
            );
            Ok(())
        }
        Err(e) => {
            println!("FAILED: {e}");
            println!("member logs in {}", dir.display());
            Err(anyhow::anyhow!("etcd and Keel differ (seed {})", a.seed))
        }
    }
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
    let a = match cmd {
        ChaosCmd::Run(a) => a,
        ChaosCmd::Diff(a) => return diff(a).await,
    };
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
