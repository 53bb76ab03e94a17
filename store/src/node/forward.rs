//! Sending leader-only requests to the leader: a follower forwards them over
//! the peer port (marked, so they never bounce), gives up on a leader that
//! stops answering once another is known, and retries through elections.

use std::time::{Duration, Instant};

use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use keel_proto::keelraft::{CommandResult, RaftPayload, command, command_result};
use openraft::async_runtime::WatchReceiver;
use tonic::transport::Channel;

use super::forward_framed;
use super::forward_stream::{self, Forwarder};
use super::{LeaderError, LeaderRequest, LeaderResponse, Node};
use crate::config::ForwardWire;
use crate::error::EtcdError;
use crate::raft::codec;
use crate::raft::network::{PEER_MESSAGE_LIMIT, channel};
use crate::raft::types::Cmd;
use crate::stages::Stage;

/// The state machine's answer to a write, as the caller's result.
fn write_answer(r: LeaderResponse) -> Result<CommandResult, EtcdError> {
    match r {
        LeaderResponse::Write(r) => match r.0.result {
            Some(command_result::Result::Error(e)) => {
                Err(EtcdError::from_parts(e.code, &e.message))
            }
            Some(_) => Ok(r.0),
            None => Err(EtcdError::Internal("empty result".into())),
        },
        other => Err(EtcdError::Internal(format!("unexpected answer {other:?}"))),
    }
}

impl Node {
    pub(super) fn peer_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, EtcdError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let tls = self.cfg.tls.as_ref().map(|t| t.tonic_client());
        let ch = channel(addr, tls.as_ref()).map_err(|e| EtcdError::Unavailable(e.to_string()))?;
        let c = RaftServiceClient::new(ch)
            .max_decoding_message_size(PEER_MESSAGE_LIMIT)
            .max_encoding_message_size(PEER_MESSAGE_LIMIT);
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The forwarding stream to the leader at `addr` (started on first use,
    /// again after its task ended).
    fn forwarder(&self, addr: &str) -> Result<Forwarder, EtcdError> {
        let mut fw = self.forwarders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fw.get(addr).filter(|f| f.is_alive()) {
            return Ok(f.clone());
        }
        let f = match self.cfg.forward_wire {
            ForwardWire::Framed => {
                let (addr, tls) = (addr.to_string(), self.framed_tls.clone());
                Forwarder::start(|rx| forward_framed::run(addr, tls, rx))
            }
            ForwardWire::Grpc => {
                let client = self.peer_client(addr)?;
                Forwarder::start(|rx| forward_stream::run_grpc(client, rx))
            }
        };
        fw.insert(addr.to_string(), f.clone());
        Ok(f)
    }

    /// Sends `req` to the leader at `addr` as a member's own forward,
    /// batched over that leader's stream: served there only if it leads.
    async fn forward_to_leader(
        &self,
        addr: &str,
        req: &LeaderRequest,
    ) -> Result<Result<LeaderResponse, LeaderError>, tonic::Status> {
        let f = self
            .forwarder(addr)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let t = Instant::now();
        let r = f.call(req.clone()).await;
        self.stages.record(Stage::Forward, t, 1);
        r
    }

    /// Asks the member at `peer_addr` to serve `req` on the leader (it
    /// forwards once if it does not lead): for a joining member, which is
    /// not yet a member and knows only one address.
    pub(super) async fn ask_to_serve(
        &self,
        peer_addr: &str,
        req: &LeaderRequest,
    ) -> Result<Result<LeaderResponse, LeaderError>, tonic::Status> {
        let mut c = self
            .peer_client(peer_addr)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let data = codec::encode(req);
        let mut r = tonic::Request::new(RaftPayload { data });
        r.set_timeout(Duration::from_secs(60));
        let resp = c.leader(r).await?.into_inner();
        codec::decode(&resp.data).map_err(tonic::Status::internal)
    }

    /// Resolves once this member no longer sees `leader` as the leader.
    /// Waits on openraft's server metrics (vote, state, leader, membership),
    /// not on all metrics: those change with every applied entry, and every
    /// forward in flight would be woken for each.
    async fn leader_moves_from(&self, leader: u64) {
        let mut rx = self.raft.server_metrics();
        loop {
            if rx.borrow_watched().current_leader != Some(leader) {
                return;
            }
            if rx.changed().await.is_err() {
                // Raft stopped: the forward's own error will end the call.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Serves `req` on the leader, forwarding it when this member is not the
    /// leader and waiting (up to a few seconds) through elections.
    pub async fn leader_call(&self, req: LeaderRequest) -> Result<LeaderResponse, EtcdError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let idempotent = !matches!(req, LeaderRequest::Write(_));
        loop {
            let leader = self.current_leader();
            match leader {
                Some(l) if l == self.id => match self.serve_leader(req.clone()).await {
                    Err(LeaderError::NotLeader) => {}
                    Err(LeaderError::Etcd(c, m)) => return Err(EtcdError::from_parts(c, &m)),
                    Ok(r) => return Ok(r),
                },
                Some(l) => {
                    if let Some(m) = self.member(l) {
                        // A leader that stops answering without closing the
                        // connection (paused, or a dead network path) would
                        // hold the forward until its timeout; give up on it as
                        // soon as this member learns of another leader.
                        let answer = tokio::select! {
                            a = self.forward_to_leader(self.dial_addr(&m), &req) => Some(a),
                            _ = self.leader_moves_from(l) => None,
                        };
                        let Some(answer) = answer else {
                            if idempotent {
                                tracing::debug!(
                                    old = l,
                                    "leader changed during a forward, retrying"
                                );
                                continue;
                            }
                            return Err(EtcdError::Unavailable(
                                "the leader changed while the write was in flight; outcome unknown"
                                    .into(),
                            ));
                        };
                        match answer {
                            Ok(Ok(r)) => return Ok(r),
                            Ok(Err(LeaderError::NotLeader)) => {}
                            Ok(Err(LeaderError::Etcd(c, m))) => {
                                return Err(EtcdError::from_parts(c, &m));
                            }
                            Err(s) if idempotent || s.code() == tonic::Code::Unavailable => {
                                // Unavailable from the transport: the request never
                                // reached the leader, so retrying cannot apply it twice.
                                tracing::debug!(error = %s, "forward failed, retrying");
                            }
                            Err(s) => {
                                return Err(EtcdError::Unavailable(format!(
                                    "leader did not answer, outcome unknown: {}",
                                    s.message()
                                )));
                            }
                        }
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(if self.current_leader().is_none() {
                    EtcdError::NoLeader
                } else {
                    EtcdError::Timeout
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes a write through Raft and returns the state machine's answer
    /// once the entry is committed on a majority (and fsynced there) and applied.
    pub async fn write(&self, op: command::Op) -> Result<CommandResult, EtcdError> {
        let t = Instant::now();
        let r = write_answer(self.leader_call(LeaderRequest::Write(Cmd::new(op))).await?);
        self.stages.record(Stage::Serve, t, 1);
        r
    }

    /// Writes `op` only if this member is the leader, never forwarding it:
    /// the entry commits in this member's own term or not at all. For
    /// writes that claim leadership (the controllers' fencing token): a
    /// member that merely believes it leads (a stale view right after a
    /// restart) must not get such a write committed by the real leader.
    pub async fn write_as_leader(&self, op: command::Op) -> Result<CommandResult, EtcdError> {
        match self.serve_leader(LeaderRequest::Write(Cmd::new(op))).await {
            Ok(r) => write_answer(r),
            Err(LeaderError::NotLeader) => Err(EtcdError::Unavailable(
                "this member is not the leader".into(),
            )),
            Err(LeaderError::Etcd(code, msg)) => Err(EtcdError::from_parts(code, &msg)),
        }
    }
}
