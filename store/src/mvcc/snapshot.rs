//! Whole-key-space snapshots: the bytes a Raft snapshot carries to a far
//! behind member, and what etcd's Maintenance.Snapshot streams.
//!
//! Format: the magic line `KEELSNAP1\n`, then records of
//! `u32 key length, key, u32 value length, value` (big-endian) for every
//! record of the tree, in key order. A zero key length (no record key is
//! empty) ends the records; only zero padding may follow it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{EventBatch, KvStore, keys};
use crate::error::StoreError;

/// First bytes of every dump.
pub const MAGIC: &[u8] = b"KEELSNAP1\n";

/// One (sled key, value) record of a dump.
pub type Record = (Vec<u8>, Vec<u8>);

/// The applied log id and membership records of `tree`, if any.
fn applied_meta(tree: &sled::Tree) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let get = |k: &[u8]| tree.get(k).ok().flatten().map(|v| v.to_vec());
    (get(keys::META_APPLIED), get(keys::META_MEMBERSHIP))
}

impl KvStore {
    /// A consistent dump of the key space with the applied log id and
    /// membership (JSON) it corresponds to.
    pub fn dump(&self) -> (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) {
        self.consistent(|tree| {
            let mut out = Vec::with_capacity(MAGIC.len() + 4096);
            out.extend_from_slice(MAGIC);
            for (k, v) in tree.iter().filter_map(|r| r.ok()) {
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(&k);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(&v);
            }
            let (applied, membership) = applied_meta(tree);
            (out, applied, membership)
        })
    }

    /// The applied log id and membership (JSON) alone, read together under
    /// the apply lock: what a snapshot of the key space would say it holds.
    pub fn applied_meta(&self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        self.consistent(applied_meta)
    }

    /// Replaces the whole key space with a dump, recording `applied` and
    /// `membership` (JSON) from the snapshot's metadata, then fsyncs sled so
    /// that the Raft log may be purged past it.
    pub async fn install(
        &self,
        data: &[u8],
        applied: Vec<u8>,
        membership: Vec<u8>,
    ) -> Result<(), StoreError> {
        let records = parse(data)?;
        {
            let _g = self.lock.write().unwrap_or_else(|e| e.into_inner());
            // Before the key space is replaced: never redo an older batch.
            self.journal.clear()?;
            let mut batch = sled::Batch::default();
            for k in self.tree.iter().keys().filter_map(|k| k.ok()) {
                batch.remove(k);
            }
            for (k, v) in records {
                batch.insert(k, v);
            }
            batch.insert(keys::META_APPLIED, applied);
            batch.insert(keys::META_MEMBERSHIP, membership);
            self.tree.apply_batch(batch)?;
            self.reload_counters()?;
            self.cluster_id.store(0, Ordering::Relaxed);
            // Watchers re-read history: the snapshot replaced it wholesale.
            let _ = self
                .events
                .send(Arc::new(EventBatch { events: Vec::new() }));
        }
        // fsync: the installed state is durable before openraft purges logs.
        self.flush().await?;
        tracing::info!(
            revision = self.revision.load(Ordering::SeqCst),
            "installed snapshot"
        );
        Ok(())
    }
}

impl KvStore {
    /// Fills an empty key space from backup records for a new cluster: the
    /// source's applied log id, membership and cluster id are left out (the
    /// new cluster bootstraps its own; the old id salts the new one), and with `bump > 0` the revision
    /// moves `bump` past the backup's and everything below it counts as
    /// compacted, so watchers of the old cluster get a compacted error
    /// instead of seeing revisions go backwards. Fsyncs before returning.
    pub async fn restore(&self, records: Vec<Record>, bump: i64) -> Result<(), StoreError> {
        {
            let _g = self.lock.write().unwrap_or_else(|e| e.into_inner());
            if self.tree.iter().next().is_some() {
                return Err(StoreError::Config(
                    "restore needs an empty data dir: the key space already has data".into(),
                ));
            }
            self.journal.clear()?;
            let mut batch = sled::Batch::default();
            let dropped = [
                keys::META_APPLIED,
                keys::META_MEMBERSHIP,
                keys::META_CLUSTER_ID,
                keys::META_CLUSTER_SALT,
            ];
            let mut revision = 1;
            for (k, v) in records {
                if k.as_slice() == keys::META_CLUSTER_ID {
                    // The new cluster's id is derived with the old one as salt.
                    batch.insert(keys::META_CLUSTER_SALT, v.clone());
                }
                if dropped.contains(&k.as_slice()) {
                    continue;
                }
                if k.as_slice() == keys::META_REVISION && v.len() >= 8 {
                    revision = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                }
                batch.insert(k, v);
            }
            // History before the backup's revision is not served: a watcher
            // of the old cluster that is behind gets a compacted error and
            // relists. With a bump, the revision also moves past every
            // revision the old cluster may have reached after the backup.
            let floor = revision + bump.max(0);
            batch.insert(keys::META_REVISION, floor.to_be_bytes().to_vec());
            batch.insert(keys::META_COMPACT, floor.to_be_bytes().to_vec());
            self.tree.apply_batch(batch)?;
            self.reload_counters()?;
        }
        self.flush().await // fsync: the restored key space is on disk
    }
}

/// Pads a dump with zeros to a multiple of `block` bytes (an end marker
/// first), e.g. for etcdctl, which expects bbolt-page-sized snapshots.
pub fn pad(data: &mut Vec<u8>, block: usize) {
    data.extend_from_slice(&[0, 0, 0, 0]);
    let rem = data.len() % block;
    if rem != 0 {
        data.resize(data.len() + block - rem, 0);
    }
}

/// Decodes a dump into its records; any truncation or bad magic is an error.
pub fn parse(data: &[u8]) -> Result<Vec<Record>, StoreError> {
    let bad = |what: &str| {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("corrupt snapshot: {what}"),
        ))
    };
    if !data.starts_with(MAGIC) {
        return Err(bad("bad magic"));
    }
    let mut rest = &data[MAGIC.len()..];
    let mut out = Vec::new();
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StoreError> {
        if rest.len() < 4 {
            return Err(bad("truncated length"));
        }
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + n {
            return Err(bad("truncated record"));
        }
        let v = rest[4..4 + n].to_vec();
        *rest = &rest[4 + n..];
        Ok(v)
    };
    while !rest.is_empty() {
        if rest.len() >= 4 && rest[..4] == [0, 0, 0, 0] {
            if rest.iter().any(|b| *b != 0) {
                return Err(bad("garbage after the end marker"));
            }
            break;
        }
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        out.push((k, v));
    }
    Ok(out)
}
