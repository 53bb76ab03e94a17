//! Keel's consensus store: a Raft cluster (openraft) whose log and vote live
//! in redb and whose state machine is an etcd-shaped MVCC key space in sled,
//! served to clients through the etcd v3 gRPC API.

pub mod error;
pub mod mvcc;
pub mod raft;

pub use error::{EtcdError, StoreError};
