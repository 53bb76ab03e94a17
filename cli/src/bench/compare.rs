//! `keel bench kv --against-etcd`: Keel against etcd in one run. Starts a
//! 3-member Keel cluster (this binary, plain text) and runs the standard
//! workloads, then does the same with a 3-member etcd cluster (the `etcd`
//! binary, plain text, its defaults), one cluster at a time on the same
//! cores; with `--rounds`, etcd goes first in every even round, and each
//! side starts after a `sync`. For every workload it prints ops/s and
//! latency for both, the ratio, and the CPU seconds the members used per
//! 10,000 operations (read from /proc); for Keel also each member's
//! per-stage breakdown of the write path (`keel_store::stages`, fetched
//! over the peer port).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_chaos::{Flavor, ProcessCluster};
use keel_proto::etcdserverpb::StatusRequest;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::keelraft::RaftPayload;
use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use keel_proto::pki::Credentials;
use keel_store::stages::StageFigure;

use super::kv::{Op, Outcome, Workload, drive};
use crate::client::connect;

/// Which members a row's clients talk to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// All members, round-robin.
    All,
    /// The leader only.
    Leader,
    /// One follower only (the first in member order).
    Follower,
}

/// The rows of the comparison: (label, op, clients, serializable, place).
/// A single client is measured on the leader and on a follower separately:
/// which member leads differs from run to run (etcd's election is random),
/// and a write sent to a follower pays the forward to the leader on both
/// stores, so one client on "the first endpoint" compared a leader with a
/// follower about half the time.
const ROWS: [(&str, Op, usize, bool, Place); 6] = [
    (
        "put, 1 client on the leader",
        Op::Put,
        1,
        false,
        Place::Leader,
    ),
    (
        "put, 1 client on a follower",
        Op::Put,
        1,
        false,
        Place::Follower,
    ),
    ("put, 64 clients", Op::Put, 64, false, Place::All),
    ("put, 256 clients", Op::Put, 256, false, Place::All),
    (
        "linearizable get, 64 clients",
        Op::Get,
        64,
        false,
        Place::All,
    ),
    (
        "serializable get, 64 clients",
        Op::Get,
        64,
        true,
        Place::All,
    ),
];

/// What one cluster measured for one row.
struct Row {
    outcome: Outcome,
    /// CPU seconds of all members during the row.
    cpu: f64,
}

/// What one cluster measured.
struct Side {
    rows: Vec<Row>,
    /// CPU of all members when idle, in % of one core.
    idle_pct: f64,
    /// Per-member stage breakdowns (Keel only): (row label, member, leader?, figures).
    stages: Vec<(String, String, bool, Vec<StageFigure>)>,
}

pub async fn run(
    base: Workload,
    dir: Option<PathBuf>,
    etcd: PathBuf,
    keel_args: Vec<String>,
    rounds: u32,
) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("keel-bench-kv-{}", std::process::id()));
    let dir = dir.unwrap_or_else(|| tmp.clone());
    let _ = std::fs::remove_dir_all(&dir);
    let mut keel_extra = vec!["--insecure".to_string()];
    keel_extra.extend(keel_args);
    let exe = std::env::current_exe()?;
    let mut all = Vec::new();
    for round in 1..=rounds {
        let at = dir.join(format!("round-{round}"));
        // Keel first in odd rounds, etcd first in even ones: whatever the
        // machine does to the first cluster of a round (the first round ran
        // slowest for Keel, which always went first, in two runs out of
        // three), it does to each store in turn.
        let keel_first = round % 2 == 1;
        let (keel, etcd) = if keel_first {
            let keel = side(Flavor::Keel, &exe, &at.join("keel"), &keel_extra, base).await?;
            let etcd = side(Flavor::Etcd, &etcd, &at.join("etcd"), &[], base).await?;
            (keel, etcd)
        } else {
            let etcd = side(Flavor::Etcd, &etcd, &at.join("etcd"), &[], base).await?;
            let keel = side(Flavor::Keel, &exe, &at.join("keel"), &keel_extra, base).await?;
            (keel, etcd)
        };
        if rounds > 1 {
            let first = if keel_first { "Keel" } else { "etcd" };
            println!("## Round {round} of {rounds} ({first} first)");
            println!();
        }
        print_report(base, &keel_extra, &keel, &etcd);
        println!();
        let _ = std::fs::remove_dir_all(&at);
        all.push((keel, etcd));
    }
    if rounds > 1 {
        print_summary(&all);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Keel's throughput over etcd's for one row.
fn ratio(keel: &Outcome, etcd: &Outcome) -> f64 {
    keel.ops_per_sec() / etcd.ops_per_sec().max(1e-9)
}

/// The median of `xs` (the mean of the middle two for an even count).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Every round's Keel/etcd throughput ratio and single-client p50s, and the
/// median ratio of each row.
fn print_summary(all: &[(Side, Side)]) {
    println!("## Summary of {} rounds", all.len());
    println!();
    println!(
        "| workload | Keel/etcd ops/s, each round | median | Keel / etcd p50 ms, each round |"
    );
    println!("|---|---|---|---|");
    for (i, (label, ..)) in ROWS.iter().enumerate() {
        let mut ratios: Vec<f64> = all
            .iter()
            .map(|(k, e)| ratio(&k.rows[i].outcome, &e.rows[i].outcome))
            .collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        let p50s: Vec<String> = all
            .iter()
            .map(|(k, e)| {
                format!(
                    "{:.2} / {:.2}",
                    k.rows[i].outcome.ms(0.5),
                    e.rows[i].outcome.ms(0.5)
                )
            })
            .collect();
        let median = median(&mut ratios);
        println!(
            "| {label} | {} | {median:.2}x | {} |",
            each.join(", "),
            p50s.join(", ")
        );
    }
}

/// Runs every row against a fresh 3-member cluster of `flavor`. Keel runs
/// plain text (`--insecure` in `extra`), as etcd does by default, so the two
/// compare like for like (Keel's TLS cost is measured in BENCHMARKS.md).
async fn side(
    flavor: Flavor,
    bin: &Path,
    dir: &Path,
    extra: &[String],
    base: Workload,
) -> anyhow::Result<Side> {
    // Writes still in the page cache from whatever ran before (a build,
    // the other store's round) go to disk now, not during this side's
    // rows, where they would slow its fsyncs.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut cluster = ProcessCluster::plan(flavor, bin, dir, 3, None, extra)?;
    cluster.spawn_all()?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let eps = cluster.endpoints();
    let creds = cluster.credentials().clone();
    let pids: Vec<u32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
    // Warm up (connections, first snapshot-free writes), then idle CPU.
    drive(
        &creds,
        &eps,
        Workload {
            seconds: 2,
            clients: 8,
            conns: 8,
            op: Op::Put,
            ..base
        },
    )
    .await?;
    let before = cpu_seconds(&pids);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_pct = (cpu_seconds(&pids) - before) / t.elapsed().as_secs_f64() * 100.0;

    let mut rows = Vec::new();
    let mut stages = Vec::new();
    for (label, op, clients, serializable, place) in ROWS {
        if flavor == Flavor::Keel {
            member_stages(&cluster, true).await;
        }
        let w = Workload {
            op,
            clients,
            conns: clients.min(64),
            serializable,
            ..base
        };
        let targets = placed(&creds, &eps, place).await?;
        let before = cpu_seconds(&pids);
        let outcome = drive(&creds, &targets, w).await?;
        let cpu = cpu_seconds(&pids) - before;
        eprintln!(
            "{:?} {label}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {:.2} CPU s",
            flavor,
            outcome.ops_per_sec(),
            outcome.ms(0.5),
            outcome.ms(0.99),
            cpu
        );
        if flavor == Flavor::Keel && op == Op::Put {
            for (name, leader, figs) in member_stages(&cluster, false).await {
                stages.push((label.to_string(), name, leader, figs));
            }
        }
        rows.push(Row { outcome, cpu });
    }
    cluster.stop_all();
    Ok(Side {
        rows,
        idle_pct,
        stages,
    })
}

/// The endpoints a row with `place` talks to, the leader found by asking
/// every member for its status (etcd's `Maintenance.Status`, which both
/// stores serve) and taking the one whose own id is the leader's.
async fn placed(creds: &Credentials, eps: &[String], place: Place) -> anyhow::Result<Vec<String>> {
    if place == Place::All {
        return Ok(eps.to_vec());
    }
    let mut leaders = Vec::new();
    for ep in eps {
        let ch = connect(creds, ep).await?;
        let s = MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .map_err(|e| anyhow::anyhow!("status of {ep}: {}", e.message()))?
            .into_inner();
        let own = s.header.map(|h| h.member_id).unwrap_or_default();
        leaders.push(s.leader != 0 && s.leader == own);
    }
    let pick = eps
        .iter()
        .zip(&leaders)
        .find(|(_, lead)| **lead == (place == Place::Leader))
        .map(|(ep, _)| ep.clone());
    pick.map(|ep| vec![ep])
        .ok_or_else(|| anyhow::anyhow!("no member is the {place:?} (status: {leaders:?})"))
}

/// Every member's stage figures (name, leader?, figures); `reset` clears them.
async fn member_stages(
    cluster: &ProcessCluster,
    reset: bool,
) -> Vec<(String, bool, Vec<StageFigure>)> {
    let mut out = Vec::new();
    for m in &cluster.members {
        let Ok(ch) = keel_store::raft::network::channel(&m.peer_addr(), None) else {
            continue;
        };
        let mut c = RaftServiceClient::new(ch);
        let req = RaftPayload {
            data: keel_store::raft::codec::encode(&reset),
        };
        if let Ok(r) = c.stages(req).await
            && let Ok((leader, figs)) =
                keel_store::raft::codec::decode::<(bool, Vec<StageFigure>)>(&r.into_inner().data)
        {
            out.push((m.name.clone(), leader, figs));
        }
    }
    out
}

/// User plus system CPU seconds of the processes `pids` so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces): state is
            // field 3, utime field 14, stime field 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

fn print_report(base: Workload, keel_args: &[String], keel: &Side, etcd: &Side) {
    println!(
        "bench kv --against-etcd: 3 Keel members vs 3 etcd members, plain text, {} s per row, {} B values, {} keys; Keel args: {}",
        base.seconds,
        base.value_size,
        base.keys,
        keel_args.join(" ")
    );
    println!();
    println!(
        "| workload | Keel ops/s | Keel p50 ms | Keel p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms | Keel/etcd ops/s | errors (Keel/etcd) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (label, ..)) in ROWS.iter().enumerate() {
        let (k, e) = (&keel.rows[i].outcome, &etcd.rows[i].outcome);
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2}x | {}/{} |",
            k.ops_per_sec(),
            k.ms(0.5),
            k.ms(0.99),
            e.ops_per_sec(),
            e.ms(0.5),
            e.ms(0.99),
            ratio(k, e),
            k.errors,
            e.errors
        );
    }
    println!();
    println!("| CPU seconds per 10,000 operations, all 3 members | Keel | etcd | Keel/etcd |");
    println!("|---|---|---|---|");
    for (i, (label, ..)) in ROWS.iter().enumerate() {
        let per = |r: &Row| r.cpu / (r.outcome.hist.len().max(1) as f64) * 10_000.0;
        let (k, e) = (per(&keel.rows[i]), per(&etcd.rows[i]));
        println!("| {label} | {k:.2} | {e:.2} | {:.2}x |", k / e.max(1e-9));
    }
    println!(
        "| idle, % of one core | {:.1} % | {:.1} % | |",
        keel.idle_pct, etcd.idle_pct
    );
    println!();
    println!(
        "Keel per-stage breakdown of the write path (mean / max per run; items = entries per run):"
    );
    println!();
    println!("| workload | member | stage | runs | mean ms | max ms | items/run |");
    println!("|---|---|---|---|---|---|---|");
    for (label, member, leader, figs) in &keel.stages {
        let who = format!("{member}{}", if *leader { " (leader)" } else { "" });
        for f in figs {
            println!(
                "| {label} | {who} | {} | {} | {:.3} | {:.2} | {:.1} |",
                f.stage,
                f.count,
                f.mean_us / 1000.0,
                f.max_us / 1000.0,
                f.items_per_run
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(super::median(&mut [1.4, 1.1, 1.2]), 1.2);
        assert_eq!(super::median(&mut [1.5, 1.1, 1.3, 1.2]), 1.25);
    }
}
