//! The kv workload: every client puts keys nobody else writes
//! (`kv/<client>/<n>`, each written once with a unique value) to random
//! members and reads back keys it already had acknowledged. After healing,
//! the lost-write checker compares the acknowledged puts with what every
//! member holds and with what the reads saw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
use keel_proto::pki::Credentials;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{ERROR_BACKOFF, kv_clients, never_sent};

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct KvWorkload {
    pub endpoints: Vec<String>,
    /// How the clients dial the members.
    pub creds: Credentials,
    pub clients: u64,
    pub duration: Duration,
    pub timeout: Duration,
}

/// What a kv operation was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvKind {
    Put,
    Get,
}

/// How a kv operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "value")]
pub enum KvOutcome {
    /// Acknowledged; a get's value (`None`: absent).
    Ok(Option<String>),
    /// Definitely not applied.
    Fail,
    /// May or may not have applied.
    Unknown,
}

/// One kv operation (times in microseconds since the start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvOp {
    pub client: u64,
    pub kind: KvKind,
    pub key: String,
    /// The value a put wrote.
    pub value: Option<String>,
    pub call: u64,
    pub ret: u64,
    pub outcome: KvOutcome,
}

/// Runs the workload from `start` (the run's clock) until `start + duration`.
pub async fn run(w: &KvWorkload, start: Instant) -> Vec<KvOp> {
    let history = Arc::new(Mutex::new(Vec::new()));
    let deadline = start + w.duration;
    let mut tasks = Vec::new();
    for client in 0..w.clients {
        let (w, history) = (w.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            let clients = kv_clients(&w.creds, &w.endpoints, w.timeout);
            if clients.is_empty() {
                return;
            }
            let mut acked: Vec<(String, String)> = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (mut kv, read) = {
                    let mut r = rand::rng();
                    let read = (!acked.is_empty() && r.random_bool(0.5))
                        .then(|| acked[r.random_range(0..acked.len())].0.clone());
                    (clients[r.random_range(0..clients.len())].clone(), read)
                };
                let call = start.elapsed().as_micros() as u64;
                let op = match read {
                    Some(key) => {
                        let r = kv
                            .range(RangeRequest {
                                key: key.clone().into_bytes(),
                                ..Default::default()
                            })
                            .await;
                        let outcome = match r {
                            Ok(r) => KvOutcome::Ok(
                                r.into_inner()
                                    .kvs
                                    .first()
                                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                            ),
                            Err(_) => KvOutcome::Fail,
                        };
                        KvOp {
                            client,
                            kind: KvKind::Get,
                            key,
                            value: None,
                            call,
                            ret: start.elapsed().as_micros() as u64,
                            outcome,
                        }
                    }
                    None => {
                        n += 1;
                        let (key, value) = (format!("kv/{client}/{n}"), format!("{client}-{n}"));
                        let r = kv
                            .put(PutRequest {
                                key: key.clone().into_bytes(),
                                value: value.clone().into_bytes(),
                                ..Default::default()
                            })
                            .await;
                        let outcome = match r {
                            Ok(_) => {
                                acked.push((key.clone(), value.clone()));
                                KvOutcome::Ok(None)
                            }
                            Err(e) if never_sent(&e) => KvOutcome::Fail,
                            Err(_) => KvOutcome::Unknown,
                        };
                        KvOp {
                            client,
                            kind: KvKind::Put,
                            key,
                            value: Some(value),
                            call,
                            ret: start.elapsed().as_micros() as u64,
                            outcome,
                        }
                    }
                };
                if !matches!(op.outcome, KvOutcome::Ok(_)) {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
                history.lock().await.push(op);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut h = Arc::try_unwrap(history)
        .map(|m| m.into_inner())
        .unwrap_or_default();
    h.sort_by_key(|o| o.call);
    h
}

/// Every key under `prefix` with its value, as member `endpoint` holds it
/// (a linearizable read).
pub async fn final_state(
    creds: &Credentials,
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, tonic::Status> {
    Ok(super::range_prefix(creds, endpoint, prefix, timeout)
        .await?
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}
