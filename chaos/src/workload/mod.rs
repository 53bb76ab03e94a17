//! Client workloads that record histories for the checkers (`deployments`
//! drives the REST API; the others the etcd API): `register`
//! (read/write/CAS for linearizability), `kv` (unique puts and reads for
//! the lost-write checker) and `watch` (writes plus watchers that fail over
//! between members, for watch completeness).

pub mod deployments;
pub mod kv;
pub mod probe;
pub mod register;
pub mod watch;

use std::time::Duration;

use keel_proto::etcdserverpb::RangeRequest;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::mvccpb::KeyValue;
use keel_proto::pki::Credentials;
use tonic::transport::Channel;

/// Pause after a failed request, so a client does not spin on a dead member.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// One lazily connected KV client per endpoint (dialed with `creds`), each
/// request bounded by `timeout`.
pub fn kv_clients(
    creds: &Credentials,
    endpoints: &[String],
    timeout: Duration,
) -> Vec<KvClient<Channel>> {
    endpoints
        .iter()
        .filter_map(|ep| creds.endpoint(ep).ok())
        .map(|ep| KvClient::new(ep.connect_timeout(timeout).timeout(timeout).connect_lazy()))
        .collect()
}

/// Every key under `prefix` on member `endpoint` (a linearizable read).
pub async fn range_prefix(
    creds: &Credentials,
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<KeyValue>, tonic::Status> {
    let mut kv = kv_clients(creds, &[endpoint.to_string()], timeout)
        .pop()
        .ok_or_else(|| tonic::Status::invalid_argument("bad endpoint"))?;
    Ok(kv
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: keel_proto::prefix_end(prefix.as_bytes()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .kvs)
}

/// Whether a request certainly never reached the server (the connection
/// could not be made), so a write that failed this way did not happen.
pub fn never_sent(s: &tonic::Status) -> bool {
    let mut msg = s.message().to_lowercase();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        msg.push_str(&e.to_string().to_lowercase());
        src = e.source();
    }
    s.code() == tonic::Code::Unavailable
        && (msg.contains("tcp connect error") || msg.contains("connection refused"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::PutRequest;

    #[tokio::test]
    async fn a_refused_connection_is_known_not_sent() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let plain = Credentials::plaintext();
        let mut kv = kv_clients(
            &plain,
            &[format!("127.0.0.1:{port}")],
            Duration::from_secs(1),
        )
        .pop()
        .unwrap();
        let e = kv.put(PutRequest::default()).await.unwrap_err();
        assert!(never_sent(&e), "{e:?}");
        assert!(!never_sent(&tonic::Status::unavailable(
            "leader did not answer"
        )));
    }
}
