//! `keel bench kv`: N clients, each in a loop of put (or get) of random keys
//! with fixed-size values, for a fixed time; prints ops/s and latency
//! percentiles from an HDR histogram.

use keel_proto::pki::Credentials;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
use rand::Rng;

use crate::client::{connect, parse_endpoints};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Op {
    Put,
    Get,
}

#[derive(Args, Debug)]
pub struct KvArgs {
    /// Client endpoints; clients are spread over them round-robin.
    #[arg(long, env = "KEEL_ENDPOINTS", required_unless_present = "against_etcd")]
    endpoints: Option<String>,
    /// Start a 3-member Keel cluster and a 3-member etcd cluster (plain
    /// text, one after the other) and run the standard workloads against
    /// both: throughput, latency, CPU per 10,000 puts and Keel's per-stage
    /// breakdown, with the ratios. The other workload flags are ignored
    /// except --seconds.
    #[arg(long, env = "KEEL_BENCH_AGAINST_ETCD", conflicts_with = "endpoints")]
    pub against_etcd: bool,
    /// With --against-etcd: the etcd binary.
    #[arg(long, env = "KEEL_BENCH_ETCD", default_value = "etcd")]
    etcd: std::path::PathBuf,
    /// With --against-etcd: an extra argument for every Keel master
    /// (repeatable), e.g. --keel-arg=--sequential-log-append.
    #[arg(
        long = "keel-arg",
        env = "KEEL_BENCH_KEEL_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    keel_args: Vec<String>,
    /// With --against-etcd: scratch directory (default: a temp dir).
    #[arg(long, env = "KEEL_BENCH_DIR")]
    dir: Option<std::path::PathBuf>,
    /// With --against-etcd: rounds of Keel then etcd, each on fresh
    /// clusters; with more than one, a summary of every round's ratios and
    /// their median follows (this machine's speed moves between runs).
    #[arg(long, env = "KEEL_BENCH_ROUNDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Concurrent clients (each with one request in flight).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections shared by the clients (default: one per client, at most 64).
    #[arg(long)]
    conns: Option<usize>,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, value_enum, default_value_t = Op::Put)]
    op: Op,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Serve gets locally on the member (etcd's serializable reads).
    #[arg(long)]
    serializable: bool,
    /// A label printed with the results (e.g. "keel" or "etcd").
    #[arg(long, default_value = "")]
    label: String,
}

struct ClientResult {
    hist: Histogram<u64>,
    errors: u64,
}

/// One workload: what every client does, how many, for how long.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub op: Op,
    pub clients: usize,
    pub conns: usize,
    pub seconds: u64,
    pub value_size: usize,
    pub keys: u64,
    pub serializable: bool,
}

/// What a workload measured.
pub struct Outcome {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn ops_per_sec(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `w` against `eps` (clients spread over `w.conns` connections,
/// round-robin over the endpoints) and returns its histogram.
pub async fn drive(creds: &Credentials, eps: &[String], w: Workload) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!eps.is_empty(), "no endpoints");
    anyhow::ensure!(w.clients > 0, "--clients must be positive");
    let conns = w.conns.clamp(1, w.clients);
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        channels.push(connect(creds, &eps[i % eps.len()]).await?);
    }
    if w.op == Op::Get {
        // Make sure the keys exist so gets return data.
        let mut c = KvClient::new(channels[0].clone());
        for k in 0..w.keys.min(1000) {
            c.put(PutRequest {
                key: key(k),
                value: vec![b'x'; w.value_size],
                ..Default::default()
            })
            .await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(w.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(w.clients);
    for i in 0..w.clients {
        let mut client = KvClient::new(channels[i % conns].clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut errors = 0;
            let value = vec![b'v'; w.value_size];
            while Instant::now() < deadline {
                let k = key(rand::rng().random_range(0..w.keys.max(1)));
                let t = Instant::now();
                let ok = match w.op {
                    Op::Put => client
                        .put(PutRequest {
                            key: k,
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Op::Get => client
                        .range(RangeRequest {
                            key: k,
                            serializable: w.serializable,
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
            }
            ClientResult { hist, errors }
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist)?;
        errors += r.errors;
    }
    Ok(Outcome {
        hist,
        errors,
        elapsed: started.elapsed(),
    })
}

pub async fn run(a: KvArgs, creds: &Credentials) -> anyhow::Result<()> {
    let w = Workload {
        op: a.op,
        clients: a.clients,
        conns: a.conns.unwrap_or(a.clients.min(64)),
        seconds: a.seconds,
        value_size: a.value_size,
        keys: a.keys,
        serializable: a.serializable,
    };
    if a.against_etcd {
        return super::compare::run(w, a.dir, a.etcd, a.keel_args, a.rounds).await;
    }
    let Some(endpoints) = &a.endpoints else {
        anyhow::bail!("give --endpoints, or --against-etcd to start both clusters");
    };
    let o = drive(creds, &parse_endpoints(endpoints), w).await?;
    println!(
        "bench kv {}op={:?} clients={} conns={} value={}B keys={} seconds={}",
        if a.label.is_empty() {
            String::new()
        } else {
            format!("[{}] ", a.label)
        },
        a.op,
        a.clients,
        w.conns.clamp(1, a.clients),
        a.value_size,
        a.keys,
        a.seconds
    );
    println!(
        "| ops | ops/s | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|\n| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        o.hist.len(),
        o.ops_per_sec(),
        o.ms(0.50),
        o.ms(0.99),
        o.hist.max() as f64 / 1000.0,
        o.errors
    );
    Ok(())
}

fn key(k: u64) -> Vec<u8> {
    format!("bench/{k:08}").into_bytes()
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[arg(long, env = "KEEL_ENDPOINTS")]
    endpoints: String,
    /// Distinct keys to write, each exactly once.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Key prefix.
    #[arg(long, default_value = "/registry/configmaps/bench/")]
    prefix: String,
}

/// Writes `keys` distinct keys with `clients` concurrent writers.
pub async fn load(a: LoadArgs, creds: &Credentials) -> anyhow::Result<()> {
    let eps = parse_endpoints(&a.endpoints);
    anyhow::ensure!(
        !eps.is_empty() && a.clients > 0,
        "need endpoints and clients"
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let ch = connect(creds, &eps[c as usize % eps.len()]).await?;
        let (keys, clients, size, prefix) = (a.keys, a.clients, a.value_size, a.prefix.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::new(ch);
            let value = vec![b'v'; size];
            let mut k = c;
            while k < keys {
                kv.put(PutRequest {
                    key: format!("{prefix}{k:08}").into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await?;
                k += clients;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {} keys of {} B in {:.1} s ({:.0} puts/s)",
        a.keys,
        a.value_size,
        secs,
        a.keys as f64 / secs
    );
    Ok(())
}
