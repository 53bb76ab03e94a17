//! Everything that touches openraft: the type configuration, the storage
//! adapters (log in segment files and redb, state machine over the sled key
//! space) and the network (gRPC, and the framed replication wire). An
//! openraft upgrade should only touch this folder.

pub mod append_stream;
pub mod codec;
pub mod framed;
pub mod log_store;
mod log_writer;
pub mod network;
pub mod state_machine;
pub mod types;
pub mod wal;

pub use types::{Cmd, CmdResult, Member, Raft, TypeConfig, member_id};

/// A storage error for openraft, which takes `io::Error`s, from any other.
fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
