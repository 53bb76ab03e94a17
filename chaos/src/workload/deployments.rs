//! The deployments workload: clients scale and update (roll) Deployments
//! through the REST API of random masters while faults happen, recording each
//! operation. Without agents, a simulated kubelet marks bound pods Running
//! and Ready (as the control-plane tests do), so rollouts can complete; after
//! healing, `converged` waits for the control plane to reach the desired state
//! and reports what is still wrong (`check::converge`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::api::core::Container;
use keel_proto::api::{Deployment, Namespace};
use keel_proto::client::{ApiClient, ClientError};
use keel_proto::pki::Credentials;
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::sim;

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct DeploymentsWorkload {
    /// REST API addresses of the masters.
    pub apis: Vec<String>,
    /// How the clients dial the API (the cluster's admin credentials).
    pub creds: Credentials,
    pub namespace: String,
    pub deployments: usize,
    pub clients: u64,
    pub duration: Duration,
    /// Per-request timeout; a change that times out is `unknown`.
    pub timeout: Duration,
}

/// One recorded operation.
#[derive(Debug, Clone, Serialize)]
pub struct DeployOp {
    pub client: u64,
    /// `scale` or `update`.
    pub op: &'static str,
    pub deployment: String,
    /// Replicas for a scale, the template version for an update.
    pub value: i64,
    pub invoke_us: u64,
    pub complete_us: u64,
    /// `ok`, `fail` (definitely not applied) or `unknown`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const NODES: usize = 3;

fn deployment(ns: &str, name: &str) -> Deployment {
    let mut d = Deployment::new(ns, name);
    d.spec.replicas = Some(2);
    d.spec
        .selector
        .match_labels
        .insert("app".into(), name.into());
    d.spec
        .template
        .metadata
        .labels
        .insert("app".into(), name.into());
    d.spec.template.spec.containers.push(Container {
        name: "main".into(),
        image: "chaos".into(),
        command: vec!["sleep".into(), "infinity".into()],
        ..Default::default()
    });
    d
}

async fn ignore_exists<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the namespace, simulated nodes and Deployments (idempotent).
pub async fn setup(w: &DeploymentsWorkload) -> Result<(), ClientError> {
    let c = ApiClient::new(&w.apis, &w.creds);
    ignore_exists(c.create(&Namespace::new("", &w.namespace)).await).await?;
    for i in 0..NODES {
        ignore_exists(
            c.create(&sim::node(
                &format!("chaos-node-{i}"),
                &format!("zone-{}", i % 3),
                "32",
                "64Gi",
            ))
            .await,
        )
        .await?;
    }
    for i in 0..w.deployments {
        ignore_exists(c.create(&deployment(&w.namespace, &format!("d{i}"))).await).await?;
    }
    Ok(())
}

/// Runs the clients (and the simulated kubelet) from `start` until
/// `start + duration`; returns the history.
pub async fn run_at(w: &DeploymentsWorkload, start: Instant) -> Vec<DeployOp> {
    let history = Arc::new(Mutex::new(Vec::new()));
    let deadline = start + w.duration;
    let kubelet = tokio::spawn(kubelet(
        ApiClient::new(&w.apis, &w.creds),
        w.namespace.clone(),
        deadline,
    ));
    let mut tasks = Vec::new();
    for client in 0..w.clients {
        let (w, history) = (w.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            let mut version = 0i64;
            while Instant::now() < deadline {
                // A fresh client per operation spreads requests over random masters.
                let mut apis = w.apis.clone();
                let first = rand::rng().random_range(0..apis.len());
                apis.rotate_left(first);
                let c = ApiClient::new(&apis, &w.creds);
                let d = format!("d{}", rand::rng().random_range(0..w.deployments));
                let (op, value, patch) = if rand::rng().random_bool(0.5) {
                    let r = rand::rng().random_range(0..=4);
                    ("scale", r, json!({"spec": {"replicas": r}}))
                } else {
                    version += 1;
                    let v = (client as i64) * 1_000_000 + version;
                    (
                        "update",
                        v,
                        json!({"spec": {"template": {"metadata": {"annotations": {"chaos/version": v.to_string()}}}}}),
                    )
                };
                let invoke = start.elapsed().as_micros() as u64;
                let r = tokio::time::timeout(
                    w.timeout,
                    c.merge_patch::<Deployment>(&w.namespace, &d, &patch),
                )
                .await;
                let (outcome, error) = match r {
                    Ok(Ok(_)) => ("ok", None),
                    // A 4xx/5xx answer from the API: the patch was not applied
                    // except when the store could not say (503/504).
                    Ok(Err(ClientError::Api(s))) if s.code < 500 => ("fail", Some(s.message.clone())),
                    Ok(Err(e)) => ("unknown", Some(e.to_string())),
                    Err(_) => ("unknown", Some("timed out".into())),
                };
                history.lock().await.push(DeployOp {
                    client,
                    op,
                    deployment: d,
                    value,
                    invoke_us: invoke,
                    complete_us: start.elapsed().as_micros() as u64,
                    outcome,
                    error,
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    kubelet.abort();
    let mut h = Arc::try_unwrap(history)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    h.sort_by_key(|o| o.invoke_us);
    h
}

/// Plays kubelet for the simulated nodes until `until`: every bound pod
/// becomes Running and Ready.
async fn kubelet(c: ApiClient, ns: String, until: Instant) {
    while Instant::now() < until {
        let _ = sim::mark_ready(&c, &ns).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
