//! The peer port's gRPC service, the server side of the Raft transport:
//! hands peers' RPCs to the local openraft instance, answers read-index
//! requests from followers and serves forwarded leader requests. It lives
//! beside `raft/` rather than in it because it serves through `node`, which
//! itself builds on `raft/` (so the modules depend one way).

use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use keel_proto::keelraft::raft_service_server::RaftService;
use keel_proto::keelraft::{RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk};
use openraft::raft::AppendEntriesRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use crate::node::forward_stream;
use crate::node::{FORWARDED, LeaderError, LeaderRequest, Node, read_index};
use crate::raft::codec;
use crate::raft::types::{Raft, TypeConfig};

type C = TypeConfig;
type VoteC = openraft::alias::VoteOf<C>;
type SnapshotMetaC = openraft::alias::SnapshotMetaOf<C>;

/// gRPC service for peers.
pub struct RaftGrpc {
    raft: Raft,
    node: Arc<Node>,
}

impl RaftGrpc {
    pub fn new(node: Arc<Node>) -> Self {
        RaftGrpc {
            raft: node.raft.clone(),
            node,
        }
    }
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    codec::decode(&p.data).map_err(Status::invalid_argument)
}

fn reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    Ok(Response::new(RaftPayload {
        data: codec::encode(&r),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        reply(self.raft.vote(decode(req.get_ref())?).await)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        reply(self.raft.pre_vote(decode(req.get_ref())?).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        reply(self.raft.append_entries(decode(req.get_ref())?).await)
    }

    type StreamAppendStream = BoxStream<RaftPayload>;

    /// Pipelined replication from the leader (`raft::append_stream`): each
    /// request goes to openraft as it arrives, and each result goes back in
    /// request order once openraft has it, which for entries means once
    /// they are fsynced in this member's log. An undecodable request ends
    /// the input; a stopped Raft core ends the stream with an error.
    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let input = futures::stream::unfold(req.into_inner(), |mut inbound| async move {
            let p = inbound.message().await.ok()??;
            match codec::decode::<AppendEntriesRequest<C>>(&p.data) {
                Ok(rpc) => Some((rpc, inbound)),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable AppendEntries; closing the stream");
                    None
                }
            }
        });
        let out = self.raft.stream_append(input).map(|r| match r {
            Ok(result) => Ok(RaftPayload {
                data: codec::encode(&result),
            }),
            Err(fatal) => Err(Status::unavailable(fatal.to_string())),
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (VoteC, SnapshotMetaC) =
            codec::decode(&first.header).map_err(Status::invalid_argument)?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
        }
        let snapshot = openraft::alias::SnapshotOf::<C, Vec<u8>> {
            meta,
            snapshot: data,
        };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        reply(
            self.raft
                .handle_transfer_leader(decode(req.get_ref())?)
                .await,
        )
    }

    async fn leader(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r: LeaderRequest = decode(req.get_ref())?;
        // A request forwarded by a member is served only if this member
        // leads, so it never bounces between members; one from outside (a
        // joining member) is forwarded to the leader once.
        let result = if forwarded {
            self.node.serve_leader(r).await
        } else {
            self.node.leader_call(r).await.map_err(LeaderError::from)
        };
        Ok(Response::new(RaftPayload {
            data: codec::encode(&result),
        }))
    }

    type LeaderStreamStream = BoxStream<RaftPayload>;

    async fn leader_stream(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::LeaderStreamStream>, Status> {
        let out = forward_stream::serve(req.into_inner(), self.node.clone());
        Ok(Response::new(Box::pin(out)))
    }

    async fn stages(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let reset: bool = decode(req.get_ref())?;
        let figures = self.node.stages.figures();
        if reset {
            self.node.stages.reset();
        }
        Ok(Response::new(RaftPayload {
            data: codec::encode(&(self.node.is_leader(), figures)),
        }))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let index = read_index(&self.raft).await?;
        Ok(Response::new(ReadIndexResponse {
            read_log_id: codec::encode(&index),
        }))
    }
}

pub type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;
