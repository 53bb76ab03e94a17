//! Keel's node agent (kubelet and kube-proxy in one): registers its Node,
//! renews its Lease, runs the pods bound to it through a container runtime,
//! reports their status, proxies every Service's cluster IP to its ready
//! endpoints and serves container logs. It speaks only the wire contracts in
//! `keel-proto`: the gRPC Agent service for its pods, the REST client for
//! everything else; it never links the store or the control plane.

pub mod bootstrap;
pub mod credentials;
pub mod env;
pub mod error;
pub mod exec;
pub mod heartbeat;
pub mod host_path;
pub mod ipam;
pub mod lifecycle;
pub mod logs;
pub mod pod_watch;
pub mod portforward;
pub mod probe;
pub mod proxy;
pub mod register;
pub mod runtime;
pub mod state;
pub mod status;
pub mod sync;
pub mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use keel_proto::api::Service;
use tokio::sync::watch;

pub use credentials::{MasterClient, SharedCredentials};
pub use error::AgentError;
use ipam::{Ipam, PodRange};
pub use runtime::PodUsers;
use runtime::{ContainerConfig, ContainerHandle, DockerRuntime, ProcessRuntime, Runtime, Sandbox};

/// Which container runtime runs the pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Local processes (no images).
    Process,
    /// Containers through the Docker Engine API, each pod's network held
    /// by a sandbox container of `pause_image`.
    Docker { pause_image: String },
}
use state::StateStore;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node name.
    pub name: String,
    pub data_dir: PathBuf,
    /// API servers (`host:port` or URLs); requests fail over between them.
    pub masters: Vec<String>,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub pod_range: PodRange,
    /// Port of the log endpoint on the node's IP (0: any free port).
    pub agent_port: u16,
    pub heartbeat: Duration,
    pub lease_duration_seconds: i64,
    /// Crash back-off: first delay and cap (kubelet: 10 s and 5 min).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Rotate a container log above this size.
    pub log_max_bytes: u64,
    /// Stop every pod when the agent exits (otherwise they keep running
    /// and the next agent on this data dir adopts them).
    pub stop_pods_on_exit: bool,
    pub runtime: RuntimeChoice,
    /// Whose user the process runtime runs pods as (see [`PodUsers`]).
    pub pod_users: PodUsers,
    /// How the agent dials the masters and serves its log endpoint: the
    /// node certificate from the bootstrap, updated by its renewal (plain
    /// text with `--insecure`).
    pub credentials: SharedCredentials,
}

impl Config {
    /// A configuration with kubelet's defaults.
    pub fn new(name: &str, data_dir: PathBuf, masters: Vec<String>) -> Config {
        Config {
            pod_range: PodRange::from_name(name),
            name: name.to_string(),
            data_dir,
            masters,
            zone: String::new(),
            labels: BTreeMap::new(),
            agent_port: 10250,
            heartbeat: Duration::from_secs(2),
            lease_duration_seconds: 40,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            log_max_bytes: 10 << 20,
            stop_pods_on_exit: false,
            runtime: RuntimeChoice::Process,
            pod_users: PodUsers::PerPod,
            credentials: SharedCredentials::default(),
        }
    }
}

/// What the agent's tasks share.
pub struct Ctx {
    pub cfg: Config,
    pub node_ip: Ipv4Addr,
    /// The REST client, following credential renewals.
    pub client: MasterClient,
    pub runtime: Arc<dyn Runtime>,
    pub state: StateStore,
    pub ipam: Mutex<Ipam>,
    /// Every Service, for containers' `<SVC>_SERVICE_HOST` variables.
    pub services: RwLock<Vec<Service>>,
    pub services_synced: watch::Sender<bool>,
    /// The sandboxes of the pods running here, by `namespace/name`.
    pub pods: Mutex<HashMap<String, Sandbox>>,
    /// The containers last started here, by `namespace/pod/container`, with
    /// what they were started from (`kubectl exec` runs in them).
    pub running: Mutex<HashMap<String, (ContainerHandle, ContainerConfig)>>,
}

/// Runs an agent until `shutdown` turns true.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    if cfg.masters.is_empty() {
        return Err(AgentError::Config("no masters given".into()));
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AgentError::io(format!("creating {}", cfg.data_dir.display()), e))?;
    let state = StateStore::open(&cfg.data_dir)?;
    let adopted = state.pods();
    let mut ipam = Ipam::new(cfg.pod_range);
    for r in &adopted {
        ipam.reserve(r.sandbox.ip);
    }
    let node_ip = cfg.pod_range.node_ip();
    let listener = tokio::net::TcpListener::bind((node_ip, cfg.agent_port))
        .await
        .map_err(|e| {
            AgentError::io(
                format!("binding the agent endpoint {node_ip}:{}", cfg.agent_port),
                e,
            )
        })?;
    let agent_addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| AgentError::io("agent endpoint address", e))?;
    let runtime: Arc<dyn Runtime> = match &cfg.runtime {
        RuntimeChoice::Process => Arc::new(ProcessRuntime::new(
            cfg.data_dir.join("pods"),
            cfg.log_max_bytes,
            cfg.pod_users,
        )),
        RuntimeChoice::Docker { pause_image } => Arc::new(
            DockerRuntime::connect(&runtime::docker::DockerConfig {
                node: cfg.name.clone(),
                root: cfg.data_dir.join("pods"),
                pause_image: pause_image.clone(),
                log_max_bytes: cfg.log_max_bytes,
            })
            .await?,
        ),
    };
    // Containers of pods this agent has no record of (its state was lost,
    // or they were left half-made) go; the recorded ones are adopted or
    // stopped by the sync loop.
    let known: Vec<String> = adopted.iter().map(|r| r.uid.clone()).collect();
    let removed = runtime.remove_unknown(known).await;
    if removed > 0 {
        tracing::info!(
            pods = removed,
            "removed the containers of pods the agent has no record of"
        );
    }
    let ctx = Arc::new(Ctx {
        node_ip,
        client: MasterClient::new(&cfg.masters, cfg.credentials.clone()),
        runtime,
        state,
        ipam: Mutex::new(ipam),
        services: RwLock::new(Vec::new()),
        services_synced: watch::channel(false).0,
        pods: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        cfg,
    });
    tracing::info!(
        node = %ctx.cfg.name,
        pod_range = %ctx.cfg.pod_range.cidr(),
        runtime = ctx.runtime.name(),
        agent = %agent_addr,
        adopting = adopted.len(),
        "agent starting"
    );
    tokio::spawn(logs::serve(ctx.clone(), listener));
    let mut pause = Duration::from_millis(200);
    loop {
        match register::register(&ctx, agent_addr).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the node yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    let hb = tokio::spawn(heartbeat::run(ctx.clone(), agent_addr));
    let px = tokio::spawn(proxy::run(ctx.clone()));
    sync::run(ctx, adopted, shutdown).await;
    hb.abort();
    px.abort();
    Ok(())
}
