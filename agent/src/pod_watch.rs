//! The pods bound to this node, watched over the masters' gRPC Agent service
//! (`proto/keel/agent.proto`): a full list first, then every change in order.
//! A broken stream resumes from the last revision on the next master; a
//! compacted revision lists again, so the sync loop sees a fresh full set.
//! Running pods are never touched by any of this.

use std::time::Duration;

use keel_proto::api::Pod;
use keel_proto::keelagent::WatchPodsRequest;
use keel_proto::keelagent::agent_client::AgentClient;
use keel_proto::pki::Credentials;
use tokio::sync::mpsc;

use crate::credentials::SharedCredentials;
use crate::watcher::Event;

/// Watches `node`'s pods through `masters` (API base URLs) until the
/// receiver goes away; each connection dials with the credentials current
/// at that moment (a renewed certificate is used from the next one on).
pub async fn run(
    masters: Vec<String>,
    node: String,
    creds: SharedCredentials,
    tx: mpsc::Sender<Event<Pod>>,
) {
    let mut rv = 0i64;
    let mut next = 0usize;
    let mut pause = Duration::from_millis(100);
    loop {
        let base = &masters[next % masters.len().max(1)];
        next += 1;
        match watch_once(base, &creds.get(), &node, &mut rv, &tx).await {
            Ok(()) => return,
            Err(e) => {
                if e.code() == tonic::Code::OutOfRange {
                    tracing::info!(%base, "pod watch revision compacted; listing again");
                    rv = 0;
                } else {
                    tracing::debug!(%base, error = %e.message(), "pod watch broke; trying the next master");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        // Try the next master at once; back off only after a whole round failed.
        if next.is_multiple_of(masters.len().max(1)) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// One stream from one master; `Ok` only when the receiver went away.
async fn watch_once(
    base: &str,
    creds: &Credentials,
    node: &str,
    rv: &mut i64,
    tx: &mpsc::Sender<Event<Pod>>,
) -> Result<(), tonic::Status> {
    let ep = creds
        .endpoint(base)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let ch = ep
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut stream = AgentClient::new(ch)
        .watch_pods(WatchPodsRequest {
            node_name: node.to_string(),
            resource_version: *rv,
        })
        .await?
        .into_inner();
    while let Some(ev) = stream.message().await? {
        let e = match ev.r#type.as_str() {
            "LIST" => Event::Reset(decode(&ev.object)?),
            "DELETED" => Event::Delete(decode(&ev.object)?),
            _ => Event::Apply(decode(&ev.object)?),
        };
        *rv = ev.resource_version;
        if tx.send(e).await.is_err() {
            return Ok(());
        }
    }
    Err(tonic::Status::unavailable("the master ended the stream"))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(b).map_err(|e| tonic::Status::internal(format!("undecodable pod: {e}")))
}
