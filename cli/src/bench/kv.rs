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
    #[arg(long, env = "KEEL_ENDPOINTS")]
    endpoints: String,
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

pub async fn run(a: KvArgs, creds: &Credentials) -> anyhow::Result<()> {
    let eps = parse_endpoints(&a.endpoints);
    anyhow::ensure!(!eps.is_empty(), "no endpoints");
    anyhow::ensure!(a.clients > 0, "--clients must be positive");
    let conns = a.conns.unwrap_or(a.clients.min(64)).clamp(1, a.clients);
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        channels.push(connect(creds, &eps[i % eps.len()]).await?);
    }
    if a.op == Op::Get {
        // Make sure the keys exist so gets return data.
        let mut c = KvClient::new(channels[0].clone());
        for k in 0..a.keys.min(1000) {
            c.put(PutRequest {
                key: key(k),
                value: vec![b'x'; a.value_size],
                ..Default::default()
            })
            .await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let mut client = KvClient::new(channels[i % conns].clone());
        let (op, value_size, keys, serializable) = (a.op, a.value_size, a.keys, a.serializable);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut errors = 0;
            let value = vec![b'v'; value_size];
            while Instant::now() < deadline {
                let k = key(rand::rng().random_range(0..keys.max(1)));
                let t = Instant::now();
                let ok = match op {
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
                            serializable,
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
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "bench kv {}op={:?} clients={} conns={} value={}B keys={} seconds={}",
        if a.label.is_empty() {
            String::new()
        } else {
            format!("[{}] ", a.label)
        },
        a.op,
        a.clients,
        conns,
        a.value_size,
        a.keys,
        a.seconds
    );
    println!(
        "| ops | ops/s | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|\n| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        hist.len(),
        hist.len() as f64 / elapsed,
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        errors
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
