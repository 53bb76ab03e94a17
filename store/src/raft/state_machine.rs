//! The openraft state machine: applies committed entries to the sled key
//! space, takes and installs snapshots.
//!
//! Durability: applied data and the applied log id go to sled in one atomic
//! batch per `apply` call (`mvcc::journal`) (no fsync; the log replays what sled lost).
//!
//! Snapshots, as etcd's v3 store does them: the key space *is* the snapshot.
//! Building one (every `--snapshot-every` entries) only flushes sled (fsync)
//! and reports the applied log id; openraft purges the log only up to a
//! reported snapshot, so sled is always durable past the purge point. The
//! bytes of a snapshot are produced only when a follower needs them: a dump
//! of the key space as it is then, with the log id it has applied. (Until
//! 2026-12-03 every build dumped the whole key space under the apply lock
//! and wrote it to an fsynced file, stalling every write for the dump; see
//! BENCHMARKS.md.)

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use crate::mvcc::KvStore;
use crate::mvcc::apply::BatchMeta;
use crate::raft::io_err;
use crate::raft::types::{Cmd, CmdResult, TypeConfig};
use crate::stages::{Stage, Stages};

type C = TypeConfig;
type LogIdC = openraft::alias::LogIdOf<C>;
type StoredMembershipC = openraft::alias::StoredMembershipOf<C>;
type SnapshotMetaC = openraft::alias::SnapshotMetaOf<C>;
/// A snapshot's data: the key-space dump (see `mvcc::snapshot`).
pub type SnapshotData = Vec<u8>;
type SnapshotC = openraft::alias::SnapshotOf<C, SnapshotData>;

/// The state machine handed to openraft; shares the key space with readers.
pub struct StateMachine {
    kv: Arc<KvStore>,
    stages: Stages,
}

impl StateMachine {
    pub fn new(kv: Arc<KvStore>, dir: &Path) -> Self {
        // Snapshots are no longer kept in a file (see the module doc); a
        // file left by an older version is stale and only takes space.
        let _ = std::fs::remove_file(dir.join("snapshot.bin"));
        StateMachine {
            kv,
            stages: Stages::default(),
        }
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
}

/// The snapshot metadata of what the key space holds: the applied log id
/// and the membership, as one batch recorded them (read under the apply
/// lock, so the two agree with each other and with the data beside them).
fn key_space_meta(
    applied: Option<Vec<u8>>,
    membership: Option<Vec<u8>>,
) -> io::Result<SnapshotMetaC> {
    let last_log_id: Option<LogIdC> = match applied {
        Some(a) => serde_json::from_slice(&a).map_err(io_err)?,
        None => None,
    };
    let last_membership: StoredMembershipC = match membership {
        Some(m) => serde_json::from_slice(&m).map_err(io_err)?,
        None => StoredMembershipC::default(),
    };
    Ok(SnapshotMetaC {
        last_log_id,
        last_membership,
    })
}

/// "Builds" a snapshot by making the key space durable: sled is the
/// snapshot. No data is copied; a snapshot's bytes are produced only when a
/// follower needs them (`get_current_snapshot`).
pub struct SnapshotBuilder {
    kv: Arc<KvStore>,
}

impl RaftSnapshotBuilder<C> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotC, io::Error> {
        // The applied id first, then the flush: everything up to it (and
        // perhaps more) is durable once the flush returns.
        let (applied, membership) = self.kv.applied_meta();
        let meta = key_space_meta(applied, membership)?;
        // fsync: everything up to the snapshot's index is durable in sled
        // before openraft may purge the log up to it.
        self.kv.flush().await.map_err(io_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot: the key space, flushed");
        Ok(SnapshotC {
            meta,
            snapshot: Vec::new(),
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
        let cmds: Vec<_> = items.iter().map(|(e, _)| Cmd::of(&e.payload)).collect();
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
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaC,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        // Crash-safe at every step (cli/tests/crash_steps.rs): the key space
        // is replaced in one sled batch and fsynced. A crash after it leaves
        // a key space that says it applied up to the snapshot, ahead of the
        // log: openraft then treats the log below as purged, and the
        // snapshot it asks for is the key space itself.
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(io_err)?;
        let membership = serde_json::to_vec(&meta.last_membership).map_err(io_err)?;
        crate::failpoint::crash_point("install-before-kv");
        self.kv
            .install(&snapshot, applied, membership)
            .await
            .map_err(io_err)?;
        crate::failpoint::crash_point("install-after-kv");
        Ok(())
    }

    /// The key space as it is now, dumped under the apply lock with the
    /// log id and membership it has applied: a snapshot at least as new as
    /// the last one built (the builder only flushes), and never ahead of
    /// what is committed. None while nothing is applied.
    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotC>, io::Error> {
        let kv = self.kv.clone();
        let (data, applied, membership) = tokio::task::spawn_blocking(move || kv.dump())
            .await
            .map_err(io_err)?;
        let meta = key_space_meta(applied, membership)?;
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "snapshot of the key space");
        Ok(Some(SnapshotC {
            meta,
            snapshot: data,
        }))
    }
}
