//! Membership changes on the leader: adding members as learners and
//! promoting them once caught up, removing voters only while a quorum of the
//! rest answers, updating member records, and leadership transfer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};

use super::{LeaderError, LeaderResponse, Node};
use crate::error::EtcdError;
use crate::raft::types::{Member, TypeConfig, member_id};

type Answer = Result<LeaderResponse, LeaderError>;

impl Node {
    pub(super) async fn set_member(&self, m: Member) -> Answer {
        let id = member_id(&m.name);
        if self.member(id).is_none() {
            return Err(EtcdError::MemberNotFound.into());
        }
        if self.member(id).as_ref() != Some(&m) {
            self.change(ChangeMembers::SetNodes(BTreeMap::from([(id, m)])))
                .await?;
        }
        Ok(LeaderResponse::Done)
    }

    pub(super) async fn add_member(&self, member: Member, promote: bool) -> Answer {
        let id = member_id(&member.name);
        let existing = self.members().into_iter().find(|(i, _, _)| *i == id);
        if existing.is_none() {
            if self
                .members()
                .iter()
                .any(|(_, m, _)| m.peer_addr == member.peer_addr)
            {
                return Err(EtcdError::PeerUrlExists.into());
            }
            self.raft
                .add_learner(id, member.clone(), false)
                .await
                .map_err(|e| map_change_err(e.to_string(), &e))?;
        }
        if promote && !existing.is_some_and(|(_, _, voter)| voter) {
            self.wait_caught_up(id, Duration::from_secs(120)).await?;
            self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                .await?;
        }
        Ok(LeaderResponse::Done)
    }

    pub(super) async fn promote(&self, id: u64) -> Answer {
        match self.members().into_iter().find(|(i, _, _)| *i == id) {
            None => return Err(EtcdError::MemberNotFound.into()),
            Some((_, _, true)) => {
                return Err(
                    EtcdError::InvalidArgument("can only promote a learner member".into()).into(),
                );
            }
            Some(_) => {}
        }
        self.wait_caught_up(id, Duration::from_secs(5))
            .await
            .map_err(|_| {
                LeaderError::from(EtcdError::InvalidArgument(
                    "can only promote a learner member which is in sync with leader".into(),
                ))
            })?;
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await?;
        Ok(LeaderResponse::Done)
    }

    pub(super) async fn remove(&self, id: u64) -> Answer {
        let members = self.members();
        let Some((_, _, voter)) = members.iter().find(|(i, _, _)| *i == id) else {
            return Err(EtcdError::MemberNotFound.into());
        };
        if *voter {
            let remaining: Vec<u64> = members
                .iter()
                .filter(|(i, _, v)| *v && *i != id)
                .map(|(i, _, _)| *i)
                .collect();
            if remaining.is_empty() || !self.quorum_answers(&remaining).await {
                return Err(EtcdError::NotEnoughStartedMembers.into());
            }
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        }
        if self.member(id).is_some() {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?;
        }
        Ok(LeaderResponse::Done)
    }

    pub(super) async fn transfer_leader(&self, to: u64) -> Answer {
        let ok = self
            .members()
            .iter()
            .any(|(i, _, voter)| *i == to && *voter);
        if !ok {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if to == self.id {
            return Ok(LeaderResponse::Done);
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| LeaderError::from(EtcdError::Internal(e.to_string())))?;
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(5)))
            .current_leader(to, "transfer leader")
            .await;
        if self.metrics().current_leader == Some(to) {
            Ok(LeaderResponse::Done)
        } else {
            Err(EtcdError::Timeout.into())
        }
    }

    async fn change(&self, c: ChangeMembers<u64, Member>) -> Result<(), LeaderError> {
        match self.raft.change_membership(c, false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(LeaderError::NotLeader)
            }
            Err(e) => Err(map_change_err(e.to_string(), &e)),
        }
    }

    /// Sends a heartbeat now and waits (up to one election timeout) for a
    /// majority of `voters` to answer it, so a member that died a moment
    /// ago is not counted as healthy.
    async fn quorum_answers(&self, voters: &[u64]) -> bool {
        type Instant = openraft::alias::InstantOf<TypeConfig>;
        let sent = <Instant as openraft::Instant>::now();
        if self.raft.trigger().heartbeat().await.is_err() {
            return false;
        }
        let deadline = std::time::Instant::now() + self.cfg.election_max;
        loop {
            let answered = {
                let m = self.raft.metrics();
                let m = m.borrow_watched();
                voters
                    .iter()
                    .filter(|id| {
                        **id == self.id
                            || m.heartbeat
                                .as_ref()
                                .and_then(|h| h.get(*id).cloned().flatten())
                                .is_some_and(|t| *t >= sent)
                    })
                    .count()
            };
            if answered > voters.len() / 2 {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the leader has replicated its whole log to `id`.
    async fn wait_caught_up(&self, id: u64, max: Duration) -> Result<(), LeaderError> {
        let deadline = Instant::now() + max;
        loop {
            let m = self.metrics();
            if m.state != ServerState::Leader {
                return Err(LeaderError::NotLeader);
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index);
            if let (Some(mi), Some(last)) = (matched, m.last_log_index)
                && mi + 10 >= last
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EtcdError::Timeout.into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn map_change_err<E: std::fmt::Debug>(msg: String, e: &E) -> LeaderError {
    let dbg = format!("{e:?}");
    if dbg.contains("ForwardToLeader") {
        LeaderError::NotLeader
    } else {
        EtcdError::Unavailable(format!("membership change failed: {msg}")).into()
    }
}
