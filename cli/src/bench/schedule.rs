//! `keel bench schedule`: starts a 3-master cluster (or uses `--server`),
//! creates simulated Ready nodes through the API, then creates pods as fast as
//! a pool of clients can and measures when the scheduler binds each one
//! (seen on a watch): pods bound per second and create-to-bound latency.
//! With `--failover` it then SIGKILLs the leader and measures how long until
//! a newly created pod is bound by the new leader's scheduler.

use keel_proto::pki::Credentials;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use keel_chaos::{Flavor, ProcessCluster};
use keel_proto::api::core::{Container, ResourceRequirements};
use keel_proto::api::{Namespace, Node, Pod};
use keel_proto::client::ApiClient;
use tokio::sync::Mutex;

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Simulated nodes to create.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods to create.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent pod creators.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Use a running cluster's API (comma-separated) instead of starting one.
    #[arg(long, env = "KEEL_SERVER")]
    pub server: Option<String>,
    /// After the run, SIGKILL the leader and time until scheduling resumes
    /// (only with a cluster this command started).
    #[arg(long)]
    failover: bool,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn node(i: usize) -> Node {
    keel_chaos::sim::node(
        &format!("sim-{i:05}"),
        &format!("zone-{}", i % 3),
        "64",
        "256Gi",
    )
}

fn pod(ns: &str, name: &str) -> Pod {
    let mut p = Pod::new(ns, name);
    p.metadata.labels.insert("bench".into(), "schedule".into());
    let mut r = ResourceRequirements::default();
    r.requests.insert("cpu".into(), "100m".into());
    r.requests.insert("memory".into(), "64Mi".into());
    p.spec.containers.push(Container {
        name: "c".into(),
        image: "sim".into(),
        command: vec!["sleep".into(), "3600".into()],
        resources: Some(r),
        ..Default::default()
    });
    p
}

/// Runs `n` jobs with at most `par` in flight.
async fn fan_out<F, Fut>(n: usize, par: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(par)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub async fn run(a: ScheduleArgs, creds: &Credentials) -> anyhow::Result<()> {
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("keel-bench-schedule-{}", std::process::id()))
    });
    let mut cluster = None;
    let mut creds = creds.clone();
    let servers: Vec<String> = match &a.server {
        Some(s) => s.split(',').map(str::to_string).collect(),
        None => {
            let _ = std::fs::remove_dir_all(&dir);
            let c =
                ProcessCluster::start(Flavor::Keel, &std::env::current_exe()?, &dir, 3, None, &[])?;
            c.wait_ready(Duration::from_secs(30)).await?;
            let apis = c.members.iter().map(|m| m.api_addr()).collect();
            creds = c.credentials().clone();
            cluster = Some(c);
            apis
        }
    };
    let client = Arc::new(ApiClient::new(&servers, &creds));
    keel_chaos::poll(Duration::from_secs(30), "the API", || async {
        client.get::<Namespace>("", "default").await.ok()
    })
    .await;
    let ns = format!("bench-{}", std::process::id());
    client.create(&Namespace::new("", &ns)).await?;

    let t = Instant::now();
    fan_out(a.nodes, 64, |i| {
        let c = client.clone();
        async move {
            match c.create(&node(i)).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    println!(
        "created {} nodes in {:.2}s",
        a.nodes,
        t.elapsed().as_secs_f64()
    );

    // Watch this namespace's pods from now on, noting when each is first seen bound.
    let list = client
        .get_value(&format!("/api/v1/namespaces/{ns}/pods"))
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = {
        let (client, bound, ns) = (client.clone(), bound.clone(), ns.clone());
        tokio::spawn(async move {
            let mut w = Box::pin(
                client
                    .watch(&format!("/api/v1/namespaces/{ns}/pods"), &rv)
                    .await?,
            );
            while let Some(ev) = w.next().await {
                let ev = ev?;
                if ev.object["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                {
                    let name = ev.object["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    bound.lock().await.entry(name).or_insert_with(Instant::now);
                }
            }
            anyhow::Ok(())
        })
    };

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    fan_out(a.pods, a.clients, |i| {
        let (c, created, ns) = (client.clone(), created.clone(), ns.clone());
        async move {
            let name = format!("p-{i:06}");
            let at = Instant::now();
            c.create(&pod(&ns, &name)).await?;
            created.lock().await.insert(name, at);
            Ok(())
        }
    })
    .await?;
    let create_secs = start.elapsed().as_secs_f64();
    println!(
        "created {} pods in {create_secs:.2}s ({:.0} pods/s)",
        a.pods,
        a.pods as f64 / create_secs
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while bound.lock().await.len() < a.pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bound = bound.lock().await.clone();
    let created = created.lock().await.clone();
    let mut h = Histogram::<u64>::new(3)?;
    let mut last = start;
    for (name, at) in &created {
        if let Some(b) = bound.get(name) {
            h.record(b.saturating_duration_since(*at).as_micros() as u64)?;
            last = last.max(*b);
        }
    }
    let secs = last.duration_since(start).as_secs_f64();
    println!(
        "bound {}/{} pods on {} nodes in {secs:.2}s: {:.0} pods/s bound",
        h.len(),
        a.pods,
        a.nodes,
        h.len() as f64 / secs
    );
    println!(
        "create-to-bound latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    if a.failover {
        match cluster.as_mut() {
            None => println!("--failover needs a cluster started by this command; skipped"),
            Some(c) => {
                let leader = c
                    .leader()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("no leader"))?;
                let killed_at = Instant::now();
                c.kill(leader);
                let name = "after-failover";
                let alive: Vec<String> = c
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != leader)
                    .map(|(_, m)| m.api_addr())
                    .collect();
                let survivors = ApiClient::new(&alive, c.credentials());
                loop {
                    match survivors.create(&pod(&ns, name)).await {
                        Ok(_) => break,
                        Err(e) if e.code() == 409 => break,
                        Err(_) if killed_at.elapsed() < Duration::from_secs(30) => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                let seen = keel_chaos::poll(
                    Duration::from_secs(30),
                    "the pod bound after failover",
                    || async {
                        let p: Pod = survivors.get(&ns, name).await.ok()?;
                        (!p.spec.node_name.is_empty()).then(Instant::now)
                    },
                )
                .await;
                println!(
                    "leader SIGKILL to the next pod bound by the new leader's scheduler: {:.0} ms",
                    seen.duration_since(killed_at).as_secs_f64() * 1000.0
                );
            }
        }
    }
    watcher.abort();
    if let Some(c) = cluster {
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
