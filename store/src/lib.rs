//! Keel's consensus store: a Raft cluster (openraft) whose log and vote live
//! in redb and whose state machine is an etcd-shaped MVCC key space in sled,
//! served to clients through the etcd v3 gRPC API.

pub mod backup;
pub mod config;
pub mod error;
pub mod etcd;
pub mod failpoint;
pub mod member;
pub mod mvcc;
pub mod net;
pub mod node;
pub mod peer;
pub mod peer_accept;
pub mod raft;
pub mod recover;
pub mod sealed;
pub mod stages;
pub mod watch_quota;

pub use config::{NodeConfig, parse_initial_cluster};
pub use error::{EtcdError, StoreError};
pub use member::start;
pub use node::Node;
