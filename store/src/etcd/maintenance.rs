//! etcd's Maintenance service: status, hashes, snapshot streaming and leader
//! transfer (alarms and defragmentation are accepted no-ops).

use keel_proto::etcdserverpb::maintenance_server::Maintenance;
use keel_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use openraft::ServerState;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Etcd;
use crate::node::LeaderRequest;
use crate::peer::BoxStream;
use crate::raft::log_store::LogStore;

/// The etcd API version Keel's subset follows.
pub const API_VERSION: &str = "3.5.0";
const SNAPSHOT_CHUNK: usize = 1 << 20;

#[tonic::async_trait]
impl Maintenance for Etcd {
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(AlarmResponse {
            header: self.header(0),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.node.metrics();
        let db = self.node.kv.size_on_disk() + LogStore::disk_size(&self.node.cfg.data_dir);
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node.id);
        let mut errors = Vec::new();
        if m.current_leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        Ok(Response::new(StatusResponse {
            header: self.header(0),
            version: API_VERSION.into(),
            db_size: db as i64,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            db_size_in_use: db as i64,
            is_learner: !voter && m.state != ServerState::Leader,
            zone: self.node.cfg.zone.clone(),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Ok(Response::new(DefragmentResponse {
            header: self.header(0),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, _, rev) = self.node.kv.hash_kv(0)?;
        Ok(Response::new(HashResponse {
            header: self.header(rev),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (hash, compact, rev) = self.node.kv.hash_kv(req.into_inner().revision)?;
        Ok(Response::new(HashKvResponse {
            header: self.header(0),
            hash,
            compact_revision: compact,
            hash_revision: rev,
        }))
    }

    type SnapshotStream = BoxStream<SnapshotResponse>;

    /// Streams a dump of the key space (padded to 512-byte pages) followed by
    /// its SHA-256, the shape etcd's own snapshot stream has.
    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // The records at one revision, taken under the apply lock without
        // copying them (`mvcc::snapshot::Records`), off the async workers;
        // each piece is encoded as it goes out, so the member never holds
        // the whole dump.
        let kv = self.node.kv.clone();
        let t = std::time::Instant::now();
        let records = tokio::task::spawn_blocking(move || kv.records())
            .await
            .map_err(|e| Status::internal(format!("snapshot task: {e}")))?;
        // etcdctl checks that the data is a whole number of 512-byte pages.
        let len = records.encoded_len();
        let padded = crate::mvcc::snapshot::padded_len(len, 512);
        tracing::debug!(
            bytes = padded,
            ms = t.elapsed().as_millis() as u64,
            "snapshot: the key space's records taken"
        );
        let header = self.header(0);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Pieces of the dump, hashed as they go out; the SHA-256 that
            // etcdctl checks follows as the last message.
            let total = padded + 32;
            let mut sum = Sha256::new();
            let mut sent = 0;
            let mut send = |blob: prost::bytes::Bytes| {
                sent += blob.len();
                let r = SnapshotResponse {
                    header,
                    remaining_bytes: (total - sent) as u64,
                    blob,
                    version: API_VERSION.into(),
                };
                tx.send(Ok(r))
            };
            let mut encoded = 0;
            for mut blob in records.chunks(SNAPSHOT_CHUNK) {
                encoded += blob.len();
                if encoded == len {
                    // The last piece: the end marker and the padding.
                    blob.resize(blob.len() + padded - len, 0);
                }
                sum.update(&blob);
                if send(blob.into()).await.is_err() {
                    return;
                }
            }
            let _ = send(sum.finalize().to_vec().into()).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.node
            .leader_call(LeaderRequest::TransferLeader(req.into_inner().target_id))
            .await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.header(0),
        }))
    }
}
