//! The Raft log's writer thread (`log_store` hands it every write): it
//! serves queued writes in order, folding consecutive appends into one
//! segment write and fdatasync (group commit) before it signals them, and
//! writes the committed-index hint at most every `HINT_EVERY`.
//!
//! The hint does not travel through the queue: `Writer::save_hint` leaves
//! the newest one in a slot and wakes the writer only when no hint is
//! waiting there already, so a commit costs no thread wake-up (it cost one
//! per commit on every member, on the leader on the way to the answer).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use openraft::storage::IOFlushed;
use redb::{Database, Durability};
use tokio::sync::oneshot;

use super::io_err;
use super::log_store::{C, K_COMMITTED, LogIdC, META, SharedTail, SharedWal, lock_wal};
use crate::stages::{Stage, Stages};

/// How often at most the committed-index hint is written.
const HINT_EVERY: Duration = Duration::from_millis(50);

/// The most appends the writer folds into one transaction (one fsync).
const MAX_GROUP: usize = 256;

/// A write to run on the writer thread.
pub(super) type WriteFn = Box<dyn FnOnce(&Database, &SharedWal) -> io::Result<()> + Send>;

/// A write for the writer thread.
pub(super) enum Job {
    /// Encoded entries of one `append`, its callback and when it began.
    Append {
        batch: Vec<(LogIdC, Vec<u8>)>,
        callback: IOFlushed<C>,
        started: Instant,
        /// Told when the append is durable (sequential mode only).
        done: Option<oneshot::Sender<()>>,
    },
    /// A committed-index hint is waiting in the slot (no fsync, no answer).
    Committed,
    /// Any other write transaction, answered when it has committed.
    Other(WriteFn, oneshot::Sender<io::Result<()>>),
}

/// The writer thread's queue; the last clone of the store to go closes the
/// queue and waits for the thread, so the database is closed (and can be
/// opened again) once the store is dropped.
pub(super) struct Writer {
    pub(super) tx: Option<mpsc::Sender<Job>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    /// Jobs sent and not yet finished (written, fsynced where they fsync,
    /// signalled): zero means the writer is idle with nothing queued.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) hint: Arc<HintSlot>,
}

/// The newest committed-index hint not yet written. A filled slot needs no
/// further wake-up: the save that filled it while empty sent a
/// `Job::Committed`, and only the writer empties it.
#[derive(Default)]
pub(super) struct HintSlot(Mutex<Option<Vec<u8>>>);

impl HintSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Writer {
    pub(super) fn send(&self, job: Job) -> io::Result<()> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.tx.as_ref().and_then(|tx| tx.send(job).ok());
        if sent.is_none() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        sent.ok_or_else(|| io_err("the raft log writer has stopped"))
    }

    /// Leaves `bytes` as the hint to write next; wakes the writer only if
    /// the slot was empty (no hint waiting that it was told of).
    pub(super) fn save_hint(&self, bytes: Vec<u8>) -> io::Result<()> {
        let was_empty = self.hint.lock().replace(bytes).is_none();
        if was_empty {
            // A writer that has stopped gets no hint: the slot is emptied
            // again, so every later save fails as this one does.
            self.send(Job::Committed).inspect_err(|_| {
                self.hint.lock().take();
            })
        } else {
            Ok(())
        }
    }

    /// The hint waiting to be written, if any.
    pub(super) fn waiting_hint(&self) -> Option<Vec<u8>> {
        self.hint.lock().clone()
    }

    /// Whether every job sent so far has finished.
    pub(super) fn idle(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: serves queued writes in order, folding consecutive
/// appends into one segment write and fdatasync.
pub(super) fn writer(
    db: &Database,
    wal: &SharedWal,
    tail: &SharedTail,
    stages: &Stages,
    rx: mpsc::Receiver<Job>,
    shared: (&AtomicUsize, &HintSlot),
) {
    let (queued, hint) = shared;
    let serve = |jobs: Vec<Job>, hint_due: &mut bool| {
        let mut appends = Vec::new();
        for job in jobs {
            match job {
                Job::Append {
                    batch,
                    callback,
                    started,
                    done,
                } => appends.push((batch, callback, started, done)),
                Job::Committed => *hint_due = true,
                Job::Other(f, reply) => {
                    // Appends queued before this write commit first.
                    flush_appends(wal, tail, stages, &mut appends);
                    let _ = reply.send(f(db, wal));
                }
            }
        }
        flush_appends(wal, tail, stages, &mut appends);
    };
    let mut hint_due = false;
    let mut hint_written = Instant::now();
    loop {
        // A waiting hint is written at most every HINT_EVERY (a redb
        // transaction per commit was a few % of a member's CPU), and when
        // the queue has been idle that long, so the last one is not lost.
        let first = if hint_due {
            match rx.recv_timeout(HINT_EVERY.saturating_sub(hint_written.elapsed())) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            }
        };
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut taken = jobs.len();
        serve(jobs, &mut hint_due);
        if hint_due && hint_written.elapsed() >= HINT_EVERY {
            hint_due = false;
            hint_written = Instant::now();
            let bytes = hint.lock().take();
            // The hint must not name an entry this log does not hold yet
            // (a restart re-applies up to it from this log): every append
            // of an entry it names was queued before the hint was saved,
            // so the queue is served to the end before the hint is written.
            let rest: Vec<Job> = rx.try_iter().collect();
            taken += rest.len();
            serve(rest, &mut hint_due);
            if let Some(bytes) = bytes {
                write_hint(db, &bytes);
            }
        }
        queued.fetch_sub(taken, Ordering::AcqRel);
    }
    // The store is closing (every job served): the last hint is written,
    // not dropped.
    if let Some(bytes) = hint.lock().take() {
        write_hint(db, &bytes);
    }
}

/// Writes one meta value in a transaction of its own; with
/// `Durability::Immediate` the commit fsyncs before it returns.
pub(super) fn write_meta(
    db: &Database,
    key: &str,
    bytes: &[u8],
    durability: Durability,
) -> io::Result<()> {
    let mut tx = db.begin_write().map_err(io_err)?;
    tx.set_durability(durability).map_err(io_err)?;
    tx.open_table(META)
        .map_err(io_err)?
        .insert(key, bytes)
        .map_err(io_err)?;
    tx.commit().map_err(io_err)
}

/// Records the committed-index hint. No fsync: a hint that the next
/// durable commit (a vote or purge) persists.
fn write_hint(db: &Database, bytes: &[u8]) {
    if let Err(e) = write_meta(db, K_COMMITTED, bytes, Durability::None) {
        tracing::warn!(error = %e, "cannot record the committed index hint");
    }
}

/// One append waiting for the writer: entries, callback, start, done signal.
pub(super) type Appended = (
    Vec<(LogIdC, Vec<u8>)>,
    IOFlushed<C>,
    Instant,
    Option<oneshot::Sender<()>>,
);

/// Writes `appends` to the segments with one fdatasync, moves them from
/// `pending` to `recent` (`Tail::made_durable`), then signals each append's
/// callback.
pub(super) fn flush_appends(
    wal: &SharedWal,
    tail: &SharedTail,
    stages: &Stages,
    appends: &mut Vec<Appended>,
) {
    if appends.is_empty() {
        return;
    }
    let r = {
        let mut wal = lock_wal(wal);
        let entries = appends
            .iter()
            .flat_map(|(batch, ..)| batch.iter().map(|(id, b)| (id.index, b.as_slice())));
        // fdatasync: every append of the group is on disk when this returns.
        let t = Instant::now();
        let r = wal.append_batch(entries);
        stages.record(Stage::LogFsync, t, appends.len() as u64);
        r
    };
    let done = std::mem::take(appends);
    if r.is_ok() {
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        for (batch, ..) in &done {
            for (id, _) in batch {
                // Only the entry this append wrote: a truncation and a new
                // append at the same index may have replaced it meanwhile.
                tail.made_durable(id);
            }
        }
    }
    for (batch, callback, started, signal) in done {
        match &r {
            Ok(()) => {
                stages.record(Stage::LogAppend, started, batch.len() as u64);
                callback.io_completed(Ok(()));
                if let Some(s) = signal {
                    let _ = s.send(());
                }
            }
            Err(e) => callback.io_completed(Err(io::Error::new(e.kind(), e.to_string()))),
        }
    }
}
