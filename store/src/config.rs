//! The configuration of one store member.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Everything needed to start one member.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Human-readable, unique name; the member id is derived from it.
    pub name: String,
    pub data_dir: PathBuf,
    /// Address the Raft gRPC server binds (`host:port`).
    pub listen_peer: String,
    /// Address the etcd-compatible client gRPC server binds.
    pub listen_client: String,
    /// Address peers use to reach this member (defaults to `listen_peer`).
    pub advertise_peer: Option<String>,
    /// Address clients use to reach this member (defaults to `listen_client`).
    pub advertise_client: Option<String>,
    /// `name=peer_addr` of every initial member (bootstrapping a new cluster).
    pub initial_cluster: Vec<(String, String)>,
    /// Peer or client address of a running member to join through.
    pub join: Option<String>,
    pub zone: String,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Take a Raft snapshot (and allow log purging) every this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub keep_behind_snapshot: u64,
    /// The leader compacts history older than this many revisions (0: never).
    pub auto_compact_revisions: i64,
    /// Where the leader writes scheduled backups (none: no scheduled backups).
    pub backup_dir: Option<PathBuf>,
    pub backup_interval: Duration,
    /// How many scheduled backups to keep (oldest are deleted).
    pub backup_retain: usize,
    /// Seal scheduled backups with this secret (they hold the CA key).
    pub backup_seal: Option<crate::sealed::Secret>,
    /// Debug only: serve "linearizable" reads locally without read-index.
    /// Exists so the chaos checker can prove it catches stale reads.
    pub unsafe_local_reads: bool,
    /// Benchmark only: `append` waits for its fsync before returning and
    /// replication starts after it (the write path before the pipelined
    /// log), so `keel bench kv` can show both from one binary.
    pub sequential_log_append: bool,
    /// How the leader replicates to followers; anything but the default
    /// is for benchmarks that compare the wires.
    pub replication_wire: ReplicationWire,
    /// The wire followers forward leader requests over (`node::forward_stream`).
    pub forward_wire: ForwardWire,
    /// Test only: dial peer NAME at this address instead of the peer address
    /// in the membership, for every peer connection (Raft RPCs, leader
    /// forwarding, read-index). The chaos harness points these at per-link
    /// TCP proxies it can cut to partition members without root.
    pub peer_overrides: BTreeMap<String, String>,
    /// Test only (a failpoint): applying a put of exactly this key fails as
    /// a storage error would, so tests can show that such a member stops.
    pub failpoint_apply_error_key: Option<Vec<u8>>,
    /// This member's certificate and the cluster CA: the peer and client
    /// ports require mutual TLS with them. None only with `--insecure`.
    pub tls: Option<keel_proto::pki::TlsBundle>,
}

impl NodeConfig {
    /// A config with Keel's defaults for the given identity and addresses.
    pub fn new(name: &str, data_dir: PathBuf, listen_peer: &str, listen_client: &str) -> Self {
        NodeConfig {
            name: name.to_string(),
            data_dir,
            listen_peer: listen_peer.to_string(),
            listen_client: listen_client.to_string(),
            advertise_peer: None,
            advertise_client: None,
            initial_cluster: Vec::new(),
            join: None,
            zone: String::new(),
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(250),
            election_max: Duration::from_millis(350),
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            auto_compact_revisions: 10_000,
            backup_dir: None,
            backup_interval: Duration::from_secs(3600),
            backup_retain: 24,
            backup_seal: None,
            unsafe_local_reads: false,
            sequential_log_append: false,
            replication_wire: ReplicationWire::Framed,
            forward_wire: ForwardWire::Framed,
            peer_overrides: BTreeMap::new(),
            failpoint_apply_error_key: None,
            tls: None,
        }
    }

    pub fn peer_addr(&self) -> String {
        self.advertise_peer
            .clone()
            .unwrap_or_else(|| self.listen_peer.clone())
    }

    pub fn client_addr(&self) -> String {
        self.advertise_client
            .clone()
            .unwrap_or_else(|| self.listen_client.clone())
    }
}

/// Parses `m1=127.0.0.1:7101,m2=...` into (name, address) pairs.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("initial cluster entry {part:?} is not name=host:port"))?;
        let addr = addr
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        if name.is_empty() || addr.is_empty() {
            return Err(format!(
                "initial cluster entry {part:?} is not name=host:port"
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "member name {name:?} appears twice in the initial cluster"
            ));
        }
        out.push((name.to_string(), addr.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_bad_entries() {
        let v = parse_initial_cluster("m1=127.0.0.1:1,m2=http://127.0.0.1:2").unwrap();
        assert_eq!(v[1], ("m2".into(), "127.0.0.1:2".into()));
        assert!(parse_initial_cluster("m1").is_err());
        assert!(parse_initial_cluster("m1=a:1,m1=b:2").is_err());
    }
}

/// The wire the leader replicates over (`raft::append_stream`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicationWire {
    /// One framed TCP/TLS connection per follower (`raft::framed`).
    #[default]
    Framed,
    /// Benchmark only: one gRPC `StreamAppend` stream per follower over
    /// HTTP/2 (the wire before `raft::framed`).
    Grpc,
    /// Benchmark only: one unary AppendEntries call at a time (the wire
    /// before `raft::append_stream`).
    Unary,
}

impl std::str::FromStr for ReplicationWire {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "framed" => Ok(ReplicationWire::Framed),
            "grpc" => Ok(ReplicationWire::Grpc),
            "unary" => Ok(ReplicationWire::Unary),
            _ => Err(format!(
                "unknown replication wire {s:?}: expected framed, grpc or unary"
            )),
        }
    }
}

/// The wire followers forward leader requests over (`node::forward_stream`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardWire {
    /// A framed TCP/TLS connection per leader (`node::forward_framed`).
    #[default]
    Framed,
    /// Benchmark only: a gRPC `LeaderStream` stream per leader over HTTP/2
    /// (the wire before `node::forward_framed`).
    Grpc,
}

impl std::str::FromStr for ForwardWire {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "framed" => Ok(ForwardWire::Framed),
            "grpc" => Ok(ForwardWire::Grpc),
            _ => Err(format!(
                "unknown forwarding wire {s:?}: expected framed or grpc"
            )),
        }
    }
}
