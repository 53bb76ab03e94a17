//! Disaster recovery after quorum loss: inspect survivors' data dirs to find
//! the most recent state, and turn one survivor into a single-member cluster
//! (`--force-new-cluster`) without losing what its log holds.

use std::path::{Path, PathBuf};

use openraft::RaftTypeConfig;
use openraft::storage::{RaftLogReader, RaftLogStorage};

use crate::error::StoreError;
use crate::mvcc::KvStore;
use crate::mvcc::apply::BatchMeta;
use crate::raft::log_store::LogStore;
use crate::raft::types::{Cmd, TypeConfig};

type LogIdC = openraft::alias::LogIdOf<TypeConfig>;
type Entry = <TypeConfig as RaftTypeConfig>::Entry;

/// Marker left in a data dir that was forced into a new cluster.
pub const FORCED_MARKER: &str = "FORCED_NEW_CLUSTER";

/// What a (stopped) member's data dir holds.
#[derive(Debug, Clone)]
pub struct DirState {
    pub dir: PathBuf,
    /// The last entry of the Raft log: (term, index).
    pub last_log: Option<(u64, u64)>,
    /// The last entry the key space applied: (term, index).
    pub applied: Option<(u64, u64)>,
    pub revision: i64,
}

fn term_index(l: &LogIdC) -> (u64, u64) {
    (l.leader_id.term, l.index)
}

/// Reads a stopped member's data dir without changing it.
pub async fn inspect(dir: &Path) -> Result<DirState, StoreError> {
    if !dir.join("raft-log.redb").exists() {
        return Err(StoreError::Config(format!(
            "{} holds no Keel member (no raft-log.redb)",
            dir.display()
        )));
    }
    let mut log = LogStore::open(dir)?;
    let state = log.get_log_state().await?;
    let kv = KvStore::open(dir)?;
    let applied: Option<LogIdC> = kv
        .meta_json::<Option<LogIdC>>(crate::mvcc::keys::META_APPLIED)
        .flatten();
    Ok(DirState {
        dir: dir.to_path_buf(),
        last_log: state.last_log_id.as_ref().map(term_index),
        applied: applied.as_ref().map(term_index),
        revision: kv.revision(),
    })
}

/// The survivor to recover from: the longest log by (term, index), which by
/// Raft's election rule holds every committed entry any survivor holds.
pub fn best(states: &[DirState]) -> Option<&DirState> {
    states.iter().max_by_key(|s| s.last_log)
}

/// Where a forced dir is built before it replaces the old one.
pub fn forcing_dir(dir: &Path) -> PathBuf {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("data");
    dir.with_file_name(format!("{name}.forcing"))
}

/// Refuses to start on `dir` while an interrupted `--force-new-cluster`
/// is unfinished (its new dir is built but not yet in place): starting
/// would make an empty member where the recovered data belongs.
pub fn check_not_interrupted(dir: &Path) -> Result<(), StoreError> {
    let forcing = forcing_dir(dir);
    if forcing.join(FORCED_MARKER).exists() && !dir.exists() {
        return Err(StoreError::Config(format!(
            "an interrupted --force-new-cluster left its new data in {}; run with --force-new-cluster again to finish it",
            forcing.display()
        )));
    }
    Ok(())
}

/// Turns `dir` into the data of a new single-member cluster: every entry in
/// its Raft log is applied to its key space (so nothing the member holds is
/// lost), the old dir is kept beside it as `<dir>.pre-force-<unix time>`,
/// and a fresh dir with that key space (new cluster id) replaces it. Refuses
/// a dir that was already forced.
///
/// Crash-safe at every step (cli/tests/crash_steps.rs): replaying the log
/// into the old key space changes nothing a rerun depends on; the new dir is
/// built and fsynced complete (marker included) at `<dir>.forcing` before
/// the old dir is moved aside, and a rerun after a crash between the two
/// renames only finishes the second.
pub async fn force_new_cluster(dir: &Path) -> Result<PathBuf, StoreError> {
    let forcing = forcing_dir(dir);
    if !dir.exists() && forcing.join(FORCED_MARKER).exists() {
        // A crash after the old dir was moved aside: finish the move.
        std::fs::rename(&forcing, dir)?;
        sync_parent(dir)?;
        let marker = std::fs::read_to_string(dir.join(FORCED_MARKER)).unwrap_or_default();
        tracing::warn!(dir = %dir.display(), "finished an interrupted --force-new-cluster");
        let kept = marker
            .split("old data in ")
            .nth(1)
            .map(|s| PathBuf::from(s.trim()))
            .unwrap_or_default();
        return Ok(kept);
    }
    if dir.join(FORCED_MARKER).exists() {
        return Err(StoreError::Config(format!(
            "{} was already forced into a new cluster ({}); start it without --force-new-cluster",
            dir.display(),
            std::fs::read_to_string(dir.join(FORCED_MARKER))
                .unwrap_or_default()
                .trim()
        )));
    }
    if !dir.join("raft-log.redb").exists() {
        return Err(StoreError::Config(format!(
            "{} holds no Keel member (no raft-log.redb): nothing to force",
            dir.display()
        )));
    }
    let dump = {
        let mut log = LogStore::open(dir)?;
        let kv = KvStore::open(dir)?;
        let applied: Option<LogIdC> = kv
            .meta_json::<Option<LogIdC>>(crate::mvcc::keys::META_APPLIED)
            .flatten();
        let from = applied.map(|l| l.index + 1).unwrap_or(0);
        let entries: Vec<Entry> = log.try_get_log_entries(from..).await?;
        tracing::warn!(
            dir = %dir.display(), replayed = entries.len(),
            "forcing a new cluster: applying every entry in the log"
        );
        if let Some(last) = entries.last() {
            let cmds: Vec<_> = entries.iter().map(|e| Cmd::of(&e.payload)).collect();
            let applied = serde_json::to_vec(&Some(last.log_id)).map_err(std::io::Error::other)?;
            kv.apply_batch(
                &cmds,
                BatchMeta {
                    applied,
                    membership: None,
                    cluster_id: None,
                },
            )?;
        }
        kv.flush().await?; // fsync: the replayed key space is on disk
        kv.dump().0
    };
    let records = crate::mvcc::snapshot::parse(&dump)?;
    crate::failpoint::crash_point("force-after-replay");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("data");
    let kept = dir.with_file_name(format!("{name}.pre-force-{stamp}"));
    // Build the new dir whole beside the old one (a leftover of an earlier
    // interrupted try is rebuilt from scratch).
    if forcing.exists() {
        std::fs::remove_dir_all(&forcing)?;
    }
    std::fs::create_dir_all(&forcing)?;
    {
        let kv = KvStore::open(&forcing)?;
        kv.restore(&records, 0).await?; // fsyncs the new key space
    }
    let marker = forcing.join(FORCED_MARKER);
    std::fs::write(
        &marker,
        format!(
            "forced at unix time {stamp}; old data in {}\n",
            kept.display()
        ),
    )?;
    std::fs::File::open(&marker)?.sync_all()?; // fsync: the marker
    sync_parent(&marker)?;
    crate::failpoint::crash_point("force-after-build");
    std::fs::rename(dir, &kept)?;
    sync_parent(dir)?; // fsync: the move aside
    crate::failpoint::crash_point("force-after-move-old");
    std::fs::rename(&forcing, dir)?;
    sync_parent(dir)?; // fsync: the new dir in place
    Ok(kept)
}

/// fsyncs the directory holding `path`, so a rename or a new file in it
/// survives a crash.
fn sync_parent(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
