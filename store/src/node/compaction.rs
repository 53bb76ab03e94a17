//! Automatic compaction on the leader: once history exceeds the retention
//! (`--auto-compact-revisions`) by a tenth, the leader proposes a compaction
//! through Raft, so the event history (and every snapshot) stays bounded.

use std::sync::Arc;
use std::time::Duration;

use keel_proto::keelraft::command;

use super::Node;
use crate::error::EtcdError;

impl Node {
    /// While leading: checks the history's length every 250 ms.
    pub async fn compaction_loop(self: Arc<Self>) {
        while self.idle(Duration::from_millis(250)).await {
            if self.is_leader() {
                self.auto_compact().await;
            }
        }
    }

    /// On the leader: proposes a compaction once history exceeds the
    /// retention by a tenth, so the event history (and every snapshot, which
    /// carries it) stays bounded.
    async fn auto_compact(&self) {
        let keep = self.cfg.auto_compact_revisions;
        if keep <= 0 {
            return;
        }
        let (rev, compacted) = (self.kv.revision(), self.kv.compact_revision());
        if rev - compacted.max(1) <= keep + keep / 10 {
            return;
        }
        let target = rev - keep;
        tracing::info!(revision = target, "auto-compacting history");
        let r = self
            .write(command::Op::Compact(
                keel_proto::etcdserverpb::CompactionRequest {
                    revision: target,
                    physical: false,
                },
            ))
            .await;
        if let Err(e) = r
            && e != EtcdError::Compacted
        {
            tracing::warn!(error = %e, "auto-compaction failed");
        }
    }
}
