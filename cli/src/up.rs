//! `keel up`: a local HA cluster as child processes until Ctrl-C: masters in
//! separate zones and node agents in zones a and b, each agent with its own
//! loopback pod range (127.11.0.0/16, 127.12.0.0/16, ...); with `--runtime
//! docker` the agents run pods as Docker containers. The REST load balancer
//! (`keel lb`) runs in this process, and the kubeconfig points at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use keel_chaos::{Flavor, ProcessCluster};

use crate::agent::RuntimeKind;

#[derive(Args)]
pub struct UpArgs {
    /// Number of masters (3 or 5 for a real quorum).
    #[arg(long, env = "KEEL_MASTERS", default_value_t = 3)]
    masters: usize,
    /// Directory holding every master's data dir and log.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "keel-data")]
    data_dir: PathBuf,
    /// First master's peer port; the others count up from it.
    #[arg(long, env = "KEEL_PEER_PORT", default_value_t = 7101)]
    peer_port: u16,
    /// First master's client port; the others count up from it.
    #[arg(long, env = "KEEL_CLIENT_PORT", default_value_t = 2479)]
    client_port: u16,
    /// First master's REST API port; the others count up from it.
    #[arg(long, env = "KEEL_API_PORT", default_value_t = 6443)]
    api_port: u16,
    /// Number of node agents (zones a and b in turn).
    #[arg(long, env = "KEEL_AGENTS", default_value_t = 2)]
    agents: usize,
    /// Where to write the client config for `keel get` and friends
    /// (default: ~/.keel/config).
    #[arg(long, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// The agents' container runtime.
    #[arg(long, env = "KEEL_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    runtime: RuntimeKind,
    /// The docker runtime's sandbox (pause) image (default: the agents').
    #[arg(long, env = "KEEL_PAUSE_IMAGE")]
    pause_image: Option<String>,
    /// Port of the REST load balancer on 127.0.0.1 (`keel lb`, run in this
    /// process) that the kubeconfig points at: it fails requests over and
    /// resumes watches when a master goes away.
    #[arg(long, env = "KEEL_LB_PORT", default_value_t = 6440)]
    lb_port: u16,
}

/// An agent child process.
struct AgentProc {
    name: String,
    zone: String,
    range: String,
    log: PathBuf,
    child: Child,
}

/// Makes an agent command join with the cluster CA and a bootstrap token
/// (in the environment, not on the command line: `ps` shows that).
pub fn join_with(cmd: &mut Command, ca: &Path, join_token: &str) {
    cmd.arg("--ca-cert")
        .arg(ca)
        .env("KEEL_JOIN_TOKEN", join_token);
}

fn spawn_agent(
    bin: &Path,
    dir: &Path,
    i: usize,
    masters: &str,
    ca: &Path,
    join_token: &str,
    runtime: &[String],
) -> anyhow::Result<AgentProc> {
    let name = format!("n{}", i + 1);
    let zone = ["zone-a", "zone-b"][i % 2].to_string();
    let range = format!("127.{}.0.0/16", 11 + i);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = Command::new(bin);
    cmd.arg("agent")
        .args(["--name", &name])
        .arg("--data-dir")
        .arg(dir.join("agents").join(&name))
        .args(["--masters", masters])
        .args(["--zone", &zone])
        .args(["--pod-range", &range])
        .args(runtime);
    join_with(&mut cmd, ca, join_token);
    cmd
        // A stopped `keel up` leaves no pod behind.
        .arg("--stop-pods-on-exit")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM
    // the agent if `keel up` dies, so its pods are stopped too.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(AgentProc {
        name,
        zone,
        range,
        log: log_path,
        child,
    })
}

/// SIGTERM every agent (they stop their pods) and wait for them.
fn stop_agents(agents: &mut [AgentProc]) {
    for a in agents.iter() {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(a.child.id() as i32, libc::SIGTERM);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    for a in agents.iter_mut() {
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = a.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = a.child.kill();
        let _ = a.child.wait();
    }
}

pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    if a.masters == 0 {
        anyhow::bail!("--masters must be at least 1");
    }
    let bin = std::env::current_exe()?;
    let mut cluster = ProcessCluster::start(
        Flavor::Keel,
        &bin,
        &a.data_dir,
        a.masters,
        Some((a.peer_port, a.client_port, a.api_port)),
        &[],
    )?;
    let leader = cluster.wait_ready(Duration::from_secs(30)).await?;
    println!(
        "Keel is up: {} masters, data in {}",
        a.masters,
        a.data_dir.display()
    );
    for (i, m) in cluster.members.iter().enumerate() {
        println!(
            "  {:<4} zone {:<7} api https://{}  client {}  peer {}  pid {}{}  log {}",
            m.name,
            m.zone,
            m.api_addr(),
            m.client_addr(),
            m.peer_addr(),
            m.pid().unwrap_or(0),
            if i == leader { "  (leader)" } else { "" },
            cluster.log_path(i).display(),
        );
    }
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api_addr()).collect();
    let pki_dir = std::path::absolute(cluster.pki_dir.clone().context("the cluster's PKI")?)?;
    // Every agent joins with its own single-use bootstrap token.
    let client = keel_proto::client::ApiClient::new(&apis, cluster.credentials());
    let mut runtime = vec![
        "--runtime".to_string(),
        match a.runtime {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        }
        .to_string(),
    ];
    if let Some(p) = &a.pause_image {
        runtime.extend(["--pause-image".to_string(), p.clone()]);
    }
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let token = keel_chaos::bootstrap_token(&client, &format!("n{}", i + 1), 3600)
            .await
            .context("creating a bootstrap token")?;
        agents.push(spawn_agent(
            &bin,
            &a.data_dir,
            i,
            &apis.join(","),
            &pki_dir.join("ca.crt"),
            &token,
            &runtime,
        )?);
    }
    let config_path = a
        .config
        .clone()
        .or_else(crate::config::default_path)
        .context("no --config and no $HOME for ~/.keel/config")?;
    let token = std::fs::read_to_string(pki_dir.join(keel_proto::pki::ADMIN_TOKEN))?;
    crate::config::write(
        &config_path,
        &crate::config::ClientConfig {
            servers: apis.clone(),
            endpoints: cluster.endpoints(),
            certificate_authority: pki_dir.join("ca.crt"),
            client_certificate: Some(pki_dir.join("admin.crt")),
            client_key: Some(pki_dir.join("admin.key")),
            token: Some(token.trim().to_string()),
        },
    )?;
    let lb_addr = std::net::SocketAddr::from(([127, 0, 0, 1], a.lb_port));
    let (lb_stop_tx, lb_stop) = tokio::sync::watch::channel(false);
    let lb = crate::lb::start(
        crate::lb::LbArgs {
            listen: lb_addr,
            masters: apis.clone(),
            pki_dir: pki_dir.clone(),
            resume_timeout_ms: 30_000,
        },
        lb_stop,
    )
    .await
    .context("starting the REST load balancer (--lb-port)")?;
    let kubeconfig = std::path::absolute(a.data_dir.join("kubeconfig"))?;
    crate::kubeconfig::write(
        &kubeconfig,
        &format!("https://{lb_addr}"),
        &std::fs::read_to_string(pki_dir.join("ca.crt"))?,
        "admin",
        token.trim(),
    )?;
    for ag in &agents {
        println!(
            "  {:<4} zone {:<7} pods {}  pid {}  log {}",
            ag.name,
            ag.zone,
            ag.range,
            ag.child.id(),
            ag.log.display()
        );
    }
    println!(
        "\nTLS everywhere: CA, admin certificate and admin token in {}",
        pki_dir.display()
    );
    println!(
        "Client config (servers, endpoints, CA, token) written to {}",
        config_path.display()
    );
    println!(
        "kubectl: export KUBECONFIG={} (through the load balancer https://{lb_addr}, which fails over between the masters)",
        kubeconfig.display()
    );
    println!("\nTry:\n  keel get nodes");
    println!("  KUBECONFIG={} kubectl get nodes", kubeconfig.display());
    println!("  keel apply -f examples/web.yaml && keel get pods -o wide");
    println!("  keel cluster status");
    println!("  keel backup save --out keel-data/b1.keelbak");
    println!("\nCtrl-C stops the cluster and its pods (data is kept).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping...");
    let _ = lb_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), lb).await;
    tokio::task::spawn_blocking(move || {
        stop_agents(&mut agents);
        cluster.stop_all()
    })
    .await?;
    Ok(())
}
