//! The Raft log and vote: entries in append-only segment files
//! (`raft::wal`), the vote and the log's bookkeeping (purge point,
//! committed hint) in a small redb database.
//!
//! `append` returns as soon as the entries are readable (they sit in
//! `pending`, the log's not yet durable suffix) and hands them to one writer
//! thread; openraft starts replicating them to followers at once
//! (`broadcast_submitted_on_append`), so the leader's own fsync runs while
//! the entries travel, as etcd does (Raft thesis §10.2.1). The writer writes
//! every append waiting in its queue with one write and one fdatasync of the
//! active segment (group commit) and only then signals `IOFlushed`; openraft
//! counts this member towards a commit only after that signal.
//!
//! Durability contract (every fsync named here):
//! - `append`: the writer thread's `Wal::append_batch` fdatasyncs the
//!   segment before it returns; only then is `IOFlushed` signalled for each
//!   append in the group. A follower's quiet append written inline goes
//!   through the same `flush_appends`: fdatasync, then the signal.
//! - `save_vote`: one transaction on the writer thread, committed (fsync)
//!   before `save_vote` returns.
//! - `purge`: `last_purged` is committed to redb (fsync) before any segment
//!   is deleted, so a crash in between leaves entries that `open` skips,
//!   never a hole.
//! - `truncate_after`: `Wal::truncate_from` fsyncs the cut before returning.
//! - `save_committed`: not fsynced: the committed index is only a recovery
//!   hint (openraft re-learns it from the leader); the next fsynced redb
//!   commit persists it.
//!
//! The writer thread (`log_writer`) serves every write in the order it was
//! asked for, so a truncation or purge never overtakes an append queued
//! before it.
//!
//! A follower's append of one entry of another leader, with the writer idle
//! and no append in the last `INLINE_GAP`, is written and fdatasynced by
//! `append` itself through the same `flush_appends`: at low load the hand-off
//! to the writer and back only added two thread wake-ups per round trip.
//! Under load an inline fsync would hold a runtime worker and lose the
//! writer's grouping (-8 % puts at 256 clients when tried for every
//! idle-writer append). The leader's own appends always go to the writer.

use std::collections::{BTreeMap, btree_map};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::io_err;
use super::log_writer::{HintSlot, Job, Writer, flush_appends, write_meta, writer};

use crate::raft::codec;
use crate::raft::types::TypeConfig;
use crate::raft::wal::Wal;
use crate::stages::Stages;

pub(super) type C = TypeConfig;
type Entry = <C as RaftTypeConfig>::Entry;
type Vote = <C as RaftTypeConfig>::Vote;
pub(super) type LogIdC = openraft::alias::LogIdOf<C>;

/// Where entries lived before the segment files (`raft::wal`); moved out by
/// `open` when a data dir of an older version still has them.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const K_VOTE: &str = "vote";
const K_PURGED: &str = "last_purged";
pub(super) const K_COMMITTED: &str = "committed";

/// The most encoded entry bytes one AppendEntries carries (a quarter of the
/// peer link's message limit, leaving room for the encoding's overhead).
pub const MAX_APPEND_BYTES: usize = crate::raft::network::PEER_MESSAGE_LIMIT / 4;

/// Entries by index, each with its encoded size.
pub(super) type Entries = BTreeMap<u64, (Entry, usize)>;

/// The log's part held in memory: `pending`, the entries accepted by
/// `append` and not yet durable (always a contiguous suffix of the log,
/// readable at once), and `recent`, the entries the writer made durable
/// last (at most `RECENT_ENTRIES` and `RECENT_BYTES`). Replication reads
/// what was just appended; from `recent` it does not go to the segments, a
/// blocking read that waits for the lock the writer holds during its next
/// fsync. An entry enters `recent` only from `pending`, so a truncation,
/// which drops both at once, never leaves a replaced entry readable.
#[derive(Default)]
pub(super) struct Tail {
    pub(super) pending: Entries,
    recent: Entries,
    recent_bytes: usize,
}

/// The most entries and encoded bytes `Tail::recent` keeps.
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 8 << 20;

impl Tail {
    /// Moves the entry `id` from `pending` to `recent` if `pending` still
    /// holds it (a truncation and a new append may have replaced it).
    pub(super) fn made_durable(&mut self, id: &LogIdC) {
        let btree_map::Entry::Occupied(held) = self.pending.entry(id.index) else {
            return;
        };
        if held.get().0.log_id != *id {
            return;
        }
        let (e, len) = held.remove();
        self.recent_bytes += len;
        if let Some((_, old)) = self.recent.insert(id.index, (e, len)) {
            self.recent_bytes -= old;
        }
        while self.recent.len() > RECENT_ENTRIES || self.recent_bytes > RECENT_BYTES {
            let Some((_, (_, len))) = self.recent.pop_first() else {
                break;
            };
            self.recent_bytes -= len;
        }
    }

    /// Drops every entry from index `from` on, in both parts.
    fn cut_from(&mut self, from: u64) {
        drop(self.pending.split_off(&from));
        for (_, (_, len)) in self.recent.split_off(&from) {
            self.recent_bytes -= len;
        }
    }

    /// Drops every entry up to index `upto`, in both parts.
    fn purge_to(&mut self, upto: u64) {
        self.pending = self.pending.split_off(&(upto + 1));
        let kept = self.recent.split_off(&(upto + 1));
        for (_, (_, len)) in std::mem::replace(&mut self.recent, kept) {
            self.recent_bytes -= len;
        }
    }
}

/// The in-memory tail, shared by the store's clones and the writer thread.
pub(super) type SharedTail = Arc<Mutex<Tail>>;

/// The entries on disk, shared by the writer thread and readers.
pub(super) type SharedWal = Arc<Mutex<Wal>>;

pub(super) fn lock_wal(w: &SharedWal) -> std::sync::MutexGuard<'_, Wal> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// The redb-backed log store; cheap to clone (all clones share one database,
/// one in-memory tail and one writer thread).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    wal: SharedWal,
    tail: SharedTail,
    writer: Arc<Writer>,
    /// Benchmark only: `append` returns after its fsync (the old write path).
    sequential: bool,
    /// This member's id: appends of other leaders' entries may be written
    /// inline (see the module doc). None: never inline.
    own_id: Option<u64>,
    /// When the last `append` began (only the Raft core appends).
    last_append: Option<Instant>,
    stages: Stages,
}

/// The quiet time before an append that may be written inline.
const INLINE_GAP: std::time::Duration = std::time::Duration::from_micros(400);

impl LogStore {
    /// Opens (or creates) `raft-log.redb` and the segments under `dir` and
    /// starts the writer thread.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with(dir, Stages::default())
    }

    /// Benchmark only: make `append` wait for its fsync before returning.
    pub fn sequential(self, on: bool) -> Self {
        LogStore {
            sequential: on,
            ..self
        }
    }

    /// Lets `append` write other leaders' entries itself when the writer is
    /// idle (this member, `id`, is then a follower).
    pub fn inline_follower_appends(self, id: u64) -> Self {
        LogStore {
            own_id: Some(id),
            ..self
        }
    }

    /// Like `open`, counting appends and their fsyncs into `stages`.
    pub fn open_with(dir: &Path, stages: Stages) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft-log.redb")).map_err(io_err)?;
        let mut tx = db.begin_write().map_err(io_err)?;
        tx.set_durability(Durability::Immediate).map_err(io_err)?;
        tx.open_table(LOG).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.commit().map_err(io_err)?; // fsync: tables exist before first use
        let purged: Option<LogIdC> = Self::read_meta(&db, K_PURGED)?;
        let wal = migrate(&db, dir, purged.map(|p| p.index))?;
        let wal = Arc::new(Mutex::new(wal));
        let db = Arc::new(db);
        let tail = SharedTail::default();
        let (tx, rx) = mpsc::channel();
        let (queued, hint) = (Arc::new(AtomicUsize::new(0)), Arc::new(HintSlot::default()));
        let (db2, wal2, tail2, stages2) = (db.clone(), wal.clone(), tail.clone(), stages.clone());
        let (queued2, hint2) = (queued.clone(), hint.clone());
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(&db2, &wal2, &tail2, &stages2, rx, (&queued2, &hint2)))?;
        Ok(LogStore {
            db,
            wal,
            tail,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
                queued,
                hint,
            }),
            sequential: false,
            own_id: None,
            last_append: None,
            stages,
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in a write transaction on the writer thread, after every
    /// write asked for before it; resolves once it has committed.
    async fn write(
        &self,
        f: impl FnOnce(&Database, &SharedWal) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(Job::Other(Box::new(f), tx))?;
        rx.await
            .map_err(|_| io_err("the raft log writer has stopped"))?
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

    /// Whether a committed-index hint waits to be written (for tests).
    pub fn committed_hint_waiting(&self) -> bool {
        self.writer.waiting_hint().is_some()
    }

    /// Size in bytes of the log's files, for status reports.
    pub fn disk_size(dir: &Path) -> u64 {
        let file = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let segments: u64 = std::fs::read_dir(dir.join("wal"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| file(&e.path())).sum())
            .unwrap_or(0);
        file(&dir.join("raft-log.redb")) + segments
    }

    /// Entries `[start, end)` (end `None`: to the last), at most `max_bytes`
    /// of encoded entries (always at least one): the pending suffix and the
    /// recently durable entries straight from memory, the rest from the
    /// segments.
    async fn read_range(
        &self,
        start: u64,
        end: Option<u64>,
        max_bytes: Option<usize>,
    ) -> io::Result<Vec<Entry>> {
        let hi = end.unwrap_or(u64::MAX);
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let mut next = start;
        let over = |out: &Vec<Entry>, bytes: usize, len: usize| {
            max_bytes.is_some_and(|m| !out.is_empty() && bytes + len > m)
        };
        while next < hi {
            // Everything below the pending suffix is already in the
            // segments (or purged); entries only move from `pending` to the
            // segments, and then to `recent`.
            let disk_end = {
                let t = self.tail();
                let p = &t.pending;
                let disk_end = match p.keys().next() {
                    Some(&p0) if p0 <= next => {
                        for (_, (e, len)) in p.range(next..hi) {
                            if over(&out, bytes, *len) {
                                break;
                            }
                            bytes += len;
                            out.push(e.clone());
                        }
                        return Ok(out);
                    }
                    Some(&p0) => p0.min(hi),
                    None => hi,
                };
                // The recently durable entries below `disk_end`, as long as
                // they follow on from `next` without a gap.
                for (&i, (e, len)) in t.recent.range(next..disk_end) {
                    if i != next {
                        break;
                    }
                    if over(&out, bytes, *len) {
                        return Ok(out);
                    }
                    bytes += len;
                    out.push(e.clone());
                    next += 1;
                }
                disk_end
            };
            if next == disk_end {
                if disk_end == hi {
                    break;
                }
                continue;
            }
            let (from, budget) = (next, max_bytes.map(|m| m.saturating_sub(bytes)));
            let first = out.is_empty();
            let wal = self.wal.clone();
            let (mut got, got_bytes, capped) = tokio::task::spawn_blocking(move || {
                let wal = lock_wal(&wal);
                let mut got = Vec::new();
                let mut bytes = 0usize;
                let lo = wal.bounds().map_or(from, |(lo, _)| lo.max(from));
                for index in lo..disk_end {
                    let Some(raw) = wal.read(index)? else { break };
                    if budget.is_some_and(|b| (!first || !got.is_empty()) && bytes + raw.len() > b)
                    {
                        return Ok((got, bytes, true));
                    }
                    bytes += raw.len();
                    got.push(codec::decode::<Entry>(&raw).map_err(io_err)?);
                }
                Ok::<_, io::Error>((got, bytes, false))
            })
            .await
            .map_err(io_err)??;
            out.append(&mut got);
            bytes += got_bytes;
            if capped || disk_end == hi {
                break;
            }
            next = disk_end;
        }
        Ok(out)
    }
}

/// Opens the segments; first moves entries out of redb's `log` table, where
/// versions before the segment files kept them. The segments are rebuilt
/// from the table until the table is emptied, so a crash midway redoes it.
fn migrate(db: &Database, dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
    let old: Vec<(u64, Vec<u8>)> = {
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        t.iter()
            .map_err(io_err)?
            .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(io_err)?
    };
    if old.is_empty() {
        return Wal::open(dir, purged);
    }
    tracing::info!(
        entries = old.len(),
        "moving the raft log from redb to segment files"
    );
    let _ = std::fs::remove_dir_all(dir.join("wal"));
    let mut wal = Wal::open(dir, purged)?;
    wal.append_batch(old.iter().map(|(i, b)| (*i, b.as_slice())))?; // fdatasync
    let mut tx = db.begin_write().map_err(io_err)?;
    tx.set_durability(Durability::Immediate).map_err(io_err)?;
    tx.open_table(LOG)
        .map_err(io_err)?
        .retain(|_, _| false)
        .map_err(io_err)?;
    tx.commit().map_err(io_err)?; // fsync: the table is emptied only now
    Ok(wal)
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
        self.read_range(start, end, None).await
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
        self.read_range(start, Some(end), Some(MAX_APPEND_BYTES))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.blocking(|db| Self::read_meta(db, K_VOTE)).await
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let pending_last = self
            .tail()
            .pending
            .values()
            .next_back()
            .map(|(e, _)| e.log_id);
        let wal = self.wal.clone();
        self.blocking(move |db| {
            let purged: Option<LogIdC> = Self::read_meta(db, K_PURGED)?;
            let on_disk: Option<LogIdC> = {
                let wal = lock_wal(&wal);
                match wal.bounds() {
                    Some((_, last)) => match wal.read(last)? {
                        Some(raw) => Some(codec::decode::<Entry>(&raw).map_err(io_err)?.log_id),
                        None => None,
                    },
                    None => None,
                }
            };
            let last = match (pending_last, on_disk) {
                (Some(p), Some(d)) if d.index > p.index => Some(d),
                (Some(p), _) => Some(p),
                (None, d) => d,
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
        let bytes = codec::encode(vote);
        // fsync: the vote is committed durably before this returns.
        self.write(move |db, _| write_meta(db, K_VOTE, &bytes, Durability::Immediate))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogIdC>) -> Result<(), io::Error> {
        // Not awaited and not fsynced: a recovery hint only.
        self.writer.save_hint(codec::encode(&committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdC>, io::Error> {
        // The newest hint, if it waits to be written; else the last written
        // (the empty write waits for one the writer has taken).
        if let Some(bytes) = self.writer.waiting_hint() {
            return codec::decode(&bytes).map_err(io_err);
        }
        self.write(|_, _| Ok(())).await?;
        self.blocking(|db| Ok(Self::read_meta::<Option<LogIdC>>(db, K_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut batch = Vec::new();
        {
            let mut tail = self.tail();
            for e in entries {
                let bytes = codec::encode(&e);
                tail.pending
                    .insert(e.log_id.index, (e.clone(), bytes.len()));
                batch.push((e.log_id, bytes));
            }
        }
        // A follower's entries with the writer idle: written and fsynced
        // here (`flush_appends`: fdatasync, then the signal). Only the Raft
        // core appends, one call at a time, so nothing is queued behind the
        // idle check; a job sent meanwhile would wait for the WAL's lock.
        let foreign = |own: u64| batch.iter().all(|(id, _)| id.leader_id.node_id != own);
        let quiet = self
            .last_append
            .replace(started)
            .is_none_or(|t| started.duration_since(t) >= INLINE_GAP);
        if !self.sequential
            && batch.len() == 1
            && quiet
            && self.own_id.is_some_and(foreign)
            && self.writer.idle()
        {
            let mut one = vec![(batch, callback, started, None)];
            flush_appends(&self.wal, &self.tail, &self.stages, &mut one);
            return Ok(());
        }
        // Readable now (in `pending`); durable when the writer's fsync
        // returns, and only then does `callback` report it.
        let (done, durable) = match self.sequential {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        self.writer.send(Job::Append {
            batch,
            callback,
            started,
            done,
        })?;
        if let Some(rx) = durable {
            let _ = rx.await;
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdC>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.tail().cut_from(from);
        // fsync: `truncate_from` makes the cut durable before it returns.
        self.write(move |_, wal| lock_wal(wal).truncate_from(from))
            .await
    }

    async fn purge(&mut self, log_id: LogIdC) -> Result<(), io::Error> {
        let bytes = codec::encode(&log_id);
        self.write(move |db, wal| {
            // fsync: the purge point is durable before any segment goes, so
            // a crash in between leaves entries `open` skips, never a hole.
            write_meta(db, K_PURGED, &bytes, Durability::Immediate)?;
            lock_wal(wal).purge_to(log_id.index)
        })
        .await?;
        self.tail().purge_to(log_id.index);
        Ok(())
    }
}
