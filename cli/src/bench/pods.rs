//! `keel bench pods`: starts 3 masters and 2 node agents (process runtime,
//! or `--runtime docker`: busybox containers of a local image),
//! creates N pods (default 100) through the API — scheduled by the masters,
//! started by the agents — and measures create-to-Running latency per pod
//! (from just before the POST to the watch event reporting phase Running).
//! Prints p50/p90/p99/max and the spread over the nodes.

use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use keel_chaos::{Flavor, ProcessCluster};
use keel_proto::api::core::Container;
use keel_proto::api::meta::condition_true;
use keel_proto::api::{Node, Pod};
use keel_proto::client::{ApiClient, encode};
use tokio::sync::Mutex;

use crate::agent::RuntimeKind;

#[derive(Args, Debug)]
pub struct PodsArgs {
    /// Pods to create.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Node agents to start.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Concurrent pod creators.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The agents' container runtime.
    #[arg(long, env = "KEEL_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    runtime: RuntimeKind,
    /// The docker runtime's sandbox image (scripts/test-images.sh builds this one).
    #[arg(
        long,
        env = "KEEL_PAUSE_IMAGE",
        default_value = "keel-test/pause:latest"
    )]
    pause_image: String,
    /// The pods' image with the docker runtime (pulled only if missing).
    #[arg(
        long,
        env = "KEEL_BENCH_IMAGE",
        default_value = "keel-test/busybox:latest"
    )]
    image: String,
}

fn agent(
    bin: &Path,
    dir: &Path,
    i: usize,
    masters: &str,
    ca: &Path,
    token: &str,
    a: &PodsArgs,
) -> anyhow::Result<Child> {
    let name = format!("bench-n{}", i + 1);
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(bin);
    cmd.arg("agent")
        .args(["--name", &name, "--masters", masters])
        .arg("--data-dir")
        .arg(dir.join(&name))
        .args(["--zone", ["zone-a", "zone-b"][i % 2]])
        .args(["--pod-range", &(200 + i).to_string()])
        .args(["--agent-port", "0", "--stop-pods-on-exit"]);
    if let RuntimeKind::Docker = a.runtime {
        cmd.args(["--runtime", "docker", "--pause-image", &a.pause_image]);
    }
    crate::up::join_with(&mut cmd, ca, token);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; the agent gets SIGTERM (and stops
    // its pods) if the benchmark dies.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

fn pod(name: &str, a: &PodsArgs) -> Pod {
    let mut p = Pod::new("default", name);
    p.metadata.labels.insert("bench".into(), "pods".into());
    p.spec.termination_grace_period_seconds = Some(1);
    p.spec.containers.push(Container {
        name: "c".into(),
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    });
    if let RuntimeKind::Docker = a.runtime {
        let c = &mut p.spec.containers[0];
        c.image = a.image.clone();
        c.image_pull_policy = "IfNotPresent".into();
    }
    p
}

pub async fn run(a: PodsArgs) -> anyhow::Result<()> {
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("keel-bench-pods-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin = std::env::current_exe()?;
    let mut cluster = ProcessCluster::start(Flavor::Keel, &bin, &dir, 3, None, &[])?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api_addr()).collect();
    let client = Arc::new(ApiClient::new(&apis, cluster.credentials()));
    let ca = cluster
        .pki_dir
        .clone()
        .context("the cluster's PKI")?
        .join("ca.crt");
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let token = keel_chaos::bootstrap_token(&client, &format!("bench-n{}", i + 1), 600).await?;
        agents.push(agent(&bin, &dir, i, &apis.join(","), &ca, &token, &a)?);
    }
    keel_chaos::poll(Duration::from_secs(60), "Ready nodes", || async {
        let n = client.list::<Node>("", "").await.ok()?;
        (n.items
            .iter()
            .filter(|n| condition_true(&n.status.conditions, "Ready"))
            .count()
            == a.agents)
            .then_some(())
    })
    .await;

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let path = format!(
        "/api/v1/namespaces/default/pods?labelSelector={}",
        encode("bench=pods")
    );
    let stream = client.watch(&path, "").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, Instant)>();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            let Ok(p) = serde_json::from_value::<Pod>(ev.object) else {
                continue;
            };
            if p.status.phase == "Running" {
                let _ = tx.send((p.metadata.name, p.spec.node_name, Instant::now()));
            }
        }
    });

    println!(
        "creating {} pods on {} agents ({} creators)...",
        a.pods, a.agents, a.clients
    );
    let start = Instant::now();
    let c2 = client.clone();
    let cr = created.clone();
    let (n, clients) = (a.pods, a.clients);
    let pods: Vec<Pod> = (0..n).map(|i| pod(&format!("bench-{i:04}"), &a)).collect();
    let creator = tokio::spawn(async move {
        futures::stream::iter(pods)
            .map(|p| {
                let (c, cr) = (c2.clone(), cr.clone());
                async move {
                    cr.lock()
                        .await
                        .insert(p.metadata.name.clone(), Instant::now());
                    c.create(&p).await.map(|_| ())
                }
            })
            .buffer_unordered(clients)
            .collect::<Vec<_>>()
            .await
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < a.pods {
        let Ok(Some((name, node, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            anyhow::bail!("only {} of {} pods Running after 120 s", seen.len(), a.pods);
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let t0 = created.lock().await.get(&name).copied().unwrap_or(start);
        hist.record(at.duration_since(t0).as_millis().max(1) as u64)?;
        *per_node.entry(node).or_default() += 1;
    }
    let total = start.elapsed();
    for r in creator.await? {
        r?;
    }
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort();
    println!(
        "{} pods Running in {:.2} s ({:.0} pods/s); per node: {:?}",
        a.pods,
        total.as_secs_f64(),
        a.pods as f64 / total.as_secs_f64(),
        nodes
    );
    println!(
        "create-to-Running latency: p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.90),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!("stopping (agents stop their pods)...");
    for c in &agents {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
    }
    tokio::task::spawn_blocking(move || {
        for mut c in agents {
            let _ = c.wait();
        }
        cluster.stop_all();
    })
    .await?;
    if let RuntimeKind::Docker = a.runtime {
        // The agents removed their pods' containers; their networks go too.
        let d = keel_agent::runtime::docker::connect_engine().await?;
        for i in 0..a.agents {
            let name = format!("bench-n{}", i + 1);
            let id = keel_agent::runtime::docker::agent_id(&name, &dir.join(&name));
            keel_agent::runtime::docker::remove_agent(&d, &id).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
