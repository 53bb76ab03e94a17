//! Starting a member: open its storage and Raft (`Node::open`), serve the
//! peer port and the etcd client port, initialize or join the cluster, and
//! run its background loops (lease expiry, auto-compaction, address
//! publishing, scheduled backups). The one place a member's servers and
//! loops are started.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::NodeConfig;
use crate::error::StoreError;
use crate::node::Node;

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
    crate::peer_accept::serve(&node, peer_listener)?;
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
