//! Disaster recovery after quorum loss: inspect survivors' data dirs to find
//! the most recent state, and turn one survivor into a single-member cluster
//! (`--force-new-cluster`) without losing what its log holds.

use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, RaftTypeConfig};

use crate::error::StoreError;
use crate::mvcc::KvStore;
use crate::mvcc::apply::BatchMeta;
use crate::raft::log_store::LogStore;
use crate::raft::types::TypeConfig;

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

/// Turns `dir` into the data of a new single-member cluster: every entry in
/// its Raft log is applied to its key space (so nothing the member holds is
/// lost), the old dir is kept beside it as `<dir>.pre-force-<unix time>`,
/// and a fresh dir with that key space (new cluster id) replaces it. Refuses
/// a dir that was already forced.
pub async fn force_new_cluster(dir: &Path) -> Result<PathBuf, StoreError> {
    if dir.join(FORCED_MARKER).exists() {
        return Err(StoreError::Config(format!(
            "{} was already forced into a new cluster ({}); start it without --force-new-cluster",
            dir.display(),
            std::fs::read_to_string(dir.join(FORCED_MARKER))
                .unwrap_or_default()
                .trim()
        )));
    }
    let records = {
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
            let cmds: Vec<Option<&keel_proto::keelraft::Command>> = entries
                .iter()
                .map(|e| match &e.payload {
                    EntryPayload::Normal(c) => Some(&c.0),
                    _ => None,
                })
                .collect();
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
        kv.flush().await?;
        let (dump, _, _) = kv.dump();
        crate::mvcc::snapshot::parse(&dump)?
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("data");
    let kept = dir.with_file_name(format!("{name}.pre-force-{stamp}"));
    std::fs::rename(dir, &kept)?;
    std::fs::create_dir_all(dir)?;
    let kv = KvStore::open(dir)?;
    kv.restore(records, 0).await?;
    drop(kv);
    std::fs::write(
        dir.join(FORCED_MARKER),
        format!(
            "forced at unix time {stamp}; old data in {}\n",
            kept.display()
        ),
    )?;
    Ok(kept)
}
