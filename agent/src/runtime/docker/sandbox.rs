//! A pod's sandbox as a Docker container: the pause container on the
//! agent's network that holds the pod's network and IPC namespaces (and so
//! its IP), found again by its labels when it already exists.

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::CreateContainerOptionsBuilder;

use super::{DockerRuntime, SANDBOX, api_error, image, remove, running};
use crate::runtime::{RuntimeError, Sandbox, SandboxConfig};

impl DockerRuntime {
    pub(super) async fn sandbox_now(&self, c: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
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
}
