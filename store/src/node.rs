//! One store member: opens its storage, runs openraft, serves peers and etcd
//! clients, forwards leader-only requests to the leader, expires leases when
//! it leads, and keeps its own member record (addresses, zone) current.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::LeaseRevokeRequest;
use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use keel_proto::keelraft::raft_service_server::RaftServiceServer;
use keel_proto::keelraft::{CommandResult, RaftPayload, ReadIndexRequest, command, command_result};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::config::NodeConfig;
use crate::error::{EtcdError, StoreError};
use crate::mvcc::KvStore;
use crate::raft::codec;
use crate::raft::log_store::LogStore;
use crate::raft::network::{AddressBook, NetworkFactory, channel};
use crate::raft::service::{RaftGrpc, read_index};
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{Cmd, Member, Raft, TypeConfig, member_id};

pub type Metrics = openraft::RaftMetrics<TypeConfig>;

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

/// Leader-side lease expiry: deadlines live only in the leader's memory, as in
/// etcd; a new leader restarts every lease's full TTL.
#[derive(Default)]
struct Lessor {
    /// The term this lessor was filled in; `None` while not leading.
    term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
}

/// A running member.
pub struct Node {
    pub id: u64,
    pub cfg: NodeConfig,
    pub raft: Raft,
    pub kv: Arc<KvStore>,
    lessor: Mutex<Lessor>,
    peers: Mutex<HashMap<String, RaftServiceClient<Channel>>>,
    shutdown_tx: watch::Sender<bool>,
}

fn raft_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Raft(e.to_string())
}

impl Node {
    /// Opens the data dir, starts Raft and both gRPC servers, and bootstraps
    /// or joins the cluster as configured.
    pub async fn start(cfg: NodeConfig) -> Result<Arc<Node>, StoreError> {
        if cfg.name.is_empty() {
            return Err(StoreError::Config("member name must not be empty".into()));
        }
        let id = member_id(&cfg.name);
        std::fs::create_dir_all(&cfg.data_dir)?;
        let log = LogStore::open(&cfg.data_dir)?;
        let kv = KvStore::open(&cfg.data_dir)?;
        let sm = StateMachine::new(kv.clone(), &cfg.data_dir);
        let rcfg = Config {
            cluster_name: "keel".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_min.as_millis() as u64,
            election_timeout_max: cfg.election_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(raft_err)?;
        let book = AddressBook::default();
        book.write().unwrap_or_else(|e| e.into_inner()).extend(
            cfg.peer_overrides
                .iter()
                .map(|(n, a)| (member_id(n), a.clone())),
        );
        let client_tls = cfg.tls.as_ref().map(|t| t.tonic_client());
        let net = NetworkFactory {
            book: book.clone(),
            tls: client_tls,
        };
        let raft = Raft::new(id, Arc::new(rcfg), net, log, sm)
            .await
            .map_err(raft_err)?;

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
        let (shutdown_tx, _) = watch::channel(false);
        let node = Arc::new(Node {
            id,
            cfg: cfg.clone(),
            raft: raft.clone(),
            kv,
            lessor: Mutex::new(Lessor::default()),
            peers: Mutex::new(HashMap::new()),
            shutdown_tx,
        });

        let mut stop = node.shutdown_tx.subscribe();
        let peer_svc = RaftServiceServer::new(RaftGrpc::new(node.clone()))
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        // Raft traffic: only masters (certificates of organisation
        // keel:masters signed by the cluster CA) may connect.
        let peer_server = crate::net::server(cfg.tls.as_ref())?;
        let only_masters = crate::net::require_org(cfg.tls.is_some(), crate::net::PEER_ORGS);
        tokio::spawn(async move {
            let r = peer_server
                .layer(tonic::service::InterceptorLayer::new(only_masters))
                .add_service(peer_svc)
                .serve_with_incoming_shutdown(crate::net::incoming(peer_listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "peer server failed");
            }
        });
        crate::etcd::serve(node.clone(), client_listener)?;

        node.bootstrap().await?;
        tokio::spawn(node.clone().lessor_loop());
        tokio::spawn(node.clone().publish_loop());
        tokio::spawn(node.clone().address_loop(book));
        if let Some(dir) = cfg.backup_dir.clone() {
            tokio::spawn(node.clone().backup_loop(dir));
        }
        tracing::info!(
            name = %cfg.name, id, peer = %cfg.peer_addr(), client = %cfg.client_addr(),
            zone = %cfg.zone, "member started"
        );
        Ok(node)
    }

    fn me(&self) -> Member {
        Member {
            name: self.cfg.name.clone(),
            peer_addr: self.cfg.peer_addr(),
            client_addr: self.cfg.client_addr(),
            zone: self.cfg.zone.clone(),
        }
    }

    async fn bootstrap(self: &Arc<Self>) -> Result<(), StoreError> {
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
                    match node.forward_to(&join, &req, false).await {
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

    /// The latest Raft metrics of this member.
    pub fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The leader this member knows of (no copy of the metrics).
    pub fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Every member with its record and whether it votes.
    pub fn members(&self) -> Vec<(u64, Member, bool)> {
        let m = self.metrics();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<u64> = mem.voter_ids().collect();
        mem.nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect()
    }

    fn member(&self, id: u64) -> Option<Member> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Where this member dials member `m`: its membership address, unless a
    /// test-only override names another (`NodeConfig::peer_overrides`).
    fn dial_addr<'a>(&'a self, m: &'a Member) -> &'a str {
        self.cfg
            .peer_overrides
            .get(&m.name)
            .map_or(m.peer_addr.as_str(), String::as_str)
    }

    fn peer_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, EtcdError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let tls = self.cfg.tls.as_ref().map(|t| t.tonic_client());
        let ch = channel(addr, tls.as_ref()).map_err(|e| EtcdError::Unavailable(e.to_string()))?;
        let c = RaftServiceClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn forward_to(
        &self,
        peer_addr: &str,
        req: &LeaderRequest,
        forwarded: bool,
    ) -> Result<Result<LeaderResponse, LeaderError>, tonic::Status> {
        let mut c = self
            .peer_client(peer_addr)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let data = codec::encode(req);
        let mut r = tonic::Request::new(RaftPayload { data });
        r.set_timeout(Duration::from_secs(60));
        if forwarded {
            r.metadata_mut()
                .insert(FORWARDED, "1".parse().expect("ascii"));
        }
        let resp = c.leader(r).await?.into_inner();
        codec::decode(&resp.data).map_err(tonic::Status::internal)
    }

    /// Resolves once this member no longer sees `leader` as the leader.
    async fn leader_moves_from(&self, leader: u64) {
        let mut rx = self.raft.metrics();
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
                            a = self.forward_to(self.dial_addr(&m), &req, true) => Some(a),
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
        match self.leader_call(LeaderRequest::Write(Cmd::new(op))).await? {
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

    /// Writes `op` only if this member is the leader, never forwarding it:
    /// the entry commits in this member's own term or not at all. For
    /// writes that claim leadership (the controllers' fencing token): a
    /// member that merely believes it leads (a stale view right after a
    /// restart) must not get such a write committed by the real leader.
    pub async fn write_as_leader(&self, op: command::Op) -> Result<CommandResult, EtcdError> {
        match self.serve_leader(LeaderRequest::Write(Cmd::new(op))).await {
            Ok(LeaderResponse::Write(r)) => match r.0.result {
                Some(command_result::Result::Error(e)) => {
                    Err(EtcdError::from_parts(e.code, &e.message))
                }
                Some(_) => Ok(r.0),
                None => Err(EtcdError::Internal("empty result".into())),
            },
            Ok(other) => Err(EtcdError::Internal(format!("unexpected answer {other:?}"))),
            Err(LeaderError::NotLeader) => Err(EtcdError::Unavailable(
                "this member is not the leader".into(),
            )),
            Err(LeaderError::Etcd(code, msg)) => Err(EtcdError::from_parts(code, &msg)),
        }
    }

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

    /// Serves a leader-only request on this member, which believes it leads.
    pub async fn serve_leader(&self, req: LeaderRequest) -> Result<LeaderResponse, LeaderError> {
        if !self.is_leader() {
            return Err(LeaderError::NotLeader);
        }
        match req {
            LeaderRequest::Write(cmd) => match self.raft.client_write(cmd).await {
                Ok(r) => Ok(LeaderResponse::Write(r.data)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Err(LeaderError::NotLeader)
                }
                Err(e) => Err(EtcdError::Unavailable(e.to_string()).into()),
            },
            LeaderRequest::SetMember(m) => {
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
            LeaderRequest::Add { member, promote } => {
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
            LeaderRequest::Promote(id) => {
                match self.members().into_iter().find(|(i, _, _)| *i == id) {
                    None => return Err(EtcdError::MemberNotFound.into()),
                    Some((_, _, true)) => {
                        return Err(EtcdError::InvalidArgument(
                            "can only promote a learner member".into(),
                        )
                        .into());
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
            LeaderRequest::Remove(id) => {
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
            LeaderRequest::TransferLeader(to) => {
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
            LeaderRequest::KeepAlive(id) => {
                let ttl = match self.kv.lease(id) {
                    None => 0,
                    Some((ttl, _)) => {
                        let mut l = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                        l.deadlines.insert(id, Instant::now() + secs(ttl));
                        ttl
                    }
                };
                Ok(LeaderResponse::Ttl(ttl, ttl))
            }
            LeaderRequest::TimeToLive(id) => match self.kv.lease(id) {
                None => Ok(LeaderResponse::Ttl(-1, 0)),
                Some((ttl, _)) => {
                    let l = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                    let left = l
                        .deadlines
                        .get(&id)
                        .map(|d| d.saturating_duration_since(Instant::now()).as_secs() as i64)
                        .unwrap_or(ttl);
                    Ok(LeaderResponse::Ttl(left, ttl))
                }
            },
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

    /// While leading: keeps lease deadlines and revokes expired leases
    /// through Raft, so expiry is replicated and deterministic.
    async fn lessor_loop(self: Arc<Self>) {
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let m = self.metrics();
            let expired: Vec<i64> = {
                let mut l = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                if m.state != ServerState::Leader {
                    *l = Lessor::default();
                    continue;
                }
                if l.term != Some(m.current_term) {
                    l.term = Some(m.current_term);
                    l.deadlines.clear();
                }
                let now = Instant::now();
                let leases = self.kv.leases();
                let live: BTreeSet<i64> = leases.iter().map(|(id, _)| *id).collect();
                l.deadlines.retain(|id, _| live.contains(id));
                for (id, ttl) in leases {
                    l.deadlines.entry(id).or_insert(now + secs(ttl));
                }
                l.deadlines
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(id, _)| *id)
                    .collect()
            };
            self.auto_compact().await;
            for id in expired {
                tracing::info!(lease = id, "lease expired, revoking");
                let r = self
                    .write(command::Op::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await;
                if let Err(e) = r
                    && e != EtcdError::LeaseNotFound
                {
                    tracing::warn!(lease = id, error = %e, "revoking expired lease failed");
                }
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

    /// Keeps this member's record in the membership (addresses, zone) equal
    /// to its configuration, e.g. after a restart on a new address.
    async fn publish_loop(self: Arc<Self>) {
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            let me = self.me();
            match self.member(self.id) {
                Some(cur) if cur == me => {}
                Some(_) => {
                    if let Err(e) = self.leader_call(LeaderRequest::SetMember(me)).await {
                        tracing::debug!(error = %e, "publishing member record failed");
                    }
                }
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Copies every member's peer address from the membership into the
    /// transport's address book whenever the membership changes.
    async fn address_loop(self: Arc<Self>, book: AddressBook) {
        let mut rx = self.raft.metrics();
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            {
                let m = rx.borrow_watched();
                let mut b = book.write().unwrap_or_else(|e| e.into_inner());
                for (id, n) in m.membership_config.membership().nodes() {
                    let addr = self.dial_addr(n);
                    if b.get(id).map(String::as_str) != Some(addr) {
                        b.insert(*id, addr.to_string());
                    }
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// While leading: writes a verified backup into `dir` every
    /// `backup_interval` and keeps the newest `backup_retain` of them.
    async fn backup_loop(self: Arc<Self>, dir: std::path::PathBuf) {
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.backup_interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.is_leader() {
                continue;
            }
            let node = self.clone();
            let dir2 = dir.clone();
            let r = tokio::task::spawn_blocking(move || node.scheduled_backup(&dir2)).await;
            match r {
                Ok(Ok(path)) => {
                    tracing::info!(path = %path.display(), "scheduled backup written and verified")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "scheduled backup failed"),
                Err(e) => tracing::error!(error = %e, "scheduled backup task failed"),
            }
        }
    }

    /// Writes one backup of this member's key space into `dir`, reads it
    /// back through the verifier, then prunes old ones.
    pub fn scheduled_backup(
        &self,
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf, StoreError> {
        let (dump, _, _) = self.kv.dump();
        let m = self.metrics();
        let source = crate::backup::Source {
            member: self.cfg.name.clone(),
            member_id: self.id,
            raft_term: m.current_term,
            raft_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        };
        let (header, file) = crate::backup::build(&dump, &source)
            .map_err(|e| StoreError::Config(format!("backup: {e}")))?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "keel-{:016x}-{:012}-{}.keelbak",
            header.cluster_id, header.revision, header.created_at_unix
        ));
        let sealed_err = |e: crate::sealed::SealError| StoreError::Config(format!("backup: {e}"));
        let file = match &self.cfg.backup_seal {
            Some(s) => crate::sealed::seal(&file, s).map_err(sealed_err)?,
            None => file,
        };
        crate::backup::write_atomically(&path, &file)?;
        let back = std::fs::read(&path)?;
        let plain = match &self.cfg.backup_seal {
            Some(s) => crate::sealed::open(&back, s).map_err(sealed_err)?,
            None => back,
        };
        crate::backup::decode(&plain).map_err(|e| {
            StoreError::Config(format!("backup {} does not verify: {e}", path.display()))
        })?;
        let mut all: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "keelbak"))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("keel-"))
            })
            .collect();
        all.sort();
        let excess = all.len().saturating_sub(self.cfg.backup_retain.max(1));
        for old in &all[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(path)
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.raft.shutdown().await;
    }

    /// A receiver that turns true when the member shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(1) as u64)
}

fn map_change_err<E: std::fmt::Debug>(msg: String, e: &E) -> LeaderError {
    let dbg = format!("{e:?}");
    if dbg.contains("ForwardToLeader") {
        LeaderError::NotLeader
    } else {
        EtcdError::Unavailable(format!("membership change failed: {msg}")).into()
    }
}
