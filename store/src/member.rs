//! Starting a member: open its storage and Raft (`Node::open`), serve the
//! peer port and the etcd client port, initialize or join the cluster, and
//! run its background loops (lease expiry, auto-compaction, address
//! publishing, scheduled backups). The one place a member's servers and
//! loops are started.

use std::sync::Arc;

use keel_proto::keelraft::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;

use crate::config::NodeConfig;
use crate::error::StoreError;
use crate::node::Node;
use crate::peer::RaftGrpc;
use crate::raft::network::PEER_MESSAGE_LIMIT;

/// Starts a member as configured and returns it running.
pub async fn start(cfg: NodeConfig) -> Result<Arc<Node>, StoreError> {
    let node = Node::open(cfg.clone()).await?;
    let peer_listener = TcpListener::bind(&cfg.listen_peer).await.map_err(|e| {
        StoreError::Config(format!(
            "cannot listen for peers on {}: {e}",
            cfg.listen_peer
        ))
    })?;
    let client_listener = TcpListener::bind(&cfg.listen_client).await.map_err(|e| {
        StoreError::Config(format!(
            "cannot listen for clients on {}: {e}",
            cfg.listen_client
        ))
    })?;
    serve_peers(&node, peer_listener)?;
    crate::etcd::serve(node.clone(), client_listener)?;

    node.bootstrap().await?;
    tokio::spawn(node.clone().lessor_loop());
    tokio::spawn(node.clone().compaction_loop());
    tokio::spawn(node.clone().publish_loop());
    tokio::spawn(node.clone().address_loop());
    if let Some(dir) = cfg.backup_dir.clone() {
        tokio::spawn(crate::backup::schedule::run(node.clone(), dir));
    }
    tracing::info!(
        name = %cfg.name, id = node.id, peer = %cfg.peer_addr(), client = %cfg.client_addr(),
        zone = %cfg.zone, "member started"
    );
    Ok(node)
}

/// Serves the Raft peer port until the member shuts down. Only masters
/// (certificates of organisation keel:masters signed by the cluster CA) may
/// connect.
fn serve_peers(node: &Arc<Node>, listener: TcpListener) -> Result<(), StoreError> {
    let mut stop = node.shutdown_signal();
    let svc = RaftServiceServer::new(RaftGrpc::new(node.clone()))
        .max_decoding_message_size(PEER_MESSAGE_LIMIT)
        .max_encoding_message_size(PEER_MESSAGE_LIMIT);
    let server = crate::net::server(node.cfg.tls.as_ref())?;
    let only_masters = crate::net::require_org(node.cfg.tls.is_some(), crate::net::PEER_ORGS);
    tokio::spawn(async move {
        let r = server
            .layer(tonic::service::InterceptorLayer::new(only_masters))
            .add_service(svc)
            .serve_with_incoming_shutdown(crate::net::incoming(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "peer server failed");
        }
    });
    Ok(())
}
