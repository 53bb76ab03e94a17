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

pub mod engine;
pub mod image;
pub mod network;

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
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ExecConfig, HostConfig, HostConfigLogConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use keel_proto::api::meta::now_rfc3339;

use super::{
    BoxFut, ContainerConfig, ContainerHandle, Exit, LogRequest, LogStream, Runtime, RuntimeError,
    Sandbox, SandboxConfig,
};
use crate::runtime::process::proc_stat;

pub const LABEL_POD_UID: &str = "keel.pod-uid";
pub const LABEL_POD_NAME: &str = "keel.pod-name";
pub const LABEL_NAMESPACE: &str = "keel.namespace";
pub const LABEL_CONTAINER: &str = "keel.container";
pub const LABEL_NODE: &str = "keel.node";
/// The agent instance (node name plus a hash of its data dir), so two
/// clusters on one Docker host never touch each other's containers.
pub const LABEL_AGENT: &str = "keel.agent";
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
        v.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
        Ok(v)
    }

    async fn sandbox_now(&self, c: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let dir = self.cfg.root.join(&c.uid);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::Setup(format!("creating {}: {e}", dir.display())))?;
        let mut id = None;
        for s in self.instances(&c.uid, SANDBOX).await? {
            match (&id, running(&s)) {
                (None, true) => id = s.id.clone(),
                _ => remove(&self.docker, s.id.as_deref().unwrap_or_default()).await,
            }
        }
        let id = match id {
            Some(id) => id,
            None => {
                image::ensure(&self.docker, &self.cfg.pause_image, "IfNotPresent").await?;
                let body = ContainerCreateBody {
                    image: Some(self.cfg.pause_image.clone()),
                    hostname: Some(c.hostname.clone()),
                    labels: Some(self.labels(&c.uid, &c.name, &c.namespace, SANDBOX)),
                    host_config: Some(HostConfig {
                        network_mode: Some(self.network.clone()),
                        ipc_mode: Some("shareable".into()),
                        restart_policy: Some(RestartPolicy {
                            name: Some(RestartPolicyNameEnum::NO),
                            ..Default::default()
                        }),
                        log_config: Some(self.log_config()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let name = format!(
                    "keel_POD_{}_{}_{}_{}",
                    c.name, c.namespace, c.uid, self.agent
                );
                let opts = CreateContainerOptionsBuilder::new().name(&name).build();
                let r = self
                    .docker
                    .create_container(Some(opts), body)
                    .await
                    .map_err(|e| api_error("creating the pod sandbox", e))?;
                if let Err(e) = self.docker.start_container(&r.id, None).await {
                    remove(&self.docker, &r.id).await;
                    return Err(api_error("starting the pod sandbox", e));
                }
                r.id
            }
        };
        let info = self
            .docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| api_error("inspecting the pod sandbox", e))?;
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&self.network).cloned())
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| {
                RuntimeError::Setup(format!("the pod sandbox has no IP on {}", self.network))
            })?;
        Ok(Sandbox {
            id: c.uid.clone(),
            ip,
            dir,
            runtime_id: id,
        })
    }

    async fn start_now(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
    ) -> Result<ContainerHandle, RuntimeError> {
        image::ensure(&self.docker, &c.image, &c.pull_policy).await?;
        if !c.working_dir.is_empty() && !c.working_dir.starts_with('/') {
            return Err(RuntimeError::CannotRun(format!(
                "workingDir {:?} must be an absolute path",
                c.working_dir
            )));
        }
        let mut binds = Vec::new();
        for m in &c.mounts {
            if m.create {
                std::fs::create_dir_all(&m.host_path).map_err(|e| {
                    RuntimeError::Setup(format!("creating {}: {e}", m.host_path.display()))
                })?;
            }
            binds.push(format!(
                "{}:{}{}",
                m.host_path.display(),
                m.container_path,
                if m.read_only { ":ro" } else { "" }
            ));
        }
        // Keep the newest ended instance for `logs --previous`; a running
        // one is a leftover: one instance of a container runs at a time.
        let old = self.instances(&s.id, &c.name).await?;
        let mut kept = false;
        for o in &old {
            let id = o.id.as_deref().unwrap_or_default();
            if !running(o) && !kept {
                kept = true;
                continue;
            }
            remove(&self.docker, id).await;
        }
        let sb = list(
            &self.docker,
            &[
                (LABEL_AGENT, &self.agent),
                (LABEL_POD_UID, &s.id),
                (LABEL_CONTAINER, SANDBOX),
            ],
        )
        .await?
        .into_iter()
        .next();
        let labels = sb
            .as_ref()
            .and_then(|x| x.labels.clone())
            .unwrap_or_default();
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let (pod, ns) = (get(LABEL_POD_NAME), get(LABEL_NAMESPACE));
        let mut labels = self.labels(&s.id, &pod, &ns, &c.name);
        if !c.ports.is_empty() {
            let ports: Vec<String> = c
                .ports
                .iter()
                .map(|(p, proto)| format!("{p}/{}", if proto.is_empty() { "TCP" } else { proto }))
                .collect();
            labels.insert("keel.ports".into(), ports.join(","));
        }
        let ns_of = format!("container:{}", s.runtime_id);
        let body = ContainerCreateBody {
            image: Some(c.image.clone()),
            entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
            cmd: (!c.args.is_empty()).then(|| c.args.clone()),
            env: Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: (!c.working_dir.is_empty()).then(|| c.working_dir.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(ns_of.clone()),
                ipc_mode: Some(ns_of),
                memory: c.memory_limit.map(|m| m as i64),
                // No swap beyond the limit, so the limit is the limit.
                memory_swap: c.memory_limit.map(|m| m as i64),
                nano_cpus: c.nano_cpus,
                binds: (!binds.is_empty()).then_some(binds),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    ..Default::default()
                }),
                log_config: Some(self.log_config()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = format!("keel_{}_{pod}_{ns}_{}_{}_{nanos}", c.name, s.id, self.agent);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let r = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| api_error(&format!("creating container {}", c.name), e))?;
        if let Err(e) = self.docker.start_container(&r.id, None).await {
            return Err(RuntimeError::CannotRun(message(&e)));
        }
        let info = self
            .docker
            .inspect_container(&r.id, None)
            .await
            .map_err(|e| api_error("inspecting a started container", e))?;
        let st = info.state.unwrap_or_default();
        let pid = st.pid.unwrap_or(0) as u32;
        Ok(ContainerHandle {
            name: c.name.clone(),
            pid,
            start_ticks: proc_stat(pid).map(|(_, t)| t).unwrap_or(0),
            started_at: st
                .started_at
                .filter(|s| !s.starts_with("0001"))
                .unwrap_or_else(now_rfc3339),
            id: r.id,
        })
    }

    async fn exec_now(
        docker: Docker,
        id: String,
        argv: Vec<String>,
        env: Vec<String>,
    ) -> Result<i32, RuntimeError> {
        let ex = docker
            .create_exec(
                &id,
                ExecConfig {
                    cmd: Some(argv),
                    env: Some(env),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| RuntimeError::CannotRun(message(&e)))?;
        let started = docker
            .start_exec(&ex.id, None::<StartExecOptions>)
            .await
            .map_err(|e| RuntimeError::CannotRun(message(&e)))?;
        if let StartExecResults::Attached { mut output, .. } = started {
            while output.next().await.is_some() {}
        }
        // The output ends when the process does; its code follows shortly.
        for _ in 0..50 {
            let i = docker
                .inspect_exec(&ex.id)
                .await
                .map_err(|e| RuntimeError::CannotRun(message(&e)))?;
            if i.running != Some(true) {
                return Ok(i.exit_code.unwrap_or(-1) as i32);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::CannotRun("exec did not finish".into()))
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
