//! Availability probes: one writer per member that always writes through
//! that same member, every `interval`. The register clients pick a random
//! member per request and wait for each answer, so within a few requests
//! all of them are waiting on a paused or cut-off member and no write is
//! acknowledged anywhere, however healthy the rest is. The probes on the
//! members a fault did not touch show what the cluster itself did: the
//! report's write unavailability on the untouched side comes from them.

use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::PutRequest;
use keel_proto::pki::Credentials;
use serde::{Deserialize, Serialize};

use super::{ERROR_BACKOFF, kv_clients};

/// One probe write (times in µs since the start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOp {
    pub member: usize,
    pub call: u64,
    pub ret: u64,
    pub ok: bool,
}

/// Runs one probe per endpoint until `start + duration`.
pub async fn run(
    creds: Credentials,
    endpoints: Vec<String>,
    duration: Duration,
    timeout: Duration,
    interval: Duration,
    start: Instant,
) -> Vec<ProbeOp> {
    let deadline = start + duration;
    let tasks: Vec<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(member, ep)| {
            let creds = creds.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let Some(mut kv) = kv_clients(&creds, &[ep], timeout).pop() else {
                    return out;
                };
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let call = start.elapsed().as_micros() as u64;
                    let ok = kv
                        .put(PutRequest {
                            key: format!("probe/{member}").into_bytes(),
                            value: n.to_string().into_bytes(),
                            ..Default::default()
                        })
                        .await
                        .is_ok();
                    out.push(ProbeOp {
                        member,
                        call,
                        ret: start.elapsed().as_micros() as u64,
                        ok,
                    });
                    tokio::time::sleep(if ok { interval } else { ERROR_BACKOFF }).await;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_by_key(|p| p.call);
    all
}
