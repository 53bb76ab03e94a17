//! `keel bench apply`: the state machine's apply alone, no Raft and no
//! network: batches of puts applied to a key space in a scratch directory,
//! with this process's CPU and the bytes it wrote per put (the key space
//! flushed at the end of each round, as a member does at every snapshot). On a machine
//! whose cluster-level figures move by more than a few per cent from minute
//! to minute, this is how a change to the apply path shows what it saves.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use keel_proto::etcdserverpb::PutRequest;
use keel_proto::keelraft::{Command, command::Op};
use keel_store::mvcc::KvStore;
use keel_store::mvcc::apply::BatchMeta;

#[derive(Args)]
pub struct ApplyArgs {
    /// Batches applied per round.
    #[arg(long, env = "KEEL_BENCH_BATCHES", default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batches: u64,
    /// Puts per batch (53 is what one applied batch held at 256 clients).
    #[arg(long, env = "KEEL_BENCH_BATCH_SIZE", default_value_t = 53, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch_size: u64,
    /// Number of distinct keys, written in a fixed pseudo-random order.
    #[arg(long, env = "KEEL_BENCH_KEYS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, env = "KEEL_BENCH_VALUE_SIZE", default_value_t = 256)]
    value_size: usize,
    /// Rounds, each on a fresh key space; every round prints a line.
    #[arg(long, env = "KEEL_BENCH_ROUNDS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Scratch directory (default: a temp dir).
    #[arg(long, env = "KEEL_BENCH_DIR")]
    dir: Option<std::path::PathBuf>,
}

/// CPU seconds (user + system) of this process, all threads (sled's IO
/// threads included).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Bytes this process has handed to write calls (`wchar` of /proc/self/io).
fn bytes_written() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io").context("read /proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .context("no wchar in /proc/self/io")
}

/// One round: a fresh key space under `dir`, `batches` batches of puts.
fn round(a: &ApplyArgs, dir: &std::path::Path) -> anyhow::Result<(u64, f64, f64, u64)> {
    let kv = KvStore::open(dir).context("open the key space")?;
    // xorshift: the same key order in every round and build.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_key = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        format!("bench-{:08}", x % a.keys).into_bytes()
    };
    let value = vec![b'v'; a.value_size];
    let (cpu0, bytes0, t0) = (cpu_seconds(), bytes_written()?, Instant::now());
    for b in 0..a.batches {
        let cmds: Vec<Command> = (0..a.batch_size)
            .map(|_| Command {
                op: Some(Op::Put(PutRequest {
                    key: next_key(),
                    value: value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let refs: Vec<Option<&Command>> = cmds.iter().map(Some).collect();
        let meta = BatchMeta {
            applied: format!(r#"{{"leader_id":{{"term":1,"node_id":1}},"index":{b}}}"#)
                .into_bytes(),
            membership: None,
            cluster_id: None,
        };
        kv.apply_batch(&refs, meta).context("apply a batch")?;
    }
    // What sled still buffers counts too: a member flushes it (with an
    // fsync) at every snapshot. (This runs on a blocking thread.)
    tokio::runtime::Handle::current()
        .block_on(kv.flush())
        .context("flush the key space")?;
    let puts = a.batches * a.batch_size;
    Ok((
        puts,
        t0.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
        bytes_written()? - bytes0,
    ))
}

pub fn run(a: ApplyArgs) -> anyhow::Result<()> {
    let base = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("keel-bench-apply-{}", std::process::id()))
    });
    println!(
        "bench apply batches={} batch_size={} keys={} value={}B",
        a.batches, a.batch_size, a.keys, a.value_size
    );
    println!("| round | puts | puts/s | CPU µs per put | bytes written per put |");
    println!("|---|---|---|---|---|");
    for r in 1..=a.rounds {
        let dir = base.join(format!("round-{r}"));
        let (puts, secs, cpu, bytes) = round(&a, &dir)?;
        println!(
            "| {r} | {puts} | {:.0} | {:.2} | {:.0} |",
            puts as f64 / secs,
            cpu * 1e6 / puts as f64,
            bytes as f64 / puts as f64
        );
        std::fs::remove_dir_all(&dir).ok();
    }
    if a.dir.is_none() {
        std::fs::remove_dir_all(&base).ok();
    }
    Ok(())
}
