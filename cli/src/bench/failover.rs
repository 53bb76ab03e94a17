//! `keel bench failover`: starts a 3-member cluster (Keel, or etcd from the
//! `etcd` binary on PATH), keeps writers putting through every member, kills
//! the leader with SIGKILL several times, and prints for each kill the write
//! unavailability: the longest time without any acknowledged write around the
//! kill. (Not "kill to first ack": writes committed just before the kill are
//! still acknowledged right after it.)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_chaos::{Flavor, ProcessCluster};
use keel_proto::etcdserverpb::PutRequest;
use keel_proto::etcdserverpb::kv_client::KvClient;
use tokio::sync::Mutex;

use crate::client::connect;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Target {
    Keel,
    Etcd,
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    #[arg(long, value_enum, default_value_t = Target::Keel)]
    target: Target,
    /// Members in the cluster.
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(a: FailoverArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("keel-failover-{}", std::process::id()));
    let dir = a.dir.clone().unwrap_or(tmp.clone());
    let _ = std::fs::remove_dir_all(&dir);
    let (flavor, bin) = match a.target {
        Target::Keel => (Flavor::Keel, std::env::current_exe()?),
        Target::Etcd => (Flavor::Etcd, PathBuf::from("etcd")),
    };
    let mut cluster = ProcessCluster::start(flavor, &bin, &dir, a.masters, None, &[])?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let eps = cluster.endpoints();
    let creds = cluster.credentials().clone();

    // Time of the last acknowledged write; writers retry on every member.
    let last_ack = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..a.writers {
        let (eps, acks, stop) = (eps.clone(), last_ack.clone(), stop.clone());
        let creds = creds.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut ep = w;
            while !stop.load(Ordering::Relaxed) {
                let target = &eps[ep % eps.len()];
                let ok = match connect(&creds, target).await {
                    Ok(ch) => {
                        let mut c = KvClient::new(ch);
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                break true;
                            }
                            let mut req = tonic::Request::new(PutRequest {
                                key: format!("failover/{w}").into_bytes(),
                                value: n.to_be_bytes().to_vec(),
                                ..Default::default()
                            });
                            req.set_timeout(Duration::from_millis(500));
                            n += 1;
                            match c.put(req).await {
                                Ok(_) => acks.lock().await.push(Instant::now()),
                                Err(_) => break false,
                            }
                        }
                    }
                    Err(_) => false,
                };
                if !ok {
                    ep += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }

    let mut gaps = Vec::new();
    for k in 0..a.kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = cluster.wait_ready(Duration::from_secs(30)).await?;
        let killed_at = Instant::now();
        cluster.kill(leader);
        // Wait until writes flow again (many acks after the kill), then take
        // the longest silence between acknowledged writes around the kill.
        let deadline = killed_at + Duration::from_secs(30);
        let gap = loop {
            if let Some(g) = longest_gap(&last_ack, killed_at).await {
                break g;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "writes did not resume 30 s after the kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!(
            "kill {}: leader {} SIGKILLed, no write acknowledged for {:.0} ms",
            k + 1,
            cluster.members[leader].name,
            gap.as_secs_f64() * 1000.0
        );
        gaps.push(gap);
        cluster.restart(leader)?;
        cluster.wait_ready(Duration::from_secs(30)).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let ms: Vec<f64> = gaps.iter().map(|g| g.as_secs_f64() * 1000.0).collect();
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    let max = ms.iter().cloned().fold(0.0, f64::max);
    let min = ms.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "bench failover [{:?}] masters={} kills={} writers={}\n| min ms | mean ms | max ms |\n|---|---|---|\n| {:.0} | {:.0} | {:.0} |",
        a.target, a.masters, a.kills, a.writers, min, mean, max
    );
    drop(cluster);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Once at least 100 writes were acknowledged after `killed_at`: the longest
/// gap between consecutive acknowledgements from 1 s before the kill on.
async fn longest_gap(acks: &Mutex<Vec<Instant>>, killed_at: Instant) -> Option<Duration> {
    let mut a = acks.lock().await;
    if a.iter().filter(|t| **t > killed_at).count() < 100 {
        return None;
    }
    a.sort();
    let from = killed_at - Duration::from_secs(1);
    let window: Vec<Instant> = a.iter().copied().filter(|t| *t >= from).collect();
    let gap = window
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    a.clear();
    Some(gap)
}
