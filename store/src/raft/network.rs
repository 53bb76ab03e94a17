//! The client side of the Raft transport: openraft's RPCs to peers over tonic
//! gRPC (`keelraft.RaftService`), with openraft messages as postcard payloads;
//! replication goes over one pipelined stream per peer (`append_stream`), a
//! framed connection of its own (`framed`) unless a benchmark asks for gRPC.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use keel_proto::keelraft::{RaftPayload, SnapshotChunk};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{
    RPCOption, RaftNetworkFactory, stream_append_sequential, v2::RaftNetworkV2,
};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::config::ReplicationWire;
use crate::raft::append_stream::{self, Wire};
use crate::raft::codec;
use crate::raft::framed;
use crate::raft::state_machine::SnapshotData;
use crate::raft::types::{Member, TypeConfig};
use crate::stages::{Stage, Stages};

type C = TypeConfig;
type VoteC = openraft::alias::VoteOf<C>;
type SnapshotC = openraft::alias::SnapshotOf<C, SnapshotData>;
type StreamAnswer = Result<StreamAppendResult<C>, RPCError<C>>;

/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The current peer address of every member, kept up to date from the
/// membership by the node. openraft builds a peer's client once and keeps
/// it; consulting this book on each RPC lets a member that moved to a new
/// address be reached again.
pub type AddressBook = Arc<RwLock<HashMap<u64, String>>>;

/// Opens lazily connected gRPC channels to peers.
#[derive(Clone)]
pub struct NetworkFactory {
    pub book: AddressBook,
    /// Mutual TLS towards peers (None only with `--insecure`).
    pub tls: Option<ClientTlsConfig>,
    /// The same for framed replication connections (ALPN `framed::ALPN`).
    pub framed_tls: Option<Arc<rustls::ClientConfig>>,
    /// Counts replication round trips (`crate::stages`).
    pub stages: Stages,
    /// The wire replication goes over.
    pub wire: ReplicationWire,
    /// An answer on the replication stream to a request sent longer ago
    /// than this ends the stream instead of counting (`append_stream`).
    pub stale_answer: Duration,
}

/// A connection to one peer.
pub struct PeerClient {
    target: u64,
    addr: String,
    client: RaftServiceClient<Channel>,
    book: AddressBook,
    tls: Option<ClientTlsConfig>,
    framed_tls: Option<Arc<rustls::ClientConfig>>,
    stages: Stages,
    wire: ReplicationWire,
    /// The framed connection kept between streams (`framed::Idle`).
    idle: framed::Idle,
    stale_answer: Duration,
}

fn raft_client(addr: &str, tls: Option<&ClientTlsConfig>) -> RaftServiceClient<Channel> {
    let ch = channel(addr, tls).unwrap_or_else(|_| {
        // An unparsable address yields a channel that never connects;
        // every RPC then fails as Unreachable and openraft backs off.
        Endpoint::from_static("http://0.0.0.0:1").connect_lazy()
    });
    RaftServiceClient::new(ch)
        .max_decoding_message_size(PEER_MESSAGE_LIMIT)
        .max_encoding_message_size(PEER_MESSAGE_LIMIT)
}

/// The largest gRPC message on the peer link, the same on both sides (the
/// server in `crate::member`, every client here and in `node::forward`).
pub const PEER_MESSAGE_LIMIT: usize = 64 << 20;

/// A lazily connecting channel to `addr` (`host:port`): mutual TLS with the
/// cluster CA when `tls` is given (always, unless `--insecure`).
pub fn channel(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let ep = match tls {
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(t.clone())?,
        None => Endpoint::from_shared(format!("http://{addr}"))?,
    };
    Ok(ep
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        // The book wins over the membership record: it may hold a test-only
        // override (see `NodeConfig::peer_overrides`).
        let addr = self
            .book
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.peer_addr.clone());
        PeerClient {
            target,
            client: raft_client(&addr, self.tls.as_ref()),
            addr,
            book: self.book.clone(),
            tls: self.tls.clone(),
            framed_tls: self.framed_tls.clone(),
            stages: self.stages.clone(),
            wire: self.wire,
            idle: framed::Idle::default(),
            stale_answer: self.stale_answer,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> RaftPayload {
    RaftPayload {
        data: codec::encode(v),
    }
}

impl PeerClient {
    /// Reconnects if the member's address changed since the client was built.
    fn refresh(&mut self) {
        let current = self
            .book
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.target)
            .cloned();
        if let Some(addr) = current
            && addr != self.addr
        {
            tracing::info!(target = self.target, from = %self.addr, to = %addr, "peer moved");
            self.client = raft_client(&addr, self.tls.as_ref());
            self.idle = framed::Idle::default();
            self.addr = addr;
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned, Fut>(
        &mut self,
        req: &Req,
        ttl: Duration,
        f: impl FnOnce(RaftServiceClient<Channel>, RaftPayload) -> Fut,
    ) -> Result<Resp, RPCError<C>>
    where
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        self.refresh();
        let fut = f(self.client.clone(), encode(req));
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "peer {} ({}): no answer within {ttl:?}",
                    self.target, self.addr
                ))));
            }
            Ok(Err(status)) => {
                return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "peer {} ({}): {}",
                    self.target,
                    self.addr,
                    status.message()
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, String> = codec::decode(&resp.data)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        result.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let started = std::time::Instant::now();
        let entries = rpc.entries.len() as u64;
        let r = self
            .call(&rpc, option.hard_ttl(), |mut c, p| async move {
                c.append_entries(p).await
            })
            .await;
        if entries > 0 {
            self.stages.record(Stage::Replicate, started, entries);
        }
        r
    }

    /// Replication: one pipelined stream (`append_stream`), unless the
    /// benchmark-only unary wire is chosen.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamAnswer>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        if self.wire == ReplicationWire::Unary {
            return stream_append_sequential(self, input, option);
        }
        self.refresh();
        let wire = match self.wire {
            ReplicationWire::Grpc => Wire::Grpc(self.client.clone()),
            _ => Wire::Framed(self.framed_tls.clone(), self.idle.clone()),
        };
        let peer = (self.target, self.addr.clone());
        let stages = self.stages.clone();
        let limits = append_stream::Limits {
            ttl: option.hard_ttl(),
            stale_answer: self.stale_answer,
        };
        Box::pin(async move {
            let answers = append_stream::open(wire, peer, input, limits, stages).await?;
            Ok(answers as BoxStream<'s, StreamAnswer>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.vote(p).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.pre_vote(p).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call(&req, option.hard_ttl(), |mut c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteC,
        snapshot: SnapshotC,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        self.refresh();
        let header = codec::encode(&(&vote, &snapshot.meta));
        let data = snapshot.snapshot;
        let mut chunks = vec![SnapshotChunk {
            header,
            data: Vec::new(),
        }];
        for part in data.chunks(SNAPSHOT_CHUNK) {
            chunks.push(SnapshotChunk {
                header: Vec::new(),
                data: part.to_vec(),
            });
        }
        let mut client = self.client.clone();
        let send = async move { client.install_snapshot(futures::stream::iter(chunks)).await };
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let resp = resp.map_err(|s| {
            StreamingError::Unreachable(Unreachable::from_string(s.message().to_string()))
        })?;
        let result: Result<SnapshotResponse<C>, String> = codec::decode(&resp.into_inner().data)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        result.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))
    }
}
