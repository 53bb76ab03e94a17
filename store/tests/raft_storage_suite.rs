//! openraft's own storage test suite run against Keel's Raft storage: the
//! log store (segment files and redb) and the sled-backed state machine.

use keel_store::mvcc::KvStore;
use keel_store::raft::log_store::LogStore;
use keel_store::raft::state_machine::StateMachine;
use keel_store::raft::types::TypeConfig;
use openraft::alias::{EntryOf, LeaderIdOf, LogIdOf, OneshotOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::async_runtime::oneshot::Oneshot;
use openraft::vote::RaftLeaderIdExt;
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

type C = TypeConfig;

/// Builds a fresh log store and state machine in a temp dir (kept alive by
/// the returned guard) for every suite case: in one shared directory, as a
/// Keel master lays them out, or in separate ones.
struct Builder {
    shared_dir: bool,
    /// Build the log as a follower member does (`inline_follower_appends`
    /// with an id no suite entry carries), so quiet single-entry appends
    /// are written inline rather than by the writer thread.
    inline: bool,
}

fn io_to_storage(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(io_to_storage)?;
        let (log_dir, sm_dir) = if self.shared_dir {
            (dir.path().to_path_buf(), dir.path().to_path_buf())
        } else {
            (dir.path().join("log"), dir.path().join("sm"))
        };
        let mut log = LogStore::open(&log_dir).map_err(io_to_storage)?;
        if self.inline {
            log = log.inline_follower_appends(u64::MAX);
        }
        std::fs::create_dir_all(&sm_dir).map_err(io_to_storage)?;
        let kv = KvStore::open(&sm_dir)
            .map_err(|e| io_to_storage(std::io::Error::other(e.to_string())))?;
        let sm = StateMachine::new(kv, &sm_dir);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder {
        shared_dir: false,
        inline: false,
    })
    .await
    .expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_follower_inline_appends() {
    Suite::test_all(Builder {
        shared_dir: false,
        inline: true,
    })
    .await
    .expect("openraft storage suite (inline follower appends)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_shared_dir() {
    Suite::test_all(Builder {
        shared_dir: true,
        inline: false,
    })
    .await
    .expect("openraft storage suite (shared dir)");
}

fn log_id(term: u64, index: u64) -> LogIdOf<C> {
    LogIdOf::<C>::new(LeaderIdOf::<C>::new_committed(term, 1), index)
}

/// Blank entries of `term` at `indexes`.
fn blanks(term: u64, indexes: impl Iterator<Item = u64>) -> Vec<EntryOf<C>> {
    indexes
        .map(|i| EntryOf::<C>::new_blank(log_id(term, i)))
        .collect()
}

/// The ids of every entry the log holds below index 100.
async fn log_ids(log: &mut LogStore) -> Vec<LogIdOf<C>> {
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    entries.iter().map(|e| e.log_id).collect()
}

async fn append(log: &mut LogStore, entries: Vec<EntryOf<C>>) {
    let (tx, rx) = OneshotOf::<C>::channel();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().expect("append flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_state_vote_and_committed_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let vote = VoteOf::<C>::new_committed(3, 1);
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&mut log, blanks(1, 1..=5)).await;
        append(&mut log, blanks(2, 6..=10)).await;
        log.save_vote(&vote).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        log.truncate_after(Some(log_id(2, 8))).await.unwrap();
        log.save_committed(Some(log_id(2, 7))).await.unwrap();
    }

    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 7)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
    let want: Vec<_> = (4..=5)
        .map(|i| log_id(1, i))
        .chain((6..=8).map(|i| log_id(2, i)))
        .collect();
    assert_eq!(ids, want);

    // Purging everything leaves the purged id as the last log id.
    log.purge(log_id(2, 8)).await.unwrap();
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 8)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    assert!(log.try_get_log_entries(0..100).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_kept_in_redb_by_an_older_version_move_to_the_segments() {
    // A data dir of a version that kept entries in redb's `log` table.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("raft-log.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
            let mut t = tx.open_table(table).unwrap();
            for i in 1..=4 {
                let bytes = keel_store::raft::codec::encode(&EntryOf::<C>::new_blank(log_id(1, i)));
                t.insert(i, bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    for _ in 0..2 {
        // Twice: the second open finds them in the segments only.
        let mut log = LogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 4)));
        let ids = log_ids(&mut log).await;
        assert_eq!(ids, (1..=4).map(|i| log_id(1, i)).collect::<Vec<_>>());
    }
    assert!(dir.path().join("wal").exists());
}

/// Reads of entries just made durable come from memory (`Tail::recent`);
/// whatever part of a range is served from memory and whatever from the
/// segments, a read returns every entry once, in order, and never one a
/// truncation replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_across_memory_and_segments_are_complete_and_never_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    let ids = |entries: Vec<EntryOf<C>>| entries.iter().map(|e| e.log_id).collect::<Vec<_>>();
    // More entries than memory keeps, in appends of 100.
    for start in (1..=5000u64).step_by(100) {
        append(&mut log, blanks(1, start..start + 100)).await;
    }
    let all = ids(log.try_get_log_entries(1..5101).await.unwrap());
    assert_eq!(all, (1..=5000).map(|i| log_id(1, i)).collect::<Vec<_>>());
    let tail = ids(log.try_get_log_entries(4990..5001).await.unwrap());
    assert_eq!(
        tail,
        (4990..=5000).map(|i| log_id(1, i)).collect::<Vec<_>>()
    );

    // Replace the last ten with entries of term 2: reads see only those.
    log.truncate_after(Some(log_id(1, 4990))).await.unwrap();
    append(&mut log, blanks(2, 4991..=4995)).await;
    let want: Vec<_> = (4985..=4990)
        .map(|i| log_id(1, i))
        .chain((4991..=4995).map(|i| log_id(2, i)))
        .collect();
    assert_eq!(
        ids(log.try_get_log_entries(4985..5001).await.unwrap()),
        want
    );

    // A purge drops what it covers from memory too.
    log.purge(log_id(1, 4988)).await.unwrap();
    let after: Vec<_> = ids(log.try_get_log_entries(0..5001).await.unwrap());
    assert_eq!(after, want[4..].to_vec());
}

/// A follower's quiet single-entry append of another leader's entry is made
/// durable by `append` itself (its flush is signalled before `append`
/// returns); the member's own entries, and an entry that follows another
/// within the quiet gap, go to the writer thread. Whichever path wrote
/// them, entries read back in order, survive reopening, and a truncation
/// and a purge between them keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_appends_written_inline_are_durable_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let own = 7;
    let other = log_id;
    let mine =
        |term: u64, index: u64| LogIdOf::<C>::new(LeaderIdOf::<C>::new_committed(term, own), index);
    // The gap after which an append counts as quiet (400 µs in the store),
    // waited for on purpose: it is the condition under test.
    let quiet = || tokio::time::sleep(std::time::Duration::from_millis(2));
    {
        let mut log = LogStore::open(dir.path())
            .unwrap()
            .inline_follower_appends(own);
        for i in 1..=5 {
            quiet().await;
            let (tx, mut rx) = OneshotOf::<C>::channel();
            let e = EntryOf::<C>::new_blank(other(1, i));
            log.append(vec![e], IOFlushed::signal(tx)).await.unwrap();
            let flushed = rx.try_recv();
            assert!(
                matches!(flushed, Ok(Ok(_))),
                "entry {i} was not durable when append returned: {flushed:?}"
            );
        }
        // Back to back: the writer takes them (and signals them later).
        for i in 6..=8 {
            append(&mut log, vec![EntryOf::<C>::new_blank(other(1, i))]).await;
        }
        log.truncate_after(Some(other(1, 7))).await.unwrap();
        quiet().await;
        append(&mut log, vec![EntryOf::<C>::new_blank(other(2, 8))]).await;
        // This member's own entries always go to the writer.
        append(&mut log, vec![EntryOf::<C>::new_blank(mine(3, 9))]).await;
        quiet().await;
        append(&mut log, vec![EntryOf::<C>::new_blank(other(4, 10))]).await;
        log.purge(other(1, 2)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    let got = log_ids(&mut log).await;
    let want: Vec<_> = (3..=7)
        .map(|i| other(1, i))
        .chain([other(2, 8), mine(3, 9), other(4, 10)])
        .collect();
    assert_eq!(got, want);
}

/// The committed-index hint no longer goes through the writer's queue: the
/// newest one waits in a slot. It reads back at once, the newest of many
/// wins, and it is on disk after the writer's own cycle (no other write
/// asked for) as well as after a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_committed_hint_reads_back_at_once_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&mut log, blanks(1, 1..=40)).await;
        for i in 1..=40 {
            log.save_committed(Some(log_id(1, i))).await.unwrap();
        }
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 40)));
        // Left alone, the writer writes the waiting hint within its cycle
        // (50 ms): poll until the slot is empty, so the read comes from redb.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if !log.committed_hint_waiting() {
                assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 40)));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the hint was never written"
            );
        }
        log.save_committed(Some(log_id(1, 39))).await.unwrap();
        log.save_committed(Some(log_id(1, 40))).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 40)));
}
