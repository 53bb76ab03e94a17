//! The Docker runtime: pods as real containers through the Docker Engine
//! API (bollard; `/var/run/docker.sock` or `DOCKER_HOST`). As in Kubernetes,
//! a pod is a **sandbox** (a pause container on the agent's own bridge
//! network, holding the pod's network and IPC namespaces and so its IP)
//! plus its containers, which join the sandbox's namespaces
//! (`network_mode: container:<sandbox>`): the containers of a pod share one
//! IP and localhost, and a container restart keeps the pod IP.
//!
//! Every container carries Keel's labels (`keel.pod-uid`, `keel.pod-name`,
//! `keel.namespace`, `keel.container`, `keel.node`, `keel.agent`): a
//! restarted agent adopts its containers (by the ids it recorded) and
//! removes those of pods it no longer knows; it never touches a container
//! without its own `keel.agent` label. The last exited instance of each
//! container is kept for `logs --previous`.

mod container;
pub mod engine;
pub mod image;
pub mod network;
mod sandbox;

pub(crate) use engine::{
    api_error, exit_of, is_running, is_status, list, message, remove, remove_all, running,
};
pub use engine::{connect_engine, containers_of, remove_agent};

/// The Engine client, for callers (tests) that inspect what the runtime made.
pub use bollard;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerSummary, HostConfigLogConfig};
use bollard::query_parameters::{
    LogsOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;

use super::{
    BoxFut, ContainerConfig, ContainerHandle, ExecCommand, ExecSession, Exit, LogRequest,
    LogStream, Runtime, RuntimeError, Sandbox, SandboxConfig,
};

pub const LABEL_POD_UID: &str = "keel.pod-uid";
pub const LABEL_POD_NAME: &str = "keel.pod-name";
pub const LABEL_NAMESPACE: &str = "keel.namespace";
pub const LABEL_CONTAINER: &str = "keel.container";
pub const LABEL_NODE: &str = "keel.node";
/// The agent instance (node name plus a hash of its data dir), so two
/// clusters on one Docker host never touch each other's containers.
pub const LABEL_AGENT: &str = "keel.agent";
/// When an instance of a container was created, in nanoseconds since the
/// epoch: Docker's own `Created` has whole seconds, and a container that
/// dies and restarts within one second must still sort behind its successor
/// (`logs --previous` picks the second newest).
pub const LABEL_CREATED_NS: &str = "keel.created-ns";
/// The `keel.container` value of a pod's sandbox (not a valid container
/// name in a pod spec, which is lower case).
pub const SANDBOX: &str = "POD";
/// Kubernetes' pause image, the default sandbox image.
pub const DEFAULT_PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// How the Docker runtime is set up.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub node: String,
    /// Where pod directories (emptyDir volumes) live.
    pub root: PathBuf,
    pub pause_image: String,
    /// Rotate a container's log above this size (json-file driver).
    pub log_max_bytes: u64,
}

/// Runs pods as Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    cfg: DockerConfig,
    agent: String,
    network: String,
    subnet: String,
}

/// The identity of the agent on `data_dir` for `node`: the `keel.agent`
/// label of its containers and the name of its network (`keel-<this>`).
pub fn agent_id(node: &str, data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{node}-{:08x}", network::fnv(&dir.display().to_string()))
}

impl DockerRuntime {
    /// Connects to the Engine and makes sure the agent's network exists.
    pub async fn connect(cfg: &DockerConfig) -> Result<DockerRuntime, RuntimeError> {
        let docker = connect_engine().await?;
        std::fs::create_dir_all(&cfg.root)
            .map_err(|e| RuntimeError::Setup(format!("creating {}: {e}", cfg.root.display())))?;
        let agent = agent_id(&cfg.node, cfg.root.parent().unwrap_or(&cfg.root));
        let network = format!("keel-{agent}");
        let subnet = network::ensure(&docker, &network, &cfg.node, &agent).await?;
        tracing::info!(%network, %subnet, pause = %cfg.pause_image, "docker runtime ready");
        Ok(DockerRuntime {
            docker,
            cfg: cfg.clone(),
            agent,
            network,
            subnet,
        })
    }

    /// This agent's `keel.agent` label value.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    fn labels(&self, uid: &str, name: &str, ns: &str, container: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_POD_UID.to_string(), uid.to_string()),
            (LABEL_POD_NAME.to_string(), name.to_string()),
            (LABEL_NAMESPACE.to_string(), ns.to_string()),
            (LABEL_CONTAINER.to_string(), container.to_string()),
            (LABEL_NODE.to_string(), self.cfg.node.clone()),
            (LABEL_AGENT.to_string(), self.agent.clone()),
        ])
    }

    fn log_config(&self) -> HostConfigLogConfig {
        HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                (
                    "max-size".to_string(),
                    self.cfg.log_max_bytes.max(4096).to_string(),
                ),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }
    }

    /// The instances of container `name` of pod `uid`, newest first.
    async fn instances(
        &self,
        uid: &str,
        name: &str,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut v = list(
            &self.docker,
            &[
                (LABEL_AGENT, &self.agent),
                (LABEL_POD_UID, uid),
                (LABEL_CONTAINER, name),
            ],
        )
        .await?;
        let ns = |c: &ContainerSummary| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_CREATED_NS))
                .and_then(|n| n.parse::<u128>().ok())
                .unwrap_or(0)
        };
        v.sort_by_key(|c| std::cmp::Reverse((c.created.unwrap_or(0), ns(c))));
        Ok(v)
    }
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn assigns_ips(&self) -> bool {
        true
    }

    fn pod_cidr(&self) -> Option<String> {
        Some(self.subnet.clone())
    }

    fn uses_images(&self) -> bool {
        true
    }

    fn create_sandbox(&self, c: &SandboxConfig) -> BoxFut<Result<Sandbox, RuntimeError>> {
        let me = self.clone_handle();
        let c = c.clone();
        Box::pin(async move { me.sandbox_now(&c).await })
    }

    fn remove_sandbox(&self, s: &Sandbox) -> BoxFut<()> {
        let me = self.clone_handle();
        let s = s.clone();
        Box::pin(async move {
            let all = list(
                &me.docker,
                &[(LABEL_AGENT, &me.agent), (LABEL_POD_UID, &s.id)],
            )
            .await
            .unwrap_or_default();
            remove_all(&me.docker, all).await;
            if let Err(e) = std::fs::remove_dir_all(&s.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %s.dir.display(), error = %e, "cannot remove the pod dir");
            }
        })
    }

    fn start_container(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
    ) -> BoxFut<Result<ContainerHandle, RuntimeError>> {
        let me = self.clone_handle();
        let (s, c) = (s.clone(), c.clone());
        Box::pin(async move { me.start_now(&s, &c).await })
    }

    fn is_running(&self, h: &ContainerHandle) -> BoxFut<bool> {
        let (d, id) = (self.docker.clone(), h.id.clone());
        Box::pin(async move { is_running(&d, &id).await })
    }

    fn adopt(&self, _s: &Sandbox, h: &ContainerHandle) -> BoxFut<bool> {
        self.is_running(h)
    }

    fn wait(&self, h: &ContainerHandle) -> BoxFut<Exit> {
        let (d, id) = (self.docker.clone(), h.id.clone());
        Box::pin(async move {
            loop {
                let opts = WaitContainerOptionsBuilder::new()
                    .condition("not-running")
                    .build();
                let r = d.wait_container(&id, Some(opts)).next().await;
                let gone = matches!(&r, Some(Err(e)) if is_status(e, 404));
                if gone || !is_running(&d, &id).await {
                    return exit_of(&d, &id).await;
                }
                // The wait request ended early (a timeout, the daemon
                // restarting): the container still runs, wait again.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    fn stop(&self, h: &ContainerHandle, grace: Duration) -> BoxFut<Exit> {
        let wait = self.wait(h);
        let (d, id) = (self.docker.clone(), h.id.clone());
        Box::pin(async move {
            let t = grace.as_secs_f64().ceil() as i32;
            let opts = StopContainerOptionsBuilder::new().t(t).build();
            if let Err(e) = d.stop_container(&id, Some(opts)).await
                && !is_status(&e, 304)
                && !is_status(&e, 404)
            {
                tracing::warn!(container = %id, error = %message(&e), "stop failed");
            }
            wait.await
        })
    }

    fn exec(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
        argv: &[String],
        timeout: Duration,
    ) -> BoxFut<Result<i32, RuntimeError>> {
        let me = self.clone_handle();
        let (uid, name, argv) = (s.id.clone(), c.name.clone(), argv.to_vec());
        let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Box::pin(async move {
            let id = me
                .instances(&uid, &name)
                .await?
                .into_iter()
                .find(running)
                .and_then(|c| c.id)
                .ok_or_else(|| {
                    RuntimeError::CannotRun(format!("container {name} is not running"))
                })?;
            match tokio::time::timeout(timeout, Self::exec_now(me.docker.clone(), id, argv, env))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(RuntimeError::CannotRun(format!(
                    "command timed out after {timeout:?}"
                ))),
            }
        })
    }

    fn exec_stream(
        &self,
        _s: &Sandbox,
        _c: &ContainerConfig,
        h: &ContainerHandle,
        cmd: ExecCommand,
    ) -> BoxFut<Result<ExecSession, RuntimeError>> {
        Box::pin(Self::exec_session(self.docker.clone(), h.id.clone(), cmd))
    }

    fn log_path(&self, _s: &Sandbox, _container: &str) -> Option<PathBuf> {
        None
    }

    fn logs(
        &self,
        s: &Sandbox,
        container: &str,
        r: &LogRequest,
    ) -> BoxFut<Result<LogStream, RuntimeError>> {
        let me = self.clone_handle();
        let (uid, name, r) = (s.id.clone(), container.to_string(), r.clone());
        Box::pin(async move {
            let all = me.instances(&uid, &name).await?;
            // Newest first: the current instance, then the one before it.
            let pick = all.get(usize::from(r.previous));
            let Some(id) = pick.and_then(|c| c.id.clone()) else {
                return Err(RuntimeError::Setup(if r.previous {
                    "no previous instance of the container".into()
                } else {
                    "no log (not started?)".into()
                }));
            };
            let tail = r
                .tail
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into());
            let opts = LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .follow(r.follow && !r.previous)
                .tail(&tail)
                .build();
            let stream = me
                .docker
                .logs(&id, Some(opts))
                .map(|x| x.map(|o| o.into_bytes()).map_err(std::io::Error::other));
            Ok(Box::pin(stream) as LogStream)
        })
    }

    fn remove_unknown(&self, known: Vec<String>) -> BoxFut<usize> {
        let me = self.clone_handle();
        Box::pin(async move {
            let all = list(&me.docker, &[(LABEL_AGENT, &me.agent)])
                .await
                .unwrap_or_default();
            let mut pods = std::collections::BTreeSet::new();
            let mut gone = Vec::new();
            for c in all {
                let uid = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_POD_UID))
                    .cloned()
                    .unwrap_or_default();
                if known.contains(&uid) {
                    continue;
                }
                tracing::info!(pod_uid = %uid, container = c.id.as_deref().unwrap_or_default(), "removing a container of a pod the agent does not know");
                gone.push(c);
                pods.insert(uid);
            }
            remove_all(&me.docker, gone).await;
            for uid in &pods {
                if !uid.is_empty() {
                    let _ = std::fs::remove_dir_all(me.cfg.root.join(uid));
                }
            }
            pods.len()
        })
    }
}

impl DockerRuntime {
    /// A cheap copy for the runtime's futures (the client is shared).
    fn clone_handle(&self) -> DockerRuntime {
        DockerRuntime {
            docker: self.docker.clone(),
            cfg: self.cfg.clone(),
            agent: self.agent.clone(),
            network: self.network.clone(),
            subnet: self.subnet.clone(),
        }
    }
}
