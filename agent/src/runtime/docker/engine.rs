//! The Engine API calls the Docker runtime shares: connecting (failing
//! clearly when the daemon is unreachable), listing Keel's containers by
//! label, removing them (a pod's members before its sandbox), reading how a
//! container ended, and error mapping.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use keel_proto::api::meta::now_rfc3339;

use super::{LABEL_AGENT, LABEL_CONTAINER, SANDBOX};
use crate::runtime::{Exit, RuntimeError};

pub(crate) fn api_error(what: &str, e: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Setup(format!("{what}: {}", message(&e)))
}

pub(crate) fn message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

pub(crate) fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Connects to the Engine (`DOCKER_HOST` or the local socket), failing
/// with a clear error when it is unreachable.
pub async fn connect_engine() -> Result<Docker, RuntimeError> {
    let d = Docker::connect_with_defaults()
        .map_err(|e| RuntimeError::Setup(format!("docker: {e}")))?
        .with_timeout(Duration::from_secs(600));
    let d = d.negotiate_version().await.map_err(|e| {
        RuntimeError::Setup(format!(
            "the Docker daemon is unreachable (DOCKER_HOST or /var/run/docker.sock): {e}"
        ))
    })?;
    d.ping()
        .await
        .map_err(|e| RuntimeError::Setup(format!("the Docker daemon does not answer: {e}")))?;
    Ok(d)
}

/// Removes every container and the network of agent `agent` (tests and
/// `keel up` clean-up). Returns how many containers went.
pub async fn remove_agent(docker: &Docker, agent: &str) -> usize {
    let all = list(docker, &[(LABEL_AGENT, agent)])
        .await
        .unwrap_or_default();
    let n = all.len();
    remove_all(docker, all).await;
    let _ = docker.remove_network(&format!("keel-{agent}")).await;
    n
}

/// Every container (running or not) of agent `agent`.
pub async fn containers_of(
    docker: &Docker,
    agent: &str,
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    list(docker, &[(LABEL_AGENT, agent)]).await
}

/// Containers (running or not) carrying every label of `labels`.
pub(crate) async fn list(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    let filters: HashMap<String, Vec<String>> = HashMap::from([(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .map_err(|e| api_error("listing containers", e))
}

pub(crate) fn is_sandbox(c: &ContainerSummary) -> bool {
    c.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_CONTAINER))
        .is_some_and(|n| n == SANDBOX)
}

/// Removes containers: those joined to a sandbox first, then the sandboxes
/// (removing a sandbox under its members leaks network endpoints).
pub(crate) async fn remove_all(docker: &Docker, all: Vec<ContainerSummary>) {
    let (sandboxes, members): (Vec<_>, Vec<_>) = all.into_iter().partition(is_sandbox);
    for group in [members, sandboxes] {
        futures::future::join_all(group.iter().filter_map(|c| c.id.clone()).map(|id| {
            let d = docker.clone();
            async move { remove(&d, &id).await }
        }))
        .await;
    }
}

pub(crate) async fn remove(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptionsBuilder::new().force(true).build();
    if let Err(e) = docker.remove_container(id, Some(opts)).await
        && !is_status(&e, 404)
    {
        tracing::warn!(container = id, error = %message(&e), "cannot remove container");
    }
}

pub(crate) fn running(c: &ContainerSummary) -> bool {
    c.state.as_ref().is_some_and(|s| s.to_string() == "running")
}

/// The exit of container `id` as the Engine recorded it.
pub(crate) async fn exit_of(docker: &Docker, id: &str) -> Exit {
    let st = docker
        .inspect_container(id, None)
        .await
        .ok()
        .and_then(|i| i.state);
    let Some(st) = st else {
        return Exit {
            code: None,
            signal: None,
            finished_at: now_rfc3339(),
            reason: None,
        };
    };
    let code = st.exit_code.map(|c| c as i32);
    Exit {
        code,
        signal: code.filter(|c| *c > 128 && *c < 160).map(|c| c - 128),
        finished_at: st
            .finished_at
            .filter(|f| !f.starts_with("0001"))
            .unwrap_or_else(now_rfc3339),
        reason: st
            .oom_killed
            .unwrap_or(false)
            .then(|| "OOMKilled".to_string()),
    }
}

pub(crate) async fn is_running(docker: &Docker, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    docker
        .inspect_container(id, None)
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}
