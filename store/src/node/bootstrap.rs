//! Bringing a new data dir into a cluster: every initial member proposes the
//! same membership (`--initial-cluster`), or a new member asks an existing
//! one to add it (`--join`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};

use super::{LeaderRequest, Node, raft_err};
use crate::error::StoreError;
use crate::raft::types::{Member, member_id};

impl Node {
    /// Initializes or joins the cluster unless this member already is in one.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), StoreError> {
        let initialized = self.raft.is_initialized().await.map_err(raft_err)?;
        if initialized {
            return Ok(());
        }
        if !self.cfg.initial_cluster.is_empty() {
            let mut members = BTreeMap::new();
            for (name, addr) in &self.cfg.initial_cluster {
                let m = if *name == self.cfg.name {
                    self.me()
                } else {
                    Member {
                        name: name.clone(),
                        peer_addr: addr.clone(),
                        ..Default::default()
                    }
                };
                members.insert(member_id(name), m);
            }
            if !members.contains_key(&self.id) {
                return Err(StoreError::Config(format!(
                    "this member ({}) is not in --initial-cluster",
                    self.cfg.name
                )));
            }
            // Every initial member proposes the same membership at log index
            // 0, so it does not matter which of them starts first. If a peer
            // that initialized first already reached us (we voted), the
            // membership arrives by replication instead: not an error.
            match self.raft.initialize(members).await {
                Ok(()) => {}
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(%e, "cluster already bootstrapped by a peer");
                }
                Err(e) => return Err(raft_err(e)),
            }
        } else if let Some(join) = self.cfg.join.clone() {
            let node = self.clone();
            tokio::spawn(async move {
                let req = LeaderRequest::Add {
                    member: node.me(),
                    promote: true,
                };
                for attempt in 0u32.. {
                    match node.ask_to_serve(&join, &req).await {
                        Ok(Ok(_)) => {
                            tracing::info!("joined the cluster through {join}");
                            return;
                        }
                        Ok(Err(e)) => tracing::warn!(?e, attempt, "join refused, retrying"),
                        Err(e) => tracing::warn!(error = %e, attempt, "join failed, retrying"),
                    }
                    if *node.shutdown_tx.borrow() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        } else {
            return Err(StoreError::Config(
                "a new data dir needs --initial-cluster (new cluster) or --join (existing cluster)"
                    .into(),
            ));
        }
        Ok(())
    }
}
