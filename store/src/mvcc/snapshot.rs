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

/// One (sled key, value) record of a dump, borrowed from the dump's bytes
/// (a backup of 100,000 keys is a few hundred thousand records: copying
/// each into its own allocation was most of what restoring one cost).
pub type Record<'a> = (&'a [u8], &'a [u8]);

/// The applied log id and membership records of `tree`, if any.
fn applied_meta(tree: &sled::Tree) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let get = |k: &[u8]| tree.get(k).ok().flatten().map(|v| v.to_vec());
    (get(keys::META_APPLIED), get(keys::META_MEMBERSHIP))
}

/// A consistent view of every record of the key space, taken under the
/// apply lock without copying a byte: sled's keys and values are immutable
/// shared buffers (`IVec`), so holding them keeps that one revision's bytes
/// while writes go on. Encoding it (`encode`, `chunks`) happens after the
/// lock is released. Copying a 100,000-key space (123 MB) into one buffer
/// under the lock held writes back for it, and on a VM that buffer's fresh
/// pages cost more than the copy (BENCHMARKS.md, fifteenth round).
pub struct Records {
    pairs: Vec<(sled::IVec, sled::IVec)>,
    /// The applied log id the records correspond to.
    pub applied: Option<Vec<u8>>,
    /// The membership (JSON) the records correspond to.
    pub membership: Option<Vec<u8>>,
}

impl Records {
    /// The dump's length: the magic and every record, before the end
    /// marker and padding.
    pub fn encoded_len(&self) -> usize {
        MAGIC.len()
            + self
                .pairs
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
    }

    /// The whole dump in one buffer of exactly its size.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        for (k, v) in &self.pairs {
            put_record(&mut out, k, v);
        }
        out
    }

    /// The dump in pieces of whole records, each at least `size` bytes
    /// (but the last), in order: concatenated, they are [`Records::encode`].
    pub fn chunks(&self, size: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut pairs = self.pairs.iter().peekable();
        let mut first = true;
        std::iter::from_fn(move || {
            if !first && pairs.peek().is_none() {
                return None;
            }
            let mut out = Vec::with_capacity(size + 64);
            if std::mem::take(&mut first) {
                out.extend_from_slice(MAGIC);
            }
            while out.len() < size {
                let Some((k, v)) = pairs.next() else { break };
                put_record(&mut out, k, v);
            }
            Some(out)
        })
    }
}

fn put_record(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

impl KvStore {
    /// Every record of the key space at one revision, with the applied log
    /// id and membership it corresponds to (see [`Records`]).
    pub fn records(&self) -> Records {
        self.consistent(|tree| {
            let pairs = tree.iter().filter_map(|r| r.ok()).collect();
            let (applied, membership) = applied_meta(tree);
            Records {
                pairs,
                applied,
                membership,
            }
        })
    }

    /// A consistent dump of the key space with the applied log id and
    /// membership (JSON) it corresponds to.
    pub fn dump(&self) -> (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) {
        let r = self.records();
        (r.encode(), r.applied, r.membership)
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
            self.reload_pins()?;
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
    pub async fn restore(&self, records: &[Record<'_>], bump: i64) -> Result<(), StoreError> {
        {
            let _g = self.lock.write().unwrap_or_else(|e| e.into_inner());
            if self.tree.iter().next().is_some() {
                return Err(StoreError::Config(
                    "restore needs an empty data dir: the key space already has data".into(),
                ));
            }
            self.journal.clear()?;
            // Not one sled batch (that holds a second copy of the whole key
            // space in memory, and whose inserts sled makes one at a time
            // under its global batch lock): plain inserts, from two threads
            // over the two halves of the key order, between a marker written
            // first and removed last. sled recovers a prefix of its log, so a
            // crash in between leaves the marker, and `KvStore::open`
            // refuses the half-restored dir.
            self.tree.insert(keys::META_RESTORING, &[])?;
            let (meta, data): (Vec<Record<'_>>, Vec<Record<'_>>) = records
                .iter()
                .partition(|(k, _)| k.first() == Some(&keys::META));
            // History below the backup's revision is never read again (it is
            // compacted below, as etcd would answer for it), so it is not
            // written: up to half the bytes of a key space written once and
            // not yet compacted. The run ending at the backup's revision
            // stays, for a watcher starting there. (A record too short to
            // hold a revision is kept as it is, as before.)
            let revision = meta_i64(&meta, keys::META_REVISION).max(1);
            let below = |k: &[u8]| keys::history_rev(k).is_some_and(|r| r < revision);
            let (history, data): (Vec<Record<'_>>, Vec<Record<'_>>) = data
                .into_iter()
                .filter(|(k, _)| !below(k))
                .partition(|(k, _)| keys::history_rev(k).is_some());
            // The kept history's references name events that are not kept:
            // they are stored whole instead (`super::prev`).
            let history = super::prev::materialize(&history, records).map_err(StoreError::Apply)?;
            let data: Vec<Record<'_>> = data
                .into_iter()
                .chain(history.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
                .collect();
            let half = data.len().div_ceil(2).max(1);
            std::thread::scope(|s| {
                let workers: Vec<_> = data
                    .chunks(half)
                    .map(|part| {
                        s.spawn(move || {
                            part.iter()
                                .try_for_each(|&(k, v)| self.tree.insert(k, v).map(drop))
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .try_for_each(|w| w.join().expect("restore thread panicked"))
            })?;
            let dropped = [
                keys::META_APPLIED,
                keys::META_MEMBERSHIP,
                keys::META_CLUSTER_ID,
                keys::META_CLUSTER_SALT,
                keys::META_RESTORING,
            ];
            for (k, v) in meta {
                if k == keys::META_CLUSTER_ID {
                    // The new cluster's id is derived with the old one as salt.
                    self.tree.insert(keys::META_CLUSTER_SALT, v)?;
                }
                if dropped.contains(&k) {
                    continue;
                }
                self.tree.insert(k, v)?;
            }
            // History before the backup's revision is not served: a watcher
            // of the old cluster that is behind gets a compacted error and
            // relists. With a bump, the revision also moves past every
            // revision the old cluster may have reached after the backup.
            let floor = revision + bump.max(0);
            let mut batch = sled::Batch::default();
            batch.insert(keys::META_REVISION, &floor.to_be_bytes());
            batch.insert(keys::META_COMPACT, &floor.to_be_bytes());
            batch.remove(keys::META_RESTORING);
            self.tree.apply_batch(batch)?;
            self.reload_counters()?;
            self.reload_pins()?;
        }
        self.flush().await // fsync: the restored key space is on disk
    }
}

/// The number (8 bytes, big-endian) a dump's metadata record `key` holds,
/// 0 if there is none.
pub(crate) fn meta_i64(records: &[Record<'_>], key: &[u8]) -> i64 {
    records
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.get(..8))
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

/// The length of a dump of `len` bytes with its end marker (four zero
/// bytes), padded with zeros to a whole number of `block`s, e.g. for
/// etcdctl, which expects bbolt-page-sized snapshots.
pub fn padded_len(len: usize, block: usize) -> usize {
    (len + 4).div_ceil(block) * block
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("corrupt snapshot: {what}"),
    ))
}

/// One length-prefixed field from the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    if rest.len() < 4 {
        return Err(corrupt("truncated length"));
    }
    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if rest.len() < 4 + n {
        return Err(corrupt("truncated record"));
    }
    let (v, tail) = rest[4..].split_at(n);
    *rest = tail;
    Ok(v)
}

/// Decodes a dump into its records (borrowed from `data`); any truncation
/// or bad magic is an error.
pub fn parse(data: &[u8]) -> Result<Vec<Record<'_>>, StoreError> {
    if !data.starts_with(MAGIC) {
        return Err(corrupt("bad magic"));
    }
    let mut rest = &data[MAGIC.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() >= 4 && rest[..4] == [0, 0, 0, 0] {
            if rest.iter().any(|b| *b != 0) {
                return Err(corrupt("garbage after the end marker"));
            }
            break;
        }
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use keel_proto::etcdserverpb::RangeRequest;
    use keel_proto::mvccpb::KeyValue;
    use prost::Message;

    use super::*;

    fn records(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
            .map(|i| {
                let key = format!("key{i:05}").into_bytes();
                let kv = KeyValue {
                    key: key.clone(),
                    value: vec![b'v'; 100],
                    create_revision: 2,
                    mod_revision: 2,
                    version: 1,
                    lease: 0,
                };
                (keys::kv_key(&key), kv.encode_to_vec())
            })
            .collect();
        out.push((keys::META_CLUSTER_ID.to_vec(), 7u64.to_be_bytes().to_vec()));
        out.push((keys::META_REVISION.to_vec(), 9i64.to_be_bytes().to_vec()));
        out
    }

    /// The records taken under the lock, encoded whole or in pieces, are
    /// the dump format: every record in key order, parsed back the same;
    /// and a write after they were taken changes none of their bytes.
    #[test]
    fn records_encode_whole_or_in_pieces_at_the_revision_they_were_taken() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(dir.path()).unwrap();
        for i in 0..300 {
            crate::mvcc::tests::put(&kv, &format!("k{i:03}"));
        }
        let before: Vec<(Vec<u8>, Vec<u8>)> = kv
            .tree
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let taken = kv.records();
        // Writes after the records were taken: an overwrite and a new key.
        crate::mvcc::tests::put(&kv, "k000");
        crate::mvcc::tests::put(&kv, "k999");

        let whole = taken.encode();
        assert_eq!(whole.len(), taken.encoded_len());
        let parsed: Vec<(Vec<u8>, Vec<u8>)> = parse(&whole)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(parsed, before);
        for size in [1, 100, 4096, 1 << 20] {
            let pieces: Vec<Vec<u8>> = taken.chunks(size).collect();
            assert!(
                pieces[..pieces.len() - 1].iter().all(|p| p.len() >= size),
                "size {size}"
            );
            assert_eq!(pieces.concat(), whole, "size {size}");
        }
        // Zero padding: room for the end marker, less than a block more.
        let mut padded = whole.clone();
        padded.resize(padded_len(whole.len(), 512), 0);
        assert_eq!(padded.len() % 512, 0);
        let extra = padded.len() - whole.len();
        assert!((4..4 + 512).contains(&extra), "{extra} bytes of padding");
        assert_eq!(parse(&padded).unwrap().len(), before.len());
    }

    #[tokio::test]
    async fn restore_fills_the_key_space_and_leaves_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        let owned = records(20_005);
        let borrowed: Vec<Record<'_>> = owned.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        {
            let kv = KvStore::open(dir.path()).unwrap();
            kv.restore(&borrowed, 3).await.unwrap();
            // A second restore into the now filled key space is refused.
            assert!(kv.restore(&borrowed, 0).await.is_err());
        }
        let kv = KvStore::open(dir.path()).expect("a finished restore opens");
        assert_eq!((kv.revision(), kv.compact_revision()), (12, 12));
        let all = kv
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                count_only: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.count as usize, 20_005);
        assert!(!kv.tree.contains_key(keys::META_RESTORING).unwrap());
        // The source's id is kept only as the salt of the new cluster's id.
        assert!(!kv.tree.contains_key(keys::META_CLUSTER_ID).unwrap());
        assert!(kv.tree.contains_key(keys::META_CLUSTER_SALT).unwrap());
    }

    #[tokio::test]
    async fn restore_leaves_out_history_below_the_backup_revision() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = KvStore::open(src_dir.path()).unwrap();
        for k in ["a", "b", "c", "a"] {
            crate::mvcc::tests::put(&src, k);
        }
        let rev = src.revision();
        let (dump, _, _) = src.dump();
        let records = parse(&dump).unwrap();
        let history = |kv: &KvStore| {
            kv.tree
                .scan_prefix([keys::REV])
                .keys()
                .map(|k| keys::rev_of(&k.unwrap()))
                .collect::<Vec<_>>()
        };
        assert!(
            history(&src).iter().any(|r| *r < rev),
            "{:?}",
            history(&src)
        );

        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(dir.path()).unwrap();
        kv.restore(&records, 0).await.unwrap();
        assert_eq!((kv.revision(), kv.compact_revision()), (rev, rev));
        // Only the run ending at the backup's revision is written ...
        assert_eq!(history(&kv), vec![rev]);
        // ... which a watcher starting at that revision is served from,
        // with the previous key-value that the source's event held as a
        // reference to history not restored (`super::prev`).
        let (events, _) = kv.events_between(rev, None).unwrap();
        let keys: Vec<_> = events
            .iter()
            .map(|(_, e)| e.kv.clone().unwrap().key)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec()]);
        let prev = events[0].1.prev_kv.clone().unwrap();
        assert_eq!((prev.key, prev.mod_revision), (b"a".to_vec(), rev - 3));
        let (src_events, _) = src.events_between(rev, None).unwrap();
        assert_eq!(events, src_events);
        let stored = |kv: &KvStore| {
            let (k, v) = kv.tree.scan_prefix([keys::REV]).last().unwrap().unwrap();
            super::super::history::decode_record(&k, &v).unwrap()
        };
        assert_eq!(
            super::super::prev::reference(&stored(&src)[0].1),
            Some(rev - 3)
        );
        assert_eq!(super::super::prev::reference(&stored(&kv)[0].1), None);
        assert!(kv.events_between(rev - 1, None).is_err());
        // Every current key is there, with the same content hash.
        assert_eq!(kv.hash_kv(rev).unwrap().0, src.hash_kv(rev).unwrap().0);
    }

    #[tokio::test]
    async fn restore_keeps_a_record_too_short_to_be_history_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let mut owned = records(3);
        owned.push((vec![keys::REV], b"x".to_vec()));
        let borrowed: Vec<Record<'_>> = owned.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let kv = KvStore::open(dir.path()).unwrap();
        kv.restore(&borrowed, 0).await.unwrap();
        assert!(kv.tree.contains_key([keys::REV]).unwrap());
    }

    #[tokio::test]
    async fn a_restore_cut_off_before_its_end_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = KvStore::open(dir.path()).unwrap();
            // What a crash between the first and the last batch leaves.
            kv.tree.insert(keys::META_RESTORING, &[]).unwrap();
            kv.tree.insert(keys::kv_key(b"half"), &b"x"[..]).unwrap();
            kv.flush().await.unwrap();
        }
        let e = KvStore::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("restore that did not finish"), "{e}");
    }
}
