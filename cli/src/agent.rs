//! `keel agent`: runs one node agent (kubelet and proxy) until SIGINT/SIGTERM.
//! Pods keep running when it stops; started again on the same data dir it
//! adopts them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use keel_agent::ipam::PodRange;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RuntimeKind {
    /// Each container a local process (the embedded default; ignores images).
    Process,
    /// Real containers through the Docker Engine API (DOCKER_HOST or
    /// /var/run/docker.sock): a pause container per pod holds its network.
    Docker,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Node name (the Node object and its Lease carry it).
    #[arg(long, env = "KEEL_NAME")]
    pub name: String,
    /// Where the agent keeps its state, pod sandboxes and container logs.
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// REST API addresses of the masters (comma-separated); the agent fails over between them.
    #[arg(
        long,
        env = "KEEL_MASTERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:6443"
    )]
    pub masters: Vec<String>,
    /// Failure domain (label topology.kubernetes.io/zone).
    #[arg(long, env = "KEEL_ZONE", default_value = "")]
    pub zone: String,
    /// Extra node labels: k=v,k2=v2.
    #[arg(long, env = "KEEL_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Container runtime.
    #[arg(long, env = "KEEL_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// The sandbox (pause) image of the docker runtime: one container of it
    /// per pod holds the pod's network namespace.
    #[arg(long, env = "KEEL_PAUSE_IMAGE", default_value = keel_agent::runtime::docker::DEFAULT_PAUSE_IMAGE)]
    pub pause_image: String,
    /// The node's pod range, 127.N.0.0/16 (or just N); default: N from a hash of the name.
    #[arg(long, env = "KEEL_POD_RANGE")]
    pub pod_range: Option<String>,
    /// Whose user the process runtime runs pods as when their
    /// securityContext does not say: `per-pod` (a user and group of each
    /// pod's own, when the agent runs as root), `agent` (the agent's own
    /// user: no isolation) or a numeric user id.
    #[arg(long, env = "KEEL_POD_USER", default_value = "per-pod")]
    pub pod_user: keel_agent::PodUsers,
    /// Port of the agent endpoint (container logs) on the node's IP 127.N.0.1; 0 picks a free one.
    #[arg(long, env = "KEEL_AGENT_PORT", default_value_t = 10250)]
    pub agent_port: u16,
    /// Lease renewal interval in milliseconds.
    #[arg(long, env = "KEEL_HEARTBEAT_MS", default_value_t = 2000)]
    pub heartbeat_ms: u64,
    /// First crash back-off delay in milliseconds (kubelet: 10 s), doubling per crash.
    #[arg(long, env = "KEEL_BACKOFF_INITIAL_MS", default_value_t = 10_000)]
    pub backoff_initial_ms: u64,
    /// Longest crash back-off delay in milliseconds (kubelet: 5 min).
    #[arg(long, env = "KEEL_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub backoff_max_ms: u64,
    /// Rotate a container's log file above this many bytes.
    #[arg(long, env = "KEEL_LOG_MAX_BYTES", default_value_t = 10 << 20)]
    pub log_max_bytes: u64,
    /// Stop every pod when the agent exits (default: leave them for the next agent to adopt).
    #[arg(long, env = "KEEL_STOP_PODS_ON_EXIT")]
    pub stop_pods_on_exit: bool,
    /// The cluster CA certificate (the masters' ca.crt); needed on the first
    /// start, then kept in DATA_DIR/pki.
    #[arg(long, env = "KEEL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// A single-use bootstrap token (`keel token create --bootstrap`) that
    /// buys this node its certificate on the first start. Prefer the
    /// environment variable: command lines are visible to every user.
    #[arg(long, env = "KEEL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// TESTS ONLY, UNSAFE: talk plain text to masters started with --insecure.
    #[arg(long, env = "KEEL_INSECURE")]
    pub insecure: bool,
}

pub async fn run(a: AgentArgs) -> anyhow::Result<()> {
    let creds = keel_agent::SharedCredentials::default();
    if a.insecure {
        tracing::warn!(
            "!!! --insecure: this agent talks PLAIN TEXT to the masters, without a certificate. Tests only. !!!"
        );
    } else {
        let ca = match &a.ca_cert {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        };
        let joined = keel_agent::bootstrap::credentials(
            &a.data_dir,
            &a.name,
            &a.masters,
            ca,
            a.join_token.as_deref(),
        )
        .await
        .with_context(|| format!("agent {}: joining the cluster", a.name))?;
        creds.set(joined);
        tokio::spawn(keel_agent::bootstrap::renewal_loop(
            a.data_dir.clone(),
            a.name.clone(),
            a.masters.clone(),
            creds.clone(),
        ));
    }
    let mut cfg = keel_agent::Config::new(&a.name, a.data_dir.clone(), a.masters.clone());
    if let Some(r) = &a.pod_range {
        cfg.pod_range = PodRange::parse(r).map_err(anyhow::Error::msg)?;
    }
    cfg.zone = a.zone;
    cfg.pod_users = a.pod_user;
    cfg.labels = parse_labels(&a.labels)?;
    cfg.agent_port = a.agent_port;
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms.max(100));
    cfg.backoff_initial = Duration::from_millis(a.backoff_initial_ms);
    cfg.backoff_max = Duration::from_millis(a.backoff_max_ms.max(a.backoff_initial_ms));
    cfg.log_max_bytes = a.log_max_bytes;
    cfg.stop_pods_on_exit = a.stop_pods_on_exit;
    cfg.credentials = creds;
    cfg.runtime = match a.runtime {
        RuntimeKind::Process => keel_agent::RuntimeChoice::Process,
        RuntimeKind::Docker => keel_agent::RuntimeChoice::Docker {
            pause_image: a.pause_image.clone(),
        },
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    keel_agent::run(cfg, rx)
        .await
        .with_context(|| format!("agent {}", a.name))
}

fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--labels: {s:?} is not k=v"))
        })
        .collect()
}
