//! The openraft type configuration: what a log entry carries (`Cmd`), what
//! applying it answers (`CmdResult`), and what a cluster member is (`Member`).

use std::fmt;

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
/// encoding. Serialized (for the log and the wire) as base64 of that encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmd(pub Command);

impl Cmd {
    pub fn new(op: command::Op) -> Self {
        Cmd(Command { op: Some(op) })
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.op {
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
fn ser_pb<M: Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
    let bytes = m.encode_to_vec();
    if s.is_human_readable() {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        s.serialize_bytes(&bytes)
    }
}

fn de_pb<'de, M: Message + Default, D: Deserializer<'de>>(d: D) -> Result<M, D::Error> {
    let bytes = if d.is_human_readable() {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)?
    } else {
        serde_bytes::ByteBuf::deserialize(d)?.into_vec()
    };
    M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
}

impl Serialize for Cmd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_pb(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for Cmd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_pb(d).map(Cmd)
    }
}
impl Serialize for CmdResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_pb(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for CmdResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_pb(d).map(CmdResult)
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
