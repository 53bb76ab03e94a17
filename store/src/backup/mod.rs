//! Backup files: one self-checking file holding the whole key space at one
//! revision, with a header an auditor can read offline. The byte layout is
//! documented in `docs/backup-format.md`.

pub mod file_bytes;
pub mod schedule;
pub mod write;
pub use file_bytes::FileBytes;
pub use schedule::{Written, files_in, read_verified, write_file};
pub use write::{STREAMED_HEAD, StreamedFile, write_atomically};

use std::collections::BTreeMap;

use keel_proto::mvccpb::KeyValue;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mvcc::keys;
use crate::mvcc::read::KvHash;
use crate::mvcc::snapshot::{Record, meta_i64, parse};

/// First bytes of every backup file.
pub const MAGIC: &[u8] = b"KEELBAK1\n";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Starts the optional signature block after the checksum.
pub const SIG_MAGIC: &[u8] = b"KEELSIG1";
const SIG_BLOCK: usize = 8 + 32 + 64;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    pub format_version: u32,
    pub keel_version: String,
    pub cluster_id: u64,
    pub source_member: String,
    pub source_member_id: u64,
    /// The store revision the backup was taken at.
    pub revision: i64,
    pub compact_revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
    /// Seconds since the Unix epoch.
    pub created_at_unix: u64,
    pub key_count: u64,
    /// Keys per resource kind (`/registry/<kind>/...`; other keys under `(other)`).
    pub counts_by_kind: BTreeMap<String, u64>,
    /// etcd-style HashKV of the key space at `revision` (see `hash_kvs`).
    pub content_hash: u32,
}

/// Why a backup file cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a Keel backup (bad magic bytes)")]
    BadMagic,
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("checksum mismatch: the file says {expected}, its content hashes to {actual}")]
    Checksum { expected: String, actual: String },
    #[error("unknown backup format version {0} (this keel reads version {FORMAT_VERSION})")]
    UnknownVersion(u32),
    #[error("unreadable header: {0}")]
    Header(String),
    #[error("corrupt data: {0}")]
    Data(String),
    #[error("header does not match the data: {0}")]
    Mismatch(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("not signed, but a verify key was given")]
    NotSigned,
    #[error("signed by another key ({0}), not the given verify key")]
    WrongKey(String),
}

/// A decoded, verified backup.
#[derive(Debug)]
pub struct Backup {
    pub header: BackupHeader,
    /// The public key that signed the file, if it is signed (the signature
    /// has been checked against it).
    pub signer: Option<[u8; 32]>,
    /// The verified file (opened, if it was sealed).
    bytes: FileBytes,
    /// Where the key-space dump lies in `bytes`.
    dump: std::ops::Range<usize>,
}

impl Backup {
    /// The key-space records (the dump format of `mvcc::snapshot`),
    /// borrowed from the file.
    pub fn records(&self) -> Vec<Record<'_>> {
        parse(&self.bytes[self.dump.clone()]).expect("the dump parsed when the file was decoded")
    }
}

/// Appends an Ed25519 signature over the file's SHA-256 checksum, so an
/// auditor holding the public key can tell this cluster's backups from forged
/// ones.
pub fn sign(file: &mut Vec<u8>, key: &ed25519_dalek::SigningKey) {
    use ed25519_dalek::Signer;
    let sum: [u8; 32] = file[file.len() - 32..].try_into().expect("32 bytes");
    let sig = key.sign(&sum);
    file.extend_from_slice(SIG_MAGIC);
    file.extend_from_slice(key.verifying_key().as_bytes());
    file.extend_from_slice(&sig.to_bytes());
}

/// Checks that a decoded backup was signed with `key`.
pub fn check_signer(b: &Backup, key: &ed25519_dalek::VerifyingKey) -> Result<(), BackupError> {
    match b.signer {
        None => Err(BackupError::NotSigned),
        Some(k) if k == *key.as_bytes() => Ok(()),
        Some(k) => Err(BackupError::WrongKey(hex(&k[..8]))),
    }
}

/// What the records themselves say: revision, compaction, cluster id, key
/// count, counts per kind and content hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub revision: i64,
    pub compact_revision: i64,
    pub cluster_id: u64,
    pub key_count: u64,
    pub counts_by_kind: BTreeMap<String, u64>,
    pub content_hash: u32,
}

/// The kind of a key: `/registry/<kind>/...` gives `<kind>`.
pub fn kind_of(key: &[u8]) -> String {
    let s = String::from_utf8_lossy(key);
    match s
        .strip_prefix("/registry/")
        .and_then(|r| r.split('/').next())
    {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => "(other)".to_string(),
    }
}

/// Key prefixes whose values are secrets: the cluster CA's private key and
/// the API tokens' hashes. Whatever shows a backup's content (`keel backup
/// inspect`) must never print these values, only the keys.
pub const SECRET_PREFIXES: &[&str] = &["/keel/pki/", "/keel/tokens/"];

/// True if the value under `key` is secret (see [`SECRET_PREFIXES`]).
pub fn is_secret_key(key: &[u8]) -> bool {
    SECRET_PREFIXES
        .iter()
        .any(|p| key.starts_with(p.as_bytes()))
}

/// A value as it may be shown to a person: `<redacted>` under a secret
/// key, else the bytes as (lossy) UTF-8.
pub fn printable_value<'a>(key: &[u8], value: &'a [u8]) -> std::borrow::Cow<'a, str> {
    if is_secret_key(key) {
        "<redacted>".into()
    } else {
        String::from_utf8_lossy(value)
    }
}

/// Summarizes dump records; fails on a record that does not decode.
pub fn summarize(records: &[Record<'_>]) -> Result<Summary, BackupError> {
    let mut hash = KvHash::default();
    let mut key_count = 0;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in records.iter().filter(|(k, _)| k.first() == Some(&keys::KV)) {
        let kv = KeyValue::decode(*v).map_err(|e| {
            BackupError::Data(format!("key {:?}: {e}", String::from_utf8_lossy(&k[1..])))
        })?;
        if kv.key != k[1..] {
            return Err(BackupError::Data(format!(
                "record for {:?} holds key {:?}",
                String::from_utf8_lossy(&k[1..]),
                String::from_utf8_lossy(&kv.key)
            )));
        }
        *counts.entry(kind_of(&kv.key)).or_default() += 1;
        key_count += 1;
        hash.add(&kv);
    }
    Ok(Summary {
        revision: meta_i64(records, keys::META_REVISION).max(1),
        compact_revision: meta_i64(records, keys::META_COMPACT),
        cluster_id: meta_i64(records, keys::META_CLUSTER_ID) as u64,
        key_count,
        counts_by_kind: counts,
        content_hash: hash.finish(),
    })
}

/// A backup file in three pieces, so that a dump of hundreds of MiB is
/// written without being copied: `head` (magic, header and the lengths), the
/// dump, and `tail` (the SHA-256 of all before it, then the signature block
/// if [`sign`] adds one).
pub struct FileParts<'a> {
    pub head: Vec<u8>,
    pub dump: &'a [u8],
    pub tail: Vec<u8>,
}

impl FileParts<'_> {
    pub fn slices(&self) -> [&[u8]; 3] {
        [&self.head, self.dump, &self.tail]
    }

    /// The whole file in one buffer.
    pub fn concat(&self) -> Vec<u8> {
        self.slices().concat()
    }
}

/// Encodes a backup file: magic, header, data, SHA-256 of all before it.
pub fn encode(header: &BackupHeader, dump: &[u8]) -> Vec<u8> {
    encode_parts(header, dump).concat()
}

/// [`encode`] without copying the dump.
pub fn encode_parts<'a>(header: &BackupHeader, dump: &'a [u8]) -> FileParts<'a> {
    encode_parts_padded(header, dump, 0)
}

/// [`encode_parts`] with the header JSON padded with spaces (which JSON
/// allows after a value) so that the head is `head_len` bytes, if it fits;
/// a writer that streams the dump to disk reserves that room first.
pub fn encode_parts_padded<'a>(
    header: &BackupHeader,
    dump: &'a [u8],
    head_len: usize,
) -> FileParts<'a> {
    let mut h = serde_json::to_vec(header).expect("header serializes");
    let fixed = MAGIC.len() + 4 + 8;
    if fixed + h.len() < head_len {
        h.resize(head_len - fixed, b' ');
    }
    let mut head = Vec::with_capacity(fixed + h.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(h.len() as u32).to_be_bytes());
    head.extend_from_slice(&h);
    head.extend_from_slice(&(dump.len() as u64).to_be_bytes());
    let mut sum = Sha256::new();
    sum.update(&head);
    sum.update(dump);
    FileParts {
        head,
        dump,
        tail: sum.finalize().to_vec(),
    }
}

/// Lowercase hex of some bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes and verifies a backup file: layout, checksum, format version,
/// header, every data record, and the header's counts and hash against the
/// data. Any failure names its reason.
pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    decode_owned(bytes.to_vec())
}

/// [`decode`] for a file already in memory, without copying it.
pub fn decode_owned(bytes: Vec<u8>) -> Result<Backup, BackupError> {
    decode_file(bytes.into())
}

/// [`decode`] for a file mapped or in memory, without copying it.
pub fn decode_file(bytes: FileBytes) -> Result<Backup, BackupError> {
    let (header, signer, dump) = check(&bytes)?;
    Ok(Backup {
        header,
        signer,
        bytes,
        dump,
    })
}

/// The checks of [`decode`]: the header, the signer and where the dump lies.
type Checked = (BackupHeader, Option<[u8; 32]>, std::ops::Range<usize>);

fn check(bytes: &[u8]) -> Result<Checked, BackupError> {
    if bytes.len() < MAGIC.len() || !bytes.starts_with(MAGIC) {
        return Err(if MAGIC.starts_with(bytes) {
            BackupError::Truncated(format!("{} bytes, not even the magic", bytes.len()))
        } else {
            BackupError::BadMagic
        });
    }
    let mut pos = MAGIC.len();
    let take =
        |pos: &mut usize, n: usize, what: &str| -> Result<std::ops::Range<usize>, BackupError> {
            let end = pos
                .checked_add(n)
                .filter(|e| *e <= bytes.len())
                .ok_or_else(|| {
                    BackupError::Truncated(format!(
                        "{what} needs bytes {}..{} but the file has {}",
                        *pos,
                        pos.saturating_add(n),
                        bytes.len()
                    ))
                })?;
            let r = *pos..end;
            *pos = end;
            Ok(r)
        };
    let hl = take(&mut pos, 4, "header length")?;
    let hlen = u32::from_be_bytes(bytes[hl].try_into().expect("4 bytes")) as usize;
    let hr = take(&mut pos, hlen, "header")?;
    let dl = take(&mut pos, 8, "data length")?;
    let dlen = u64::from_be_bytes(bytes[dl].try_into().expect("8 bytes"));
    let dr = take(
        &mut pos,
        usize::try_from(dlen).unwrap_or(usize::MAX),
        "data",
    )?;
    let body_end = pos;
    let sr = take(&mut pos, 32, "checksum")?;
    let signer = match bytes.len() - pos {
        0 => None,
        n if n == SIG_BLOCK && bytes[pos..].starts_with(SIG_MAGIC) => {
            use ed25519_dalek::Verifier;
            let pk: [u8; 32] = bytes[pos + 8..pos + 40].try_into().expect("32 bytes");
            let sig: [u8; 64] = bytes[pos + 40..].try_into().expect("64 bytes");
            let key = ed25519_dalek::VerifyingKey::from_bytes(&pk)
                .map_err(|e| BackupError::BadSignature(format!("unusable public key: {e}")))?;
            key.verify(
                &bytes[sr.clone()],
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .map_err(|_| {
                BackupError::BadSignature("the signature does not match the checksum".into())
            })?;
            Some(pk)
        }
        n if bytes[pos..].starts_with(&SIG_MAGIC[..n.min(SIG_MAGIC.len())]) => {
            return Err(BackupError::Truncated(format!(
                "signature block has {n} of {SIG_BLOCK} bytes"
            )));
        }
        n => {
            return Err(BackupError::Data(format!(
                "{n} unexpected bytes after the checksum"
            )));
        }
    };
    // The checksum (a third to half of the time at 100 MiB) on a second
    // thread while this one checks the content; a bad checksum is still
    // the error reported first.
    let (actual, content) = std::thread::scope(|s| {
        let sum = s.spawn(|| Sha256::digest(&bytes[..body_end]));
        let content = check_content(&bytes[hr], &bytes[dr.clone()]);
        (
            sum.join().expect("the checksum thread does not panic"),
            content,
        )
    });
    if actual.as_slice() != &bytes[sr.clone()] {
        return Err(BackupError::Checksum {
            expected: hex(&bytes[sr]),
            actual: hex(&actual),
        });
    }
    Ok((content?, signer, dr))
}

/// The header (format version, JSON) and the data records, checked against
/// each other.
fn check_content(head: &[u8], dump: &[u8]) -> Result<BackupHeader, BackupError> {
    let raw: serde_json::Value =
        serde_json::from_slice(head).map_err(|e| BackupError::Header(e.to_string()))?;
    let version = raw
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    if version != FORMAT_VERSION {
        return Err(BackupError::UnknownVersion(version));
    }
    let header: BackupHeader =
        serde_json::from_value(raw).map_err(|e| BackupError::Header(e.to_string()))?;
    let records = parse(dump).map_err(|e| BackupError::Data(e.to_string()))?;
    let s = summarize(&records)?;
    let checks = [
        (
            "revision",
            header.revision.to_string(),
            s.revision.to_string(),
        ),
        (
            "key_count",
            header.key_count.to_string(),
            s.key_count.to_string(),
        ),
        (
            "content_hash",
            header.content_hash.to_string(),
            s.content_hash.to_string(),
        ),
        (
            "cluster_id",
            header.cluster_id.to_string(),
            s.cluster_id.to_string(),
        ),
        (
            "counts_by_kind",
            format!("{:?}", header.counts_by_kind),
            format!("{:?}", s.counts_by_kind),
        ),
    ];
    for (what, said, found) in checks {
        if said != found {
            return Err(BackupError::Mismatch(format!(
                "{what}: header says {said}, data has {found}"
            )));
        }
    }
    Ok(header)
}

/// Who took a backup and where the Raft log stood.
#[derive(Debug, Clone)]
pub struct Source {
    pub member: String,
    pub member_id: u64,
    pub raft_term: u64,
    pub raft_index: u64,
}

/// Builds a backup file from a key-space dump (padding after the dump's end
/// marker is dropped): header computed from the data, then `encode` (with
/// the head padded to `head_len` bytes if it fits; 0 for no padding).
pub fn build<'a>(
    dump: &'a [u8],
    source: &Source,
    head_len: usize,
) -> Result<(BackupHeader, FileParts<'a>), BackupError> {
    let records = parse(dump).map_err(|e| BackupError::Data(e.to_string()))?;
    let len = crate::mvcc::snapshot::MAGIC.len()
        + records
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
    let s = summarize(&records)?;
    let header = BackupHeader {
        format_version: FORMAT_VERSION,
        keel_version: env!("CARGO_PKG_VERSION").into(),
        cluster_id: s.cluster_id,
        source_member: source.member.clone(),
        source_member_id: source.member_id,
        revision: s.revision,
        compact_revision: s.compact_revision,
        raft_term: source.raft_term,
        raft_index: source.raft_index,
        created_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        key_count: s.key_count,
        counts_by_kind: s.counts_by_kind,
        content_hash: s.content_hash,
    };
    let file = encode_parts_padded(&header, &dump[..len], head_len);
    Ok((header, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_redacted() {
        let ca = b"-----BEGIN PRIVATE KEY-----";
        assert_eq!(printable_value(b"/keel/pki/ca.key", ca), "<redacted>");
        assert_eq!(
            printable_value(b"/keel/tokens/abc", b"sha256"),
            "<redacted>"
        );
        assert_eq!(printable_value(b"/registry/pods/d/a", b"{}"), "{}");
        // A prefix match on whole path segments, not on a look-alike name.
        assert!(!is_secret_key(b"/keel/pkix"));
        assert!(!is_secret_key(b"/keel/tokens"));
        assert!(is_secret_key(b"/keel/tokens/"));
    }
}
