//! The requests only the leader can serve (writes, membership changes, lease
//! keep-alives), their answers, and the leader's dispatch of them.

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::error::EtcdError;
use crate::raft::types::{Cmd, Member};
use crate::stages::Stage;

/// gRPC metadata marking a leader request forwarded by a member.
pub const FORWARDED: &str = "keel-forwarded";

/// A request only the leader can serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    Write(Cmd),
    /// Add or update a member's record (addresses, zone) without changing its role.
    SetMember(Member),
    /// Add a member as a learner; with `promote`, wait until it caught up and make it a voter.
    Add {
        member: Member,
        promote: bool,
    },
    Promote(u64),
    Remove(u64),
    TransferLeader(u64),
    KeepAlive(i64),
    TimeToLive(i64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderResponse {
    Write(crate::raft::types::CmdResult),
    Done,
    /// (remaining seconds, granted seconds); remaining is -1 when unknown.
    Ttl(i64, i64),
}

/// Why the leader could not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderError {
    /// Not (or no longer) the leader: retry on the new one.
    NotLeader,
    /// A definite failure with etcd's code and message.
    Etcd(i32, String),
}

impl From<EtcdError> for LeaderError {
    fn from(e: EtcdError) -> Self {
        LeaderError::Etcd(e.code() as i32, e.to_string())
    }
}

impl Node {
    /// Serves a leader-only request on this member, which believes it leads.
    pub async fn serve_leader(&self, req: LeaderRequest) -> Result<LeaderResponse, LeaderError> {
        if !self.is_leader() {
            return Err(LeaderError::NotLeader);
        }
        let t = std::time::Instant::now();
        match req {
            LeaderRequest::Write(cmd) => match self.raft.client_write(cmd).await {
                Ok(r) => {
                    self.stages.record(Stage::Propose, t, 1);
                    Ok(LeaderResponse::Write(r.data))
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Err(LeaderError::NotLeader)
                }
                Err(e) => Err(EtcdError::Unavailable(e.to_string()).into()),
            },
            LeaderRequest::SetMember(m) => self.set_member(m).await,
            LeaderRequest::Add { member, promote } => self.add_member(member, promote).await,
            LeaderRequest::Promote(id) => self.promote(id).await,
            LeaderRequest::Remove(id) => self.remove(id).await,
            LeaderRequest::TransferLeader(to) => self.transfer_leader(to).await,
            LeaderRequest::KeepAlive(id) => Ok(self.keep_alive(id)),
            LeaderRequest::TimeToLive(id) => Ok(self.time_to_live(id)),
        }
    }
}
