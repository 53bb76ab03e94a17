//! `keel up`: a local HA cluster of masters as child processes, in separate
//! zones, until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use keel_chaos::{Flavor, ProcessCluster};

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
            "  {:<4} zone {:<7} api http://{}  client {}  peer {}  pid {}{}  log {}",
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
    let eps = cluster.endpoints().join(",");
    println!("\nTry:\n  keel cluster status --endpoints {eps}");
    println!("  ETCDCTL_API=3 etcdctl --endpoints {eps} put hello world");
    println!("\nCtrl-C stops the cluster (data is kept).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping...");
    tokio::task::spawn_blocking(move || cluster.stop_all()).await?;
    Ok(())
}
