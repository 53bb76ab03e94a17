//! The register workload: clients read, write and compare-and-swap a small
//! set of keys through the etcd API of random members, recording each
//! operation's invocation, completion and outcome for the linearizability
//! checker. A write or CAS that errors is recorded as `Unknown` (it may
//! have applied); a read that errors had no effect and is `Failed`.
//!
//! With `key_period` set, the key set rotates (`reg/<generation>/<k>`), as
//! Jepsen's independent keys do: each key's history stays short, so the
//! checker can prove a violation exhaustively even with unknown outcomes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
};
use keel_proto::pki::Credentials;
use rand::Rng;
use tokio::sync::Mutex;

use super::{ERROR_BACKOFF, never_sent};

// The register history's operations, as `check::linearizable` checks them.

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read,
    Write(i64),
    /// Compare-and-swap: set to `.1` if the value is `.0`.
    Cas(i64, i64),
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read's value (`None`: the key was absent).
    Read(Option<i64>),
    /// A write was acknowledged.
    Written,
    /// A CAS was answered: whether it swapped.
    Swapped(bool),
    /// Definitely not applied (the server said no): ignored by the check.
    Failed,
    /// Timed out or lost: it may or may not have taken effect, at any time
    /// after its invocation.
    Unknown,
}

/// One operation of a history: invocation and completion times (any
/// monotonic unit), the key, the request and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub op: Op,
    pub call: u64,
    /// Completion time; ignored for `Unknown` outcomes.
    pub ret: u64,
    pub outcome: Outcome,
}

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct RegisterWorkload {
    pub endpoints: Vec<String>,
    /// How the clients dial the members.
    pub creds: Credentials,
    pub clients: u64,
    pub keys: u64,
    pub duration: Duration,
    /// Per-request timeout; a write that times out is `Unknown`.
    pub timeout: Duration,
    /// Move to a fresh set of keys this often (`None`: the same keys throughout).
    pub key_period: Option<Duration>,
}

fn value_of(kvs: &[keel_proto::mvccpb::KeyValue]) -> Option<i64> {
    kvs.first()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
}

/// Runs the workload and returns the recorded history (times in
/// microseconds since the start).
pub async fn run(w: &RegisterWorkload) -> Vec<Operation> {
    run_at(w, Instant::now()).await
}

/// Runs the workload from `start` (the run's clock) until `start + duration`.
pub async fn run_at(w: &RegisterWorkload, start: Instant) -> Vec<Operation> {
    let history = Arc::new(Mutex::new(Vec::new()));
    let deadline = start + w.duration;
    let mut tasks = Vec::new();
    for client in 0..w.clients {
        let (w, history) = (w.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            // One lazily connected channel per member, reused across operations.
            let clients: Vec<_> = w
                .endpoints
                .iter()
                .filter_map(|ep| w.creds.endpoint(ep).ok())
                .map(|ep| {
                    KvClient::new(
                        ep.connect_timeout(w.timeout)
                            .timeout(w.timeout)
                            .connect_lazy(),
                    )
                })
                .collect();
            if clients.is_empty() {
                return;
            }
            let mut n: i64 = 0;
            while Instant::now() < deadline {
                let generation = match w.key_period {
                    Some(p) if !p.is_zero() => {
                        format!("{}/", start.elapsed().as_millis() / p.as_millis())
                    }
                    _ => String::new(),
                };
                let (mut kv, key, choice) = {
                    let mut r = rand::rng();
                    (
                        clients[r.random_range(0..clients.len())].clone(),
                        format!("reg/{generation}{}", r.random_range(0..w.keys.max(1))),
                        r.random_range(0..3u8),
                    )
                };
                // Unique values: client in the high bits, a counter below.
                n += 1;
                let v = (client as i64) << 32 | n;
                let op = match choice {
                    0 => Op::Read,
                    1 => Op::Write(v),
                    _ => Op::Cas(v - 1, v),
                };
                let call = start.elapsed().as_micros() as u64;
                let outcome = match &op {
                    Op::Read => match kv
                        .range(RangeRequest {
                            key: key.clone().into_bytes(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => Outcome::Read(value_of(&r.into_inner().kvs)),
                        Err(_) => Outcome::Failed,
                    },
                    Op::Write(v) => match kv
                        .put(PutRequest {
                            key: key.clone().into_bytes(),
                            value: v.to_string().into_bytes(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => Outcome::Written,
                        Err(e) if never_sent(&e) => Outcome::Failed,
                        Err(_) => Outcome::Unknown,
                    },
                    Op::Cas(from, to) => {
                        let txn = TxnRequest {
                            compare: vec![Compare {
                                result: compare::CompareResult::Equal as i32,
                                target: compare::CompareTarget::Value as i32,
                                key: key.clone().into_bytes(),
                                target_union: Some(compare::TargetUnion::Value(
                                    from.to_string().into_bytes(),
                                )),
                                range_end: Vec::new(),
                            }],
                            success: vec![RequestOp {
                                request: Some(request_op::Request::RequestPut(PutRequest {
                                    key: key.clone().into_bytes(),
                                    value: to.to_string().into_bytes(),
                                    ..Default::default()
                                })),
                            }],
                            failure: Vec::new(),
                        };
                        match kv.txn(txn).await {
                            Ok(r) => Outcome::Swapped(r.into_inner().succeeded),
                            Err(e) if never_sent(&e) => Outcome::Failed,
                            Err(_) => Outcome::Unknown,
                        }
                    }
                };
                let ret = start.elapsed().as_micros() as u64;
                if matches!(outcome, Outcome::Failed | Outcome::Unknown) {
                    // Do not spin on a member that is down.
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
                history.lock().await.push(Operation {
                    client,
                    key,
                    op,
                    call,
                    ret,
                    outcome,
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(history)
        .map(|m| m.into_inner())
        .unwrap_or_default()
}
