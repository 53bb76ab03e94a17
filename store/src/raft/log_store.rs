//! The Raft log and vote, stored in redb.
//!
//! Durability contract (every fsync named here):
//! - `append`: all entries of one call go into one redb write transaction
//!   committed with `Durability::Immediate`; the commit fsyncs the file before
//!   it returns, and only then is `IOFlushed` signalled.
//! - `save_vote`: one transaction, committed (fsync) before returning.
//! - `purge`: `last_purged` is written in the same transaction that deletes the
//!   entries, so the log state is never left with a hole after a crash.
//! - `truncate_after` commits with fsync before returning.
//! - `save_committed`: not fsynced: the committed index is only a recovery
//!   hint (openraft re-learns it from the leader); the next fsynced commit
//!   persists it.
//!
//! Two designs that let `append` return before the fsync were measured and
//! dropped (`keel bench kv`, BENCHMARKS.md): a non-durable commit plus a
//! batched fsync commit on a flusher thread (two redb commits per batch), and
//! a pending in-memory map with a writer thread (copies on the hot path);
//! both had lower throughput and no better latency than this one.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::raft::codec;
use crate::raft::types::TypeConfig;

type C = TypeConfig;
type Entry = <C as RaftTypeConfig>::Entry;
type Vote = <C as RaftTypeConfig>::Vote;
type LogIdC = openraft::alias::LogIdOf<C>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const K_VOTE: &str = "vote";
const K_PURGED: &str = "last_purged";
const K_COMMITTED: &str = "committed";

/// The most encoded entry bytes one AppendEntries carries (a quarter of the
/// peer link's message limit, leaving room for the encoding's overhead).
pub const MAX_APPEND_BYTES: usize = crate::raft::network::PEER_MESSAGE_LIMIT / 4;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The redb-backed log store; cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (or creates) `raft-log.redb` under `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft-log.redb")).map_err(io_err)?;
        let mut tx = db.begin_write().map_err(io_err)?;
        tx.set_durability(Durability::Immediate).map_err(io_err)?;
        tx.open_table(LOG).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.commit().map_err(io_err)?; // fsync: tables exist before first use
        Ok(LogStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, io::Error> + Send + 'static,
    ) -> io::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(io_err)?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> io::Result<Option<T>> {
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(META).map_err(io_err)?;
        match t.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(codec::decode(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    /// Writes one meta value in its own durable (fsynced) transaction.
    fn write_meta<T: serde::Serialize>(db: &Database, key: &str, value: &T) -> io::Result<()> {
        let bytes = codec::encode(value);
        let mut tx = db.begin_write().map_err(io_err)?;
        tx.set_durability(Durability::Immediate).map_err(io_err)?;
        tx.open_table(META)
            .map_err(io_err)?
            .insert(key, bytes.as_slice())
            .map_err(io_err)?;
        tx.commit().map_err(io_err) // fsync before returning
    }

    /// Size in bytes of the log file, for status reports.
    pub fn disk_size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("raft-log.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(io_err)?;
            let t = tx.open_table(LOG).map_err(io_err)?;
            let iter = match end {
                Some(e) if e <= start => return Ok(Vec::new()),
                Some(e) => t.range(start..e).map_err(io_err)?,
                None => t.range(start..).map_err(io_err)?,
            };
            let mut out = Vec::new();
            for item in iter {
                let (_, v) = item.map_err(io_err)?;
                out.push(codec::decode(v.value()).map_err(io_err)?);
            }
            Ok(out)
        })
        .await
    }

    /// The entries openraft replicates in one AppendEntries: at most
    /// `MAX_APPEND_BYTES` of encoded entries (always at least one, as
    /// openraft requires), so a batch of large entries never exceeds the peer
    /// link's message limit.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(io_err)?;
            let t = tx.open_table(LOG).map_err(io_err)?;
            let mut out = Vec::new();
            if end <= start {
                return Ok(out);
            }
            let mut bytes = 0usize;
            for item in t.range(start..end).map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                let raw = v.value();
                if !out.is_empty() && bytes + raw.len() > MAX_APPEND_BYTES {
                    break;
                }
                bytes += raw.len();
                out.push(codec::decode(raw).map_err(io_err)?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.blocking(|db| Self::read_meta(db, K_VOTE)).await
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        self.blocking(|db| {
            let purged: Option<LogIdC> = Self::read_meta(db, K_PURGED)?;
            let tx = db.begin_read().map_err(io_err)?;
            let t = tx.open_table(LOG).map_err(io_err)?;
            let last: Option<LogIdC> = match t.last().map_err(io_err)? {
                Some((_, v)) => {
                    let e: Entry = codec::decode(v.value()).map_err(io_err)?;
                    Some(e.log_id)
                }
                None => None,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        // fsync: the vote is committed durably before this returns.
        self.blocking(move |db| Self::write_meta(db, K_VOTE, &vote))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogIdC>) -> Result<(), io::Error> {
        self.blocking(move |db| {
            let bytes = codec::encode(&committed);
            let mut tx = db.begin_write().map_err(io_err)?;
            // No fsync: a hint that the next durable commit persists.
            tx.set_durability(Durability::None).map_err(io_err)?;
            tx.open_table(META)
                .map_err(io_err)?
                .insert(K_COMMITTED, bytes.as_slice())
                .map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdC>, io::Error> {
        self.blocking(|db| Ok(Self::read_meta::<Option<LogIdC>>(db, K_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for e in entries {
            batch.push((e.log_id.index, codec::encode(&e)));
        }
        let res = self
            .blocking(move |db| {
                let mut tx = db.begin_write().map_err(io_err)?;
                tx.set_durability(Durability::Immediate).map_err(io_err)?;
                {
                    let mut t = tx.open_table(LOG).map_err(io_err)?;
                    for (i, bytes) in &batch {
                        t.insert(*i, bytes.as_slice()).map_err(io_err)?;
                    }
                }
                // fsync: the whole batch is on disk when commit returns.
                tx.commit().map_err(io_err)
            })
            .await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdC>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.blocking(move |db| {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            tx.open_table(LOG)
                .map_err(io_err)?
                .retain_in(from.., |_, _| false)
                .map_err(io_err)?;
            tx.commit().map_err(io_err) // fsync
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdC) -> Result<(), io::Error> {
        self.blocking(move |db| {
            let bytes = codec::encode(&log_id);
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            // last_purged and the deletion land in one transaction: a crash
            // leaves either both or neither.
            tx.open_table(META)
                .map_err(io_err)?
                .insert(K_PURGED, bytes.as_slice())
                .map_err(io_err)?;
            tx.open_table(LOG)
                .map_err(io_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(io_err)?;
            tx.commit().map_err(io_err) // fsync
        })
        .await
    }
}
