//! The etcd-shaped key space (the Raft state machine's data) in sled: one
//! global revision, per-key create/mod revision and version, an event history
//! kept until compaction, and leases.
//!
//! Everything lives in one sled tree, and each applied batch of Raft entries
//! (data, events, applied log id, membership) is atomic: journaled whole,
//! then written (`journal`).
//! sled is not fsynced per apply: a restart replays the Raft log from the
//! applied index sled recovered. Before the log is purged past an index the
//! tree is flushed (fsync) in `flush`, called by the snapshot builder.

pub mod apply;
pub mod feed;
pub mod history;
pub mod journal;
pub mod keys;
pub mod prev;
pub mod read;
pub mod snapshot;

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use keel_proto::mvccpb::Event;
use prost::Message;
use tokio::sync::broadcast;

use crate::error::StoreError;

/// The events of one applied batch, in revision order.
#[derive(Debug)]
pub struct EventBatch {
    /// (revision, event) in the order they were applied.
    pub events: Vec<(i64, Event)>,
}

/// The key space of one member.
pub struct KvStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Makes each applied batch atomic (see `journal`).
    journal: journal::Journal,
    /// Appliers hold it for writing; multi-key readers for reading, so a read
    /// never sees half of an applied batch.
    lock: RwLock<()>,
    revision: AtomicI64,
    compact_revision: AtomicI64,
    /// Cached cluster id (0 until the first membership entry is applied).
    cluster_id: AtomicU64,
    events: broadcast::Sender<Arc<EventBatch>>,
    /// Test only: a put of this key fails to apply as a storage error.
    failpoint: std::sync::OnceLock<Vec<u8>>,
    /// Leases granted since the lessor last looked (`take_granted`): a lease
    /// revoked and granted again under the same ID between two looks must
    /// get a fresh deadline, not keep the old grant's.
    granted: std::sync::Mutex<Vec<i64>>,
    /// The references stored in the history (`prev`), which compactions
    /// keep history for. Changed only by appliers, under `lock`.
    pins: std::sync::Mutex<prev::Pins>,
}

/// Opens a sled db, waiting up to 5 s for its file lock. A dropped `Db`
/// releases the lock only when sled's IO threads let go of it, a moment
/// later, so reopening a dir this process just closed could fail with
/// "could not acquire lock" (the store's unit tests did, once in a few
/// dozen runs). Another process holding the dir still fails, after the wait.
pub(crate) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

impl KvStore {
    /// Opens (or creates) the key space under `dir/kv.sled`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        // No periodic background flush: durability comes from the Raft log
        // (replayed from the applied index) plus the fsync in `flush`, which
        // the snapshot builder calls before the log is purged.
        let db = open_sled(
            &sled::Config::new()
                .path(dir.join("kv.sled"))
                .cache_capacity(256 * 1024 * 1024)
                .flush_every_ms(None)
                .mode(sled::Mode::HighThroughput),
        )?;
        let tree = db.open_tree("kv")?;
        if tree.contains_key(keys::META_RESTORING)? {
            return Err(StoreError::Config(format!(
                "{} holds a restore that did not finish: delete it and restore again",
                dir.display()
            )));
        }
        // Finishes the batch a crash interrupted before anything reads.
        let journal = journal::Journal::open(&db, &tree)?;
        let (events, _) = broadcast::channel(4096);
        let s = KvStore {
            db,
            tree,
            journal,
            lock: RwLock::new(()),
            revision: AtomicI64::new(1),
            compact_revision: AtomicI64::new(0),
            cluster_id: AtomicU64::new(0),
            events,
            failpoint: std::sync::OnceLock::new(),
            granted: std::sync::Mutex::new(Vec::new()),
            pins: std::sync::Mutex::new(prev::Pins::default()),
        };
        s.reload_counters()?;
        s.drop_torn_history()?;
        s.reload_pins()?;
        Ok(Arc::new(s))
    }

    /// Removes history above the recorded revision: what a batch whose
    /// journal head a crash lost had written ahead of it (`apply_batch`).
    fn drop_torn_history(&self) -> Result<(), StoreError> {
        let from = keys::rev_key(self.revision() + 1, 0);
        for k in self.tree.range(from..vec![keys::REV + 1]).keys() {
            let k = k?;
            tracing::debug!(
                revision = keys::rev_of(&k),
                "removing history of a torn batch"
            );
            self.tree.remove(k)?;
        }
        Ok(())
    }

    /// Reads the history's references again (`prev::Pins`): at open and
    /// after the key space was replaced.
    fn reload_pins(&self) -> Result<(), StoreError> {
        let pins =
            prev::Pins::load(&self.tree, self.compact_revision()).map_err(StoreError::Apply)?;
        *self.pins.lock().unwrap_or_else(|e| e.into_inner()) = pins;
        Ok(())
    }

    fn reload_counters(&self) -> Result<(), StoreError> {
        let rev = self.get_i64(keys::META_REVISION)?.unwrap_or(1);
        let compact = self.get_i64(keys::META_COMPACT)?.unwrap_or(0);
        self.revision.store(rev, Ordering::SeqCst);
        self.compact_revision.store(compact, Ordering::SeqCst);
        Ok(())
    }

    fn get_i64(&self, key: &[u8]) -> Result<Option<i64>, sled::Error> {
        Ok(self.tree.get(key)?.map(|v| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[..8]);
            i64::from_be_bytes(b)
        }))
    }

    /// Test only: makes applying a put of `key` fail as a storage error.
    pub fn set_failpoint(&self, key: Vec<u8>) {
        let _ = self.failpoint.set(key);
    }

    /// The current (latest applied) revision.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// The IDs of the leases granted since the last call, in order.
    pub fn take_granted(&self) -> Vec<i64> {
        std::mem::take(&mut *self.granted.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The revision below which history has been compacted away.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision.load(Ordering::SeqCst)
    }

    /// The cluster id recorded by the first membership entry, or 0.
    pub fn cluster_id(&self) -> u64 {
        let cached = self.cluster_id.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        let id = self
            .get_i64(keys::META_CLUSTER_ID)
            .ok()
            .flatten()
            .unwrap_or(0) as u64;
        self.cluster_id.store(id, Ordering::Relaxed);
        id
    }

    /// The salt for the cluster id (0 unless restored from a backup).
    pub fn cluster_salt(&self) -> u64 {
        self.get_i64(keys::META_CLUSTER_SALT)
            .ok()
            .flatten()
            .unwrap_or(0) as u64
    }

    /// A JSON metadata value (applied log id, membership).
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        let v = self.tree.get(key).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Subscribes to the events of every batch applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.events.subscribe()
    }

    /// Runs `f` with a consistent view: no batch is applied meanwhile.
    pub fn consistent<T>(&self, f: impl FnOnce(&sled::Tree) -> T) -> T {
        let _g = self.lock.read().unwrap_or_else(|e| e.into_inner());
        f(&self.tree)
    }

    /// Makes everything applied so far durable (fsync of sled's log).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Size of the sled files, for status reports.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

pub(crate) fn decode<M: Message + Default>(bytes: &[u8]) -> M {
    // Records are written only by this module; a decode failure means the
    // file is corrupt, which must stop the member rather than serve garbage.
    M::decode(bytes).expect("corrupt record in key space")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::apply::BatchMeta;
    use keel_proto::etcdserverpb::PutRequest;
    use keel_proto::keelraft::{Command, command::Op};
    use keel_proto::mvccpb::KeyValue;

    pub(crate) fn put(kv: &KvStore, key: &str) {
        let c = Command {
            op: Some(Op::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        let meta = BatchMeta {
            applied: b"{}".to_vec(),
            membership: None,
            cluster_id: None,
        };
        kv.apply_batch(&[Some(&c)], meta).unwrap();
    }

    #[test]
    fn history_a_torn_batch_wrote_ahead_of_its_journal_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            let kv = KvStore::open(dir.path()).unwrap();
            put(&kv, "a");
            put(&kv, "b");
            // What a crash after a batch's history and before its journal
            // head leaves: a run above the recorded revision.
            let ev = Event {
                kv: Some(KeyValue {
                    key: b"torn".to_vec(),
                    mod_revision: kv.revision() + 1,
                    ..Default::default()
                }),
                ..Default::default()
            };
            for (k, v) in history::encode_runs(&[(kv.revision() + 1, ev)], 0) {
                kv.tree.insert(k, v).unwrap();
            }
            kv.db.flush().unwrap();
            kv.revision()
        };
        let kv = KvStore::open(dir.path()).unwrap();
        assert_eq!(kv.revision(), rev);
        let above = keys::rev_key(rev + 1, 0);
        assert_eq!(kv.tree.range(above..vec![keys::REV + 1]).count(), 0);
        // The next batch takes that revision with its own event alone.
        put(&kv, "c");
        let (events, _) = kv.events_between(rev + 1, None).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1.kv.as_ref().unwrap().key, b"c");
        assert_eq!(kv.events_between(1, None).unwrap().0.len(), 3);
    }

    #[test]
    fn a_batch_of_puts_cut_off_after_its_journal_is_redone_from_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, rev);
        {
            let kv = KvStore::open(dir.path()).unwrap();
            put(&kv, "a");
            let a_before = kv.tree.get(keys::kv_key(b"a")).unwrap().unwrap();
            let rev_before = kv.tree.get(keys::META_REVISION).unwrap().unwrap();
            let cmd = |key: &str| Command {
                op: Some(Op::Put(PutRequest {
                    key: key.into(),
                    value: vec![9; 300],
                    ..Default::default()
                })),
            };
            let (ca, cb) = (cmd("a"), cmd("b"));
            let meta = BatchMeta {
                applied: b"{}".to_vec(),
                membership: None,
                cluster_id: None,
            };
            kv.apply_batch(&[Some(&ca), Some(&cb)], meta).unwrap();
            // Plain puts: the journal holds only what their events do not say.
            let journal = kv.db.open_tree("apply-journal").unwrap();
            assert_eq!(journal.get(b"h").unwrap().unwrap().len(), 28);
            a = kv.tree.get(keys::kv_key(b"a")).unwrap().unwrap();
            b = kv.tree.get(keys::kv_key(b"b")).unwrap().unwrap();
            rev = kv.revision();
            // As if the crash came right after the journal's head.
            kv.tree.insert(keys::kv_key(b"a"), a_before).unwrap();
            kv.tree.remove(keys::kv_key(b"b")).unwrap();
            kv.tree.insert(keys::META_REVISION, rev_before).unwrap();
            kv.db.flush().unwrap();
        }
        let kv = KvStore::open(dir.path()).unwrap();
        assert_eq!(kv.revision(), rev);
        assert_eq!(kv.tree.get(keys::kv_key(b"a")).unwrap().unwrap(), a);
        assert_eq!(kv.tree.get(keys::kv_key(b"b")).unwrap().unwrap(), b);
        let got = KeyValue::decode(&*b).unwrap();
        assert_eq!((got.value, got.mod_revision), (vec![9; 300], rev));
        // The history of the redone batch stays (it is not above the revision).
        assert_eq!(kv.events_between(rev - 1, None).unwrap().0.len(), 2);
    }
}
