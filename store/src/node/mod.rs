//! One store member: its storage, its openraft instance and what it knows of
//! the cluster. Each concern of a running member has a file of its own:
//! `leader.rs` the requests only the leader serves, `forward.rs` sending them
//! to the leader (`forward_stream.rs` batching them over one stream,
//! `forward_framed.rs` that stream's wire), `read_index.rs` linearizable
//! read barriers, `membership.rs`
//! membership changes, `lessor.rs` lease expiry, `compaction.rs` automatic
//! compaction, `address.rs` publishing this member's addresses,
//! `bootstrap.rs` initializing or joining a cluster and `watchdog.rs`
//! noticing that the Raft core stopped. The servers and background loops are
//! started from one place, `crate::member`.

mod address;
mod bootstrap;
mod compaction;
mod forward;
pub mod forward_framed;
pub mod forward_stream;
mod leader;
mod lessor;
mod membership;
mod read_index;
mod watchdog;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use openraft::async_runtime::WatchReceiver;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::config::NodeConfig;
use crate::error::StoreError;
use crate::mvcc::KvStore;
use crate::raft::log_store::LogStore;
use crate::raft::network::{AddressBook, NetworkFactory};
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{Member, Raft, TypeConfig, member_id};
use crate::stages::Stages;

pub use leader::{FORWARDED, LeaderError, LeaderRequest, LeaderResponse};
pub use read_index::read_index;

pub type Metrics = openraft::RaftMetrics<TypeConfig>;

/// A running member.
pub struct Node {
    pub id: u64,
    pub cfg: NodeConfig,
    pub raft: Raft,
    pub kv: Arc<KvStore>,
    /// Where this member's write time goes (`crate::stages`).
    pub stages: Stages,
    /// Peer addresses the Raft transport dials, kept from the membership.
    book: AddressBook,
    lessor: Mutex<lessor::Lessor>,
    peers: Mutex<HashMap<String, RaftServiceClient<Channel>>>,
    /// One forwarding stream per leader address (`forward_stream`).
    forwarders: Mutex<HashMap<String, forward_stream::Forwarder>>,
    /// The TLS client configuration of framed peer connections (ALPN
    /// `raft::framed::ALPN`); none in plain text.
    framed_tls: Option<Arc<rustls::ClientConfig>>,
    shutdown_tx: watch::Sender<bool>,
}

fn raft_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Raft(e.to_string())
}

impl Node {
    /// Opens the data dir (Raft log and vote, key space) and starts Raft.
    /// `crate::member::start` then serves it and joins or bootstraps.
    pub async fn open(cfg: NodeConfig) -> Result<Arc<Node>, StoreError> {
        if cfg.name.is_empty() {
            return Err(StoreError::Config("member name must not be empty".into()));
        }
        let id = member_id(&cfg.name);
        std::fs::create_dir_all(&cfg.data_dir)?;
        let stages = Stages::default();
        let log = LogStore::open_with(&cfg.data_dir, stages.clone())?
            .sequential(cfg.sequential_log_append)
            .inline_follower_appends(id);
        let kv = KvStore::open(&cfg.data_dir)?;
        if let Some(key) = &cfg.failpoint_apply_error_key {
            tracing::warn!("test-only failpoint on: applying a put of {key:?} fails");
            kv.set_failpoint(key.clone());
        }
        let sm = StateMachine::new(kv.clone(), &cfg.data_dir).with_stages(stages.clone());
        let rcfg = Config {
            cluster_name: "keel".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_min.as_millis() as u64,
            election_timeout_max: cfg.election_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            enable_pre_vote: Some(true),
            // Replicate entries as soon as `append` has made them readable,
            // while the leader's own fsync runs (see `raft::log_store`).
            broadcast_submitted_on_append: Some(!cfg.sequential_log_append),
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
        let framed_tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let mut c = t
                    .rustls_client()
                    .map_err(|e| StoreError::Config(format!("TLS: {e}")))?;
                c.alpn_protocols = vec![crate::raft::framed::ALPN.to_vec()];
                Some(Arc::new(c))
            }
        };
        let net = NetworkFactory {
            book: book.clone(),
            tls: client_tls,
            framed_tls: framed_tls.clone(),
            stages: stages.clone(),
            wire: cfg.replication_wire,
            stale_answer: cfg.election_min * 3 / 4,
        };
        let raft = Raft::new(id, Arc::new(rcfg), net, log, sm)
            .await
            .map_err(raft_err)?;
        let (shutdown_tx, _) = watch::channel(false);
        Ok(Arc::new(Node {
            id,
            cfg,
            raft,
            kv,
            stages,
            book,
            lessor: Mutex::new(lessor::Lessor::default()),
            peers: Mutex::new(HashMap::new()),
            forwarders: Mutex::new(HashMap::new()),
            framed_tls,
            shutdown_tx,
        }))
    }

    fn me(&self) -> Member {
        Member {
            name: self.cfg.name.clone(),
            peer_addr: self.cfg.peer_addr(),
            client_addr: self.cfg.client_addr(),
            zone: self.cfg.zone.clone(),
        }
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

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.raft.shutdown().await;
    }

    /// A receiver that turns true when the member shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Sleeps for `d`; false when the member shut down meanwhile (loops end).
    async fn idle(&self, d: std::time::Duration) -> bool {
        let mut stop = self.shutdown_tx.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }
}
