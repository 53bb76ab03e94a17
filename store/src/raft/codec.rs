//! The binary encoding of openraft messages and log entries (postcard over
//! serde): used for the Raft log in redb and for every peer RPC payload.
//! JSON, used at first, cost more CPU per entry than the rest of the write
//! path together (measured with `keel bench kv`, see BENCHMARKS.md).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a value; openraft's messages and our types always encode.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encodes every Raft type")
}

/// Decodes a value, with the reason on failure.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes)
        .map_err(|e| format!("cannot decode {}: {e}", std::any::type_name::<T>()))
}
