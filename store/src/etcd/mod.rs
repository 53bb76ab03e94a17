//! The etcd v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance) served by
//! every member on its client address.

mod cluster;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::sync::Arc;

use keel_proto::MAX_REQUEST_BYTES;
use keel_proto::etcdserverpb::ResponseHeader;
use keel_proto::etcdserverpb::cluster_server::ClusterServer;
use keel_proto::etcdserverpb::kv_server::KvServer;
use keel_proto::etcdserverpb::lease_server::LeaseServer;
use keel_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use keel_proto::etcdserverpb::watch_server::WatchServer;
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use tokio::net::TcpListener;

use crate::error::EtcdError;
use crate::node::Node;

/// Concurrent watches one client identity may hold on one member (etcd has
/// no such limit; a runaway client must not exhaust a member).
pub const MAX_WATCHES_PER_CLIENT: usize = 10_000;

/// Messages up to this size are decoded so that an over-large request gets
/// etcd's own "request is too large" error rather than a transport error.
const DECODE_LIMIT: usize = 8 << 20;

/// The shared state of the etcd services.
#[derive(Clone)]
pub struct Etcd {
    node: Arc<Node>,
    watches: Arc<crate::watch_quota::WatchQuota>,
}

impl Etcd {
    /// A response header for this member at `revision` (0: the current one).
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let term = self.node.raft.metrics().borrow_watched().current_term;
        Some(ResponseHeader {
            cluster_id: self.node.kv.cluster_id(),
            member_id: self.node.id,
            revision: if revision == 0 {
                self.node.kv.revision()
            } else {
                revision
            },
            raft_term: term,
        })
    }
}

/// Refuses requests over etcd's default 1.5 MiB limit.
fn check_size<M: Message>(m: &M) -> Result<(), EtcdError> {
    if m.encoded_len() > MAX_REQUEST_BYTES {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

/// Serves the etcd API on `listener` until the node shuts down: mutual TLS
/// (masters and admins only) unless the member runs `--insecure`.
pub fn serve(node: Arc<Node>, listener: TcpListener) -> Result<(), crate::StoreError> {
    let svc = Etcd {
        node: node.clone(),
        watches: Arc::new(crate::watch_quota::WatchQuota::new(MAX_WATCHES_PER_CLIENT)),
    };
    let mut stop = node.shutdown_signal();
    let server = crate::net::server(node.cfg.tls.as_ref())?;
    let admins = crate::net::require_org(node.cfg.tls.is_some(), crate::net::CLIENT_ORGS);
    tokio::spawn(async move {
        let r = server
            .layer(tonic::service::InterceptorLayer::new(admins))
            .add_service(KvServer::new(svc.clone()).max_decoding_message_size(DECODE_LIMIT))
            .add_service(WatchServer::new(svc.clone()).max_decoding_message_size(DECODE_LIMIT))
            .add_service(LeaseServer::new(svc.clone()).max_decoding_message_size(DECODE_LIMIT))
            .add_service(ClusterServer::new(svc.clone()).max_decoding_message_size(DECODE_LIMIT))
            .add_service(
                MaintenanceServer::new(svc.clone())
                    .max_decoding_message_size(DECODE_LIMIT)
                    .max_encoding_message_size(DECODE_LIMIT),
            )
            .serve_with_incoming_shutdown(crate::net::incoming(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "client server failed");
        }
    });
    Ok(())
}
