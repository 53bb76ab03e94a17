//! The openraft type configuration: what a log entry carries (`Cmd`), what
//! applying it answers (`CmdResult`), and what a cluster member is (`Member`).

use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use keel_proto::keelraft::{Command, CommandResult, command};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

openraft::declare_raft_types!(
    /// Keel's Raft types: member ids are stable `u64`s derived from member names.
    pub TypeConfig:
        D = Cmd,
        R = CmdResult,
        NodeId = u64,
        Node = Member,
);

/// The Raft handle of a Keel master.
pub type Raft = openraft::Raft<TypeConfig, crate::raft::state_machine::StateMachine>;

/// One member of the cluster as Raft knows it. Its id is derived from `name`
/// only, so changing addresses never changes identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Address of the member's Raft gRPC server (`host:port`).
    pub peer_addr: String,
    /// Address of the member's etcd-compatible client gRPC server (`host:port`).
    pub client_addr: String,
    /// Failure domain.
    #[serde(default)]
    pub zone: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// A member's stable id: FNV-1a of its name, never zero.
pub fn member_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A replicated command: an etcd write request in etcd's own protobuf
/// encoding. Serialized (for the log and the wire) as that encoding (base64
/// in human-readable formats).
///
/// Shared and encoded once: an entry is cloned into the log's in-memory
/// tail and into every AppendEntries, and serialized for the log and for
/// each follower; a clone is a reference count, and the protobuf bytes are
/// made on the first serialization (or kept from the bytes it was decoded
/// from) and reused by every later one.
#[derive(Clone)]
pub struct Cmd(Arc<CmdInner>);

struct CmdInner {
    command: Command,
    encoded: OnceLock<Vec<u8>>,
}

impl Cmd {
    pub fn new(op: command::Op) -> Self {
        Cmd(Arc::new(CmdInner {
            command: Command { op: Some(op) },
            encoded: OnceLock::new(),
        }))
    }

    /// The etcd request this command carries.
    pub fn command(&self) -> &Command {
        &self.0.command
    }

    /// The etcd request an entry carries, if it is a normal entry (what
    /// applying it runs; blank and membership entries run none).
    pub fn of(payload: &openraft::alias::EntryPayloadOf<TypeConfig>) -> Option<&Command> {
        match payload {
            openraft::EntryPayload::Normal(c) => Some(c.command()),
            _ => None,
        }
    }

    /// The protobuf encoding, made once.
    fn encoded(&self) -> &[u8] {
        self.0
            .encoded
            .get_or_init(|| self.0.command.encode_to_vec())
    }
}

impl PartialEq for Cmd {
    fn eq(&self, other: &Self) -> bool {
        self.command() == other.command()
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Cmd").field(self.command()).finish()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command().op {
            Some(command::Op::Put(p)) => write!(f, "put({})", String::from_utf8_lossy(&p.key)),
            Some(command::Op::DeleteRange(d)) => {
                write!(f, "delete({})", String::from_utf8_lossy(&d.key))
            }
            Some(command::Op::Txn(t)) => write!(f, "txn({} compares)", t.compare.len()),
            Some(command::Op::Compact(c)) => write!(f, "compact({})", c.revision),
            Some(command::Op::LeaseGrant(l)) => write!(f, "lease_grant({})", l.id),
            Some(command::Op::LeaseRevoke(l)) => write!(f, "lease_revoke({})", l.id),
            None => write!(f, "empty"),
        }
    }
}

/// The answer of the state machine to one `Cmd`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CmdResult(pub CommandResult);

/// Protobuf bytes: raw in binary formats, base64 in human-readable ones.
fn ser_bytes<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        s.serialize_bytes(bytes)
    }
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    } else {
        Ok(serde_bytes::ByteBuf::deserialize(d)?.into_vec())
    }
}

impl Serialize for Cmd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(self.encoded(), s)
    }
}
impl<'de> Deserialize<'de> for Cmd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = de_bytes(d)?;
        let command = Command::decode(bytes.as_slice()).map_err(serde::de::Error::custom)?;
        // The bytes decoded are an encoding of `command`: kept, so the log
        // and the next hop write them without encoding again.
        Ok(Cmd(Arc::new(CmdInner {
            command,
            encoded: OnceLock::from(bytes),
        })))
    }
}
impl Serialize for CmdResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(&self.0.encode_to_vec(), s)
    }
}
impl<'de> Deserialize<'de> for CmdResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = de_bytes(d)?;
        CommandResult::decode(bytes.as_slice())
            .map(CmdResult)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::PutRequest;

    #[test]
    fn cmd_round_trips_through_json() {
        let c = Cmd::new(command::Op::Put(PutRequest {
            key: b"a".to_vec(),
            value: vec![0, 255, 7],
            ..Default::default()
        }));
        let j = serde_json::to_string(&c).unwrap();
        let back: Cmd = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn cmd_round_trips_through_the_binary_codec() {
        let c = Cmd::new(command::Op::Put(PutRequest {
            key: b"k".to_vec(),
            value: vec![1; 300],
            ..Default::default()
        }));
        let bytes = crate::raft::codec::encode(&c);
        assert!(
            bytes.len() < 320,
            "binary form is compact: {} bytes",
            bytes.len()
        );
        let back: Cmd = crate::raft::codec::decode(&bytes).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn member_ids_are_stable_and_distinct() {
        assert_eq!(member_id("m1"), member_id("m1"));
        assert_ne!(member_id("m1"), member_id("m2"));
        assert_ne!(member_id(""), 0);
    }
}
