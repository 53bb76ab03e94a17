//! What a container is started with: its environment (service variables,
//! `$(VAR)` expansion), command, resource limits and emptyDir mounts,
//! resolved from the pod spec for the runtime.

use keel_proto::api::core::SecurityContext;
use keel_proto::api::quantity;

use super::Worker;
use crate::env;
use crate::runtime::{ContainerConfig, Mount};

impl Worker {
    pub(super) fn config_for(&self, i: usize) -> ContainerConfig {
        let spec = &self.ctrs[i].spec;
        let services = self.ctx.services.read().expect("services lock").clone();
        let mut env = env::container_env(
            &self.pod,
            spec,
            &self.sandbox.ip.to_string(),
            &self.ctx.cfg.name,
            &self.ctx.node_ip.to_string(),
            &services,
        );
        if self.ctx.runtime.uses_images() && !spec.env.iter().any(|e| e.name == "PATH") {
            // The image's PATH, not the agent's.
            env.retain(|(k, _)| k != "PATH");
        }
        let limits = spec.resources.as_ref().map(|r| &r.limits);
        let memory_limit = limits
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity::bytes(q).ok())
            .and_then(|b| u64::try_from(b).ok());
        let nano_cpus = limits
            .and_then(|l| l.get("cpu"))
            .and_then(|q| quantity::cpu_millis(q).ok())
            .map(|m| m * 1_000_000);
        let expand = |v: &[String]| v.iter().map(|a| env::expand(a, &env)).collect();
        let mounts = spec
            .volume_mounts
            .iter()
            .filter_map(|vm| {
                let v = self.pod.spec.volumes.iter().find(|v| v.name == vm.name)?;
                // An emptyDir lives in the pod's directory; a hostPath is
                // the node's own (checked and made by `host_path`).
                let host_path = match (&v.empty_dir, &v.host_path) {
                    (Some(_), _) => self.sandbox.dir.join("volumes").join(&v.name),
                    (None, Some(h)) => std::path::PathBuf::from(&h.path),
                    (None, None) => return None,
                };
                Some(Mount {
                    host_path,
                    container_path: vm.mount_path.clone(),
                    read_only: vm.read_only,
                    create: v.empty_dir.is_some(),
                })
            })
            .collect();
        let run_as = |f: fn(&SecurityContext) -> Option<i64>| {
            let own = spec.security_context.as_ref().and_then(f);
            let pod = self.pod.spec.security_context.as_ref().and_then(f);
            // The API keeps ids within 0..2^31.
            own.or(pod).and_then(|id| u32::try_from(id).ok())
        };
        ContainerConfig {
            run_as_user: run_as(|sc| sc.run_as_user),
            run_as_group: run_as(|sc| sc.run_as_group),
            name: spec.name.clone(),
            argv: env::argv(spec, &env),
            command: expand(&spec.command),
            args: expand(&spec.args),
            working_dir: spec.working_dir.clone(),
            memory_limit,
            nano_cpus,
            image: spec.image.clone(),
            pull_policy: env::pull_policy(spec),
            ports: spec
                .ports
                .iter()
                .filter_map(|p| Some((u16::try_from(p.container_port).ok()?, p.protocol.clone())))
                .collect(),
            mounts,
            env,
        }
    }
}
