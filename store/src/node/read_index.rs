//! Linearizable reads: a read barrier asks the leader for a read index (the
//! leader confirms its leadership with a quorum first), then waits until this
//! member applied that index.

use std::time::{Duration, Instant};

use keel_proto::keelraft::ReadIndexRequest;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use tonic::Status;

use super::Node;
use crate::error::EtcdError;
use crate::raft::codec;
use crate::raft::types::Raft;

/// On the leader: the log index a linearizable read must wait for.
///
/// openraft's read index is the larger of the leader's first entry in its
/// term and its committed index. A leader that restarts and resumes its term
/// without an election (its vote was committed) knows only the committed
/// index it had persisted, which may be far behind: with that alone, a read
/// right after a full-cluster restart returned a key's old value although
/// its write had been acknowledged (`cli/tests/hostile_requests.rs`). So the
/// read also waits for the leader's last log index: by leader completeness
/// that is at or past every committed entry, and the leader commits it as
/// soon as a majority holds it.
pub async fn read_index(raft: &Raft) -> Result<u64, Status> {
    let last_log = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    let fut = raft.get_read_linearizer(ReadPolicy::ReadIndex);
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
        Ok(Err(e)) => Err(Status::unavailable(format!("etcdserver: not leader: {e}"))),
        Ok(Ok(lin)) => Ok(lin.read_log_id().index().max(last_log)),
    }
}

impl Node {
    /// Blocks until this member's state machine reflects every write
    /// committed before the call (read-index through the leader).
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        if self.cfg.unsafe_local_reads {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let index = loop {
            let leader = self.current_leader();
            let attempt = match leader {
                Some(l) if l == self.id => read_index(&self.raft).await.ok(),
                Some(l) => match self.member(l) {
                    Some(m) => match self.peer_client(self.dial_addr(&m)) {
                        Ok(mut c) => {
                            let mut r = tonic::Request::new(ReadIndexRequest {});
                            r.set_timeout(Duration::from_secs(3));
                            match c.read_index(r).await {
                                Ok(resp) => {
                                    codec::decode::<u64>(&resp.into_inner().read_log_id).ok()
                                }
                                Err(_) => None,
                            }
                        }
                        Err(_) => None,
                    },
                    None => None,
                },
                None => None,
            };
            if let Some(i) = attempt {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(if leader.is_none() {
                    EtcdError::NoLeader
                } else {
                    EtcdError::Timeout
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500));
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| EtcdError::Timeout)?;
        Ok(())
    }
}
