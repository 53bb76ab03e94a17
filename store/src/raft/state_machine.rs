//! The openraft state machine: applies committed entries to the sled key
//! space, builds and installs snapshots.
//!
//! Durability: applied data and the applied log id go to sled in one atomic
//! batch per `apply` call (no fsync; the log replays what sled lost). The
//! snapshot builder flushes sled (fsync) before it reports a snapshot, and
//! openraft purges the log only up to a reported snapshot, so sled is always
//! durable past the purge point. Snapshots are also kept in `snapshot.bin`,
//! written to a temp file, fsynced and renamed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use crate::mvcc::KvStore;
use crate::mvcc::apply::BatchMeta;
use crate::raft::types::{CmdResult, TypeConfig};
use crate::stages::{Stage, Stages};

type C = TypeConfig;
type LogIdC = openraft::alias::LogIdOf<C>;
type StoredMembershipC = openraft::alias::StoredMembershipOf<C>;
type SnapshotMetaC = openraft::alias::SnapshotMetaOf<C>;
/// A snapshot's data: the key-space dump (see `mvcc::snapshot`).
pub type SnapshotData = Vec<u8>;
type SnapshotC = openraft::alias::SnapshotOf<C, SnapshotData>;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The state machine handed to openraft; shares the key space with readers.
pub struct StateMachine {
    kv: Arc<KvStore>,
    dir: PathBuf,
    stages: Stages,
}

impl StateMachine {
    pub fn new(kv: Arc<KvStore>, dir: &Path) -> Self {
        StateMachine {
            kv,
            dir: dir.to_path_buf(),
            stages: Stages::default(),
        }
    }

    /// Before openraft starts: when the key space has applied past the end
    /// of the log (it installed a snapshot, or was forced) and the newest
    /// snapshot file is older than that, writes a snapshot of the key space
    /// now. openraft purges such a log hole up to the applied index at start
    /// and then requires a snapshot at least that far (purged <= snapshot);
    /// without this a member killed between installing a snapshot's key
    /// space and writing its file could never start again.
    pub async fn repair_snapshot(&self, last_log_index: Option<u64>) -> io::Result<()> {
        let Some(applied) = self.applied() else {
            return Ok(());
        };
        if last_log_index.is_some_and(|l| l >= applied.index) {
            return Ok(()); // no hole: openraft purges nothing at start
        }
        let path = self.snapshot_path();
        let current = tokio::task::spawn_blocking(move || Self::load_snapshot(&path))
            .await
            .map_err(io_err)??;
        let covered = current
            .and_then(|s| s.meta.last_log_id)
            .is_some_and(|l| l.index >= applied.index);
        if covered {
            return Ok(());
        }
        tracing::warn!(
            applied = applied.index,
            "the key space is ahead of the log and of the newest snapshot (an interrupted snapshot install): writing a snapshot of it"
        );
        let mut builder = SnapshotBuilder {
            kv: self.kv.clone(),
            dir: self.dir.clone(),
        };
        builder.build_snapshot().await.map(|_| ())
    }

    /// The last log id the key space applied.
    fn applied(&self) -> Option<LogIdC> {
        self.kv
            .meta_json::<Option<LogIdC>>(crate::mvcc::keys::META_APPLIED)
            .flatten()
    }

    /// Counts apply batches into `stages` (the member's write-path counters).
    pub fn with_stages(mut self, stages: Stages) -> Self {
        self.stages = stages;
        self
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.bin")
    }

    /// Writes a snapshot file atomically: temp file, fsync, rename, fsync dir.
    fn persist_snapshot(dir: &Path, meta: &SnapshotMetaC, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let meta_json = serde_json::to_vec(meta).map_err(io_err)?;
        let tmp = dir.join("snapshot.bin.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&(meta_json.len() as u32).to_be_bytes())?;
        f.write_all(&meta_json)?;
        f.write_all(data)?;
        f.sync_all()?; // fsync: snapshot contents
        std::fs::rename(&tmp, dir.join("snapshot.bin"))?;
        std::fs::File::open(dir)?.sync_all()?; // fsync: the rename
        Ok(())
    }

    fn load_snapshot(path: &Path) -> io::Result<Option<SnapshotC>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if bytes.len() < 4 {
            return Err(io_err("snapshot.bin is truncated"));
        }
        let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if bytes.len() < 4 + n {
            return Err(io_err("snapshot.bin is truncated"));
        }
        let meta: SnapshotMetaC = serde_json::from_slice(&bytes[4..4 + n]).map_err(io_err)?;
        Ok(Some(SnapshotC {
            meta,
            snapshot: bytes[4 + n..].to_vec(),
        }))
    }
}

/// Builds snapshots from a consistent dump of the key space.
pub struct SnapshotBuilder {
    kv: Arc<KvStore>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<C> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotC, io::Error> {
        let (data, applied, membership) = self.kv.dump();
        let last_log_id: Option<LogIdC> = match applied {
            Some(a) => serde_json::from_slice(&a).map_err(io_err)?,
            None => None,
        };
        let last_membership: StoredMembershipC = match membership {
            Some(m) => serde_json::from_slice(&m).map_err(io_err)?,
            None => StoredMembershipC::default(),
        };
        // fsync: everything up to the snapshot's index is durable in sled
        // before openraft may purge the log up to it.
        self.kv.flush().await.map_err(io_err)?;
        let meta = SnapshotMetaC {
            last_log_id,
            last_membership,
        };
        let dir = self.dir.clone();
        let m2 = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            StateMachine::persist_snapshot(&dir, &m2, &data).map(|()| data)
        })
        .await
        .map_err(io_err)??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(SnapshotC {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogIdC>, StoredMembershipC), io::Error> {
        let applied = self.applied();
        let membership = self
            .kv
            .meta_json(crate::mvcc::keys::META_MEMBERSHIP)
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let items: Vec<EntryResponder<C>> = entries.try_collect().await?;
        let started = std::time::Instant::now();
        let Some((last, _)) = items.last() else {
            return Ok(());
        };
        let applied = serde_json::to_vec(&Some(last.log_id)).map_err(io_err)?;
        let mut membership = None;
        let mut cluster_id = None;
        for (e, _) in &items {
            if let EntryPayload::Membership(m) = &e.payload {
                let stored = StoredMembershipC::new(Some(e.log_id), m.clone());
                membership = Some(serde_json::to_vec(&stored).map_err(io_err)?);
                if cluster_id.is_none() {
                    // The cluster id is fixed by the first membership ever
                    // applied (only recorded when none is recorded yet),
                    // salted for a cluster restored from a backup.
                    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                    let salt = self.kv.cluster_salt();
                    for id in m.voter_ids().chain((salt != 0).then_some(salt)) {
                        for b in id.to_be_bytes() {
                            h ^= u64::from(b);
                            h = h.wrapping_mul(0x0100_0000_01b3);
                        }
                    }
                    cluster_id = Some(h.max(1));
                }
            }
        }
        let cmds: Vec<Option<&keel_proto::keelraft::Command>> = items
            .iter()
            .map(|(e, _)| match &e.payload {
                EntryPayload::Normal(c) => Some(&c.0),
                _ => None,
            })
            .collect();
        let results = self
            .kv
            .apply_batch(
                &cmds,
                BatchMeta {
                    applied,
                    membership,
                    cluster_id,
                },
            )
            .map_err(io_err)?;
        self.stages
            .record(Stage::Apply, started, items.len() as u64);
        for ((_, responder), res) in items.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(CmdResult(res.unwrap_or_default()));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            kv: self.kv.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaC,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        // Crash-safe at every step (cli/tests/crash_steps.rs): the key space
        // is replaced in one sled batch and fsynced; a crash before the
        // snapshot file is written leaves a key space that says it applied
        // up to the snapshot, ahead of the log and of the newest snapshot
        // file: `repair_snapshot` writes a snapshot of it at start, before
        // openraft purges the log hole below it.
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(io_err)?;
        let membership = serde_json::to_vec(&meta.last_membership).map_err(io_err)?;
        crate::failpoint::crash_point("install-before-kv");
        self.kv
            .install(&snapshot, applied, membership)
            .await
            .map_err(io_err)?;
        crate::failpoint::crash_point("install-after-kv");
        let dir = self.dir.clone();
        let m2 = meta.clone();
        tokio::task::spawn_blocking(move || StateMachine::persist_snapshot(&dir, &m2, &snapshot))
            .await
            .map_err(io_err)??;
        crate::failpoint::crash_point("install-after-file");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotC>, io::Error> {
        let path = self.snapshot_path();
        tokio::task::spawn_blocking(move || Self::load_snapshot(&path))
            .await
            .map_err(io_err)?
    }
}
