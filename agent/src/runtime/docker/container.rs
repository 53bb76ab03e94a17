//! A pod's containers in Docker: created in the sandbox's namespaces with
//! the pod's labels, limits, mounts and log settings (after pulling the
//! image per its policy), and commands run inside them (exec probes, `kubectl exec`).

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use futures::StreamExt;
use keel_proto::api::meta::now_rfc3339;

use super::{
    DockerRuntime, LABEL_AGENT, LABEL_CONTAINER, LABEL_CREATED_NS, LABEL_NAMESPACE, LABEL_POD_NAME,
    LABEL_POD_UID, SANDBOX, api_error, image, list, message, remove, running,
};
use crate::runtime::process::proc_stat;
use crate::runtime::{
    ContainerConfig, ContainerHandle, ExecCommand, ExecSession, OutputStream, RuntimeError, Sandbox,
};

impl DockerRuntime {
    pub(super) async fn start_now(
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
        let created_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        labels.insert(LABEL_CREATED_NS.into(), created_ns.to_string());
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
            // runAsUser[:runAsGroup]; a group alone keeps the image's user,
            // which Docker cannot express, so it needs runAsUser with it.
            user: c.run_as_user.map(|u| match c.run_as_group {
                Some(g) => format!("{u}:{g}"),
                None => u.to_string(),
            }),
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

    pub(super) async fn exec_now(
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

    /// `kubectl exec` in container `id`: the command attached to the
    /// caller's stdin (when asked), its output demultiplexed, its exit
    /// code from the Engine once the output ends.
    pub(super) async fn exec_session(
        docker: Docker,
        id: String,
        cmd: ExecCommand,
    ) -> Result<ExecSession, RuntimeError> {
        let ex = docker
            .create_exec(
                &id,
                ExecConfig {
                    cmd: Some(cmd.argv.clone()),
                    attach_stdin: Some(cmd.stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(cmd.tty),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| RuntimeError::CannotRun(message(&e)))?;
        let opts = StartExecOptions {
            detach: false,
            tty: cmd.tty,
            output_capacity: None,
        };
        let started = docker
            .start_exec(&ex.id, Some(opts))
            .await
            .map_err(|e| RuntimeError::CannotRun(message(&e)))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::CannotRun("exec started detached".into()));
        };
        let output = output
            .filter_map(|r| {
                std::future::ready(match r {
                    Ok(LogOutput::StdErr { message }) => Some(Ok((OutputStream::Stderr, message))),
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Ok((OutputStream::Stdout, message)))
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(std::io::Error::other(message(&e)))),
                })
            })
            .boxed();
        let exec_id = ex.id;
        let exit = Box::pin(async move {
            // The output ends when the process does; its code follows shortly.
            for _ in 0..250 {
                let i = docker
                    .inspect_exec(&exec_id)
                    .await
                    .map_err(|e| RuntimeError::CannotRun(message(&e)))?;
                if i.running != Some(true) {
                    return Ok(i.exit_code.unwrap_or(-1) as i32);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(RuntimeError::CannotRun(
                "the command's output ended, but it kept running".into(),
            ))
        });
        Ok(ExecSession {
            stdin: cmd.stdin.then_some(input),
            output,
            exit,
        })
    }
}
