//! The write path: applying replicated commands to the key space with etcd's
//! semantics. A whole batch of Raft entries becomes one atomic write
//! (`super::journal`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keel_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare,
    request_op, response_op,
};
use keel_proto::keelraft::{Command, CommandError, CommandResult, command, command_result};
use keel_proto::mvccpb::{Event, KeyValue, event};
use prost::Message;

use super::keys::{self, in_range, kv_bounds, kv_key};
use super::read::shape_range;
use super::{EventBatch, KvStore};
use crate::error::{EtcdError, StoreError};

mod ops;
mod txn;
mod validate;

pub use txn::compare_one;
pub use validate::{validate_put, validate_range, validate_txn};

/// Metadata written in the same atomic batch as the commands' effects.
pub struct BatchMeta {
    /// JSON of the last applied log id.
    pub applied: Vec<u8>,
    /// JSON of the last membership, when the batch changed it.
    pub membership: Option<Vec<u8>>,
    /// The cluster id to record, if none is recorded yet.
    pub cluster_id: Option<u64>,
}

/// Why applying one command stopped.
#[derive(Debug)]
enum Stop {
    /// The request is refused: the client gets this error, nothing changes.
    Refused(EtcdError),
    /// The key space could not be read: the member must stop (a failed read
    /// is never taken for an absent key, or members would diverge).
    Storage(String),
}

impl From<EtcdError> for Stop {
    fn from(e: EtcdError) -> Self {
        Stop::Refused(e)
    }
}

type Step<T> = Result<T, Stop>;

/// Every range inside one transaction together may return at most this many
/// bytes of keys and values: every member builds the answer, so an unbounded
/// one could exhaust all of them at once.
pub const MAX_TXN_RANGE_BYTES: usize = 64 << 20;

/// Builds one atomic batch of writes over the committed tree (written
/// through `super::journal`), reading its own writes.
///
/// Writes go to two layers: `batch` holds the effects of the batch's earlier
/// commands, `cmd` those of the command being applied. A command that fails
/// (or panics) drops `cmd` and its events, so it changes nothing, and every
/// member reaches that same result.
struct Writer<'a> {
    tree: &'a sled::Tree,
    /// Test only: a put of this key fails as a storage error.
    failpoint: Option<&'a [u8]>,
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    cmd: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The latest revision, including entries earlier in this batch.
    rev: i64,
    compact: i64,
    /// The history's references, as of the batch's start (`super::prev`).
    pins: &'a super::prev::Pins,
    /// Events recorded by the entry being applied.
    sub: u32,
    events: Vec<(i64, Event)>,
    /// Bytes returned so far by ranges of the transaction being applied.
    range_bytes: usize,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn storage(e: impl std::fmt::Display) -> Stop {
    Stop::Storage(e.to_string())
}

fn decode_rec<M: Message + Default>(bytes: &[u8]) -> Step<M> {
    M::decode(bytes).map_err(|e| storage(format!("corrupt record in the key space: {e}")))
}

impl<'a> Writer<'a> {
    /// The record at `k`, seeing this batch's writes, mapped by `f` straight
    /// from where it lies (the overlay or sled's buffer), so nothing is
    /// copied that `f` does not copy.
    fn read<T>(&self, k: &[u8], f: impl FnOnce(&[u8]) -> T) -> Step<Option<T>> {
        if let Some(v) = self.cmd.get(k).or_else(|| self.batch.get(k)) {
            return Ok(v.as_deref().map(f));
        }
        Ok(self.tree.get(k).map_err(storage)?.map(|v| f(&v)))
    }

    fn get(&self, k: &[u8]) -> Step<Option<Vec<u8>>> {
        self.read(k, <[u8]>::to_vec)
    }

    fn set(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.cmd.insert(k, Some(v));
    }

    fn del(&mut self, k: Vec<u8>) {
        self.cmd.insert(k, None);
    }

    /// The current key-value of `user`, decoded where it lies (one put
    /// reads one).
    fn get_kv(&self, user: &[u8]) -> Step<Option<KeyValue>> {
        self.read(&kv_key(user), decode_rec)?.transpose()
    }

    /// Every record in `[start, end)` (raw keys), seeing this batch's writes,
    /// with each value mapped by `f` (`|_| ()` when only the keys matter, so
    /// no value is copied).
    fn scan_with<T>(
        &self,
        start: &[u8],
        end: &[u8],
        f: impl Fn(&[u8]) -> T,
    ) -> Step<BTreeMap<Vec<u8>, T>> {
        let mut map = BTreeMap::new();
        if start >= end {
            return Ok(map);
        }
        for r in self.tree.range(start..end) {
            let (k, v) = r.map_err(storage)?;
            map.insert(k.to_vec(), f(&v));
        }
        for layer in [&self.batch, &self.cmd] {
            for (k, v) in layer.range(start.to_vec()..end.to_vec()) {
                match v {
                    Some(v) => map.insert(k.clone(), f(v)),
                    None => map.remove(k),
                };
            }
        }
        Ok(map)
    }

    /// The raw keys present in `[start, end)`, seeing this batch's writes.
    fn scan_keys(&self, start: &[u8], end: &[u8]) -> Step<Vec<Vec<u8>>> {
        Ok(self.scan_with(start, end, |_| ())?.into_keys().collect())
    }

    /// Current key-values in an etcd range (any form: single key, prefix,
    /// from-key, reversed = empty), seeing this batch's writes.
    fn scan(&self, key: &[u8], range_end: &[u8]) -> Step<Vec<KeyValue>> {
        let (start, end) = kv_bounds(key, range_end);
        self.scan_with(&start, &end, <[u8]>::to_vec)?
            .values()
            .map(|v| decode_rec(v))
            .collect()
    }

    fn next_rev(&self) -> i64 {
        self.rev + 1
    }

    /// Records an event of the entry being applied; the batch's events are
    /// stored together at the end of the batch (`super::history`).
    fn record(&mut self, ev: Event) {
        let rev = self.next_rev();
        self.sub += 1;
        self.events.push((rev, ev));
    }

    /// Ends one Raft entry: if it changed anything, the revision moves on.
    fn finish_entry(&mut self) {
        if self.sub > 0 {
            self.rev += 1;
            self.sub = 0;
        }
    }

    /// The revision a response reports: the entry's own if it wrote, else the current one.
    fn resp_rev(&self) -> i64 {
        if self.sub > 0 {
            self.next_rev()
        } else {
            self.rev
        }
    }

    fn lease_exists(&self, id: i64) -> Step<bool> {
        Ok(self.get(&keys::lease_key(id))?.is_some())
    }

    /// etcd's `checkRequestPut`: the key an `ignore_*` put keeps must exist,
    /// and so must its lease.
    fn check_put(&self, p: &PutRequest) -> Step<()> {
        if p.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        if (p.ignore_value || p.ignore_lease) && self.get_kv(&p.key)?.is_none() {
            return Err(EtcdError::KeyNotFound.into());
        }
        if p.lease != 0 && !self.lease_exists(p.lease)? {
            return Err(EtcdError::LeaseNotFound.into());
        }
        Ok(())
    }

    /// etcd's `checkRequestRange`: a historic read names a revision that exists.
    fn check_range(&self, r: &RangeRequest) -> Step<()> {
        if r.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        if r.revision > self.rev {
            return Err(EtcdError::FutureRevision.into());
        }
        // etcd's first readable revision is -1 until the first compaction.
        let first = if self.compact == 0 { -1 } else { self.compact };
        if r.revision != 0 && r.revision < first {
            return Err(EtcdError::Compacted.into());
        }
        Ok(())
    }
}

impl<'a> Writer<'a> {
    fn run(&mut self, cmd: &Command) -> Step<command_result::Result> {
        use command::Op;
        use command_result::Result as R;
        match &cmd.op {
            Some(Op::Put(p)) => {
                // A put outside a txn looks its lease up first (etcd's
                // applierV3backend.Put); inside one, checkRequestPut looks
                // for the kept key first (check_put).
                if p.lease != 0 && !self.lease_exists(p.lease)? {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                self.put(p).map(R::Put)
            }
            Some(Op::DeleteRange(d)) => self.delete_range(d).map(R::DeleteRange),
            Some(Op::Txn(t)) => self.txn(t).map(R::Txn),
            Some(Op::Compact(c)) => self.compact(c).map(R::Compact),
            Some(Op::LeaseGrant(g)) => self.lease_grant(g).map(R::LeaseGrant),
            Some(Op::LeaseRevoke(r)) => self.lease_revoke(r).map(R::LeaseRevoke),
            None => Err(EtcdError::InvalidArgument("empty command".into()).into()),
        }
    }

    /// Applies one command. It is total: a refused request, and even a bug
    /// that panics, answers with an error and leaves the key space as it was,
    /// the same on every member (they all run the same code on the same
    /// entries). Only a storage failure stops the batch (and the member).
    fn apply(&mut self, cmd: &Command) -> Result<CommandResult, String> {
        use command_result::Result as R;
        let (n_events, compact) = (self.events.len(), self.compact);
        self.range_bytes = 0;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(cmd)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(cmd = ?cmd.op.as_ref().map(std::mem::discriminant), %what,
                    "applying a command panicked; answered with an error, nothing changed");
                Err(EtcdError::Internal(format!("applying the request failed: {what}")).into())
            });
        let result = match outcome {
            Ok(r) => {
                let cmd = std::mem::take(&mut self.cmd);
                self.batch.extend(cmd);
                r
            }
            Err(stop) => {
                self.cmd.clear();
                self.events.truncate(n_events);
                self.sub = 0;
                self.compact = compact;
                match stop {
                    Stop::Refused(e) => R::Error(CommandError {
                        code: e.code() as i32,
                        message: e.to_string(),
                    }),
                    Stop::Storage(e) => return Err(e),
                }
            }
        };
        self.finish_entry();
        Ok(CommandResult {
            result: Some(result),
        })
    }
}

impl KvStore {
    /// Applies a batch of commands (`None` for blank or membership entries)
    /// and the batch's metadata in one atomic write (`super::journal`), then publishes the
    /// events. Returns one result per command.
    pub fn apply_batch(
        &self,
        cmds: &[Option<&Command>],
        meta: BatchMeta,
    ) -> Result<Vec<Option<CommandResult>>, StoreError> {
        let _g = self.lock.write().unwrap_or_else(|e| e.into_inner());
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = Writer {
            tree: &self.tree,
            failpoint: self.failpoint.get().map(Vec::as_slice),
            batch: BTreeMap::new(),
            cmd: BTreeMap::new(),
            rev: self.revision(),
            compact: self.compact_revision(),
            pins: &pins,
            sub: 0,
            events: Vec::new(),
            range_bytes: 0,
        };
        let mut results = Vec::with_capacity(cmds.len());
        for c in cmds {
            results.push(match c {
                Some(c) => Some(w.apply(c).map_err(StoreError::Apply)?),
                None => None,
            });
        }
        let cluster_recorded = w.get(keys::META_CLUSTER_ID).map_err(|e| match e {
            Stop::Storage(e) => StoreError::Apply(e),
            Stop::Refused(e) => StoreError::Apply(e.to_string()),
        })?;
        // The batch's history, less what a compaction in the batch dropped
        // (history below the compaction revision is never read again). The
        // events are in revision order, so what is kept is a suffix.
        let kept_from = w.events.partition_point(|(rev, _)| *rev < w.compact);
        let history = super::history::encode_runs(&w.events[kept_from..], w.compact);
        let refs = super::prev::references(&w.events[kept_from..], w.compact);
        w.set(keys::META_REVISION.to_vec(), w.rev.to_be_bytes().to_vec());
        w.set(keys::META_APPLIED.to_vec(), meta.applied);
        if let Some(m) = meta.membership {
            w.set(keys::META_MEMBERSHIP.to_vec(), m);
        }
        if let Some(id) = meta.cluster_id
            && cluster_recorded.is_none()
        {
            w.set(keys::META_CLUSTER_ID.to_vec(), id.to_be_bytes().to_vec());
        }
        let (rev, compact, events) = (w.rev, w.compact, std::mem::take(&mut w.events));
        let mut overlay = std::mem::take(&mut w.batch);
        overlay.extend(std::mem::take(&mut w.cmd));
        // The history goes in ahead of the journal rather than through it
        // (it is most of a batch's bytes, which journaling wrote twice). It
        // is keyed by revisions above the recorded one, so nothing reads it
        // until the journal's head is in; sled recovers a prefix of its log,
        // so a recovered head comes with its history, and `KvStore::open`
        // removes the history of a batch whose head was lost.
        for (k, v) in history {
            self.tree.insert(k, v)?;
        }
        self.journal
            .write(&self.tree, overlay, &events[kept_from..])?;
        self.revision.store(rev, Ordering::SeqCst);
        self.compact_revision.store(compact, Ordering::SeqCst);
        pins.compacted(compact);
        pins.extend(refs);
        drop(pins);
        let granted = results.iter().flatten().filter_map(|r| match &r.result {
            Some(command_result::Result::LeaseGrant(g)) => Some(g.id),
            _ => None,
        });
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(granted);
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(EventBatch { events }));
        }
        Ok(results)
    }
}
