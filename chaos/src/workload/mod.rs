//! Client workloads that record histories for the checkers: `register`
//! (read/write/CAS for linearizability), `kv` (unique puts and reads for
//! the lost-write checker) and `watch` (writes plus watchers that fail over
//! between members, for watch completeness).

pub mod kv;
pub mod register;
pub mod watch;

use std::time::Duration;

use keel_proto::etcdserverpb::RangeRequest;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::mvccpb::KeyValue;
use tonic::transport::{Channel, Endpoint};

/// One lazily connected KV client per endpoint, each request bounded by `timeout`.
pub fn kv_clients(endpoints: &[String], timeout: Duration) -> Vec<KvClient<Channel>> {
    endpoints
        .iter()
        .filter_map(|ep| Endpoint::from_shared(format!("http://{ep}")).ok())
        .map(|ep| KvClient::new(ep.connect_timeout(timeout).timeout(timeout).connect_lazy()))
        .collect()
}

/// Every key under `prefix` on member `endpoint` (a linearizable read).
pub async fn range_prefix(
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<KeyValue>, tonic::Status> {
    let mut kv = kv_clients(&[endpoint.to_string()], timeout)
        .pop()
        .ok_or_else(|| tonic::Status::invalid_argument("bad endpoint"))?;
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    Ok(kv
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            ..Default::default()
        })
        .await?
        .into_inner()
        .kvs)
}
