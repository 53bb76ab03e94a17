//! The write path: applying replicated commands to the key space with etcd's
//! semantics. A whole batch of Raft entries becomes one atomic sled batch.

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

/// Builds one sled batch over the committed tree, reading its own writes.
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
    fn get(&self, k: &[u8]) -> Step<Option<Vec<u8>>> {
        if let Some(v) = self.cmd.get(k).or_else(|| self.batch.get(k)) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn set(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.cmd.insert(k, Some(v));
    }

    fn del(&mut self, k: Vec<u8>) {
        self.cmd.insert(k, None);
    }

    fn get_kv(&self, user: &[u8]) -> Step<Option<KeyValue>> {
        self.get(&kv_key(user))?.map(|v| decode_rec(&v)).transpose()
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

    fn record(&mut self, ev: Event) {
        let rev = self.next_rev();
        self.set(keys::rev_key(rev, self.sub), ev.encode_to_vec());
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

    fn put(&mut self, p: &PutRequest) -> Step<PutResponse> {
        if self.failpoint == Some(p.key.as_slice()) {
            return Err(storage("failpoint: injected storage error"));
        }
        self.check_put(p)?;
        let prev = self.get_kv(&p.key)?;
        let rev = self.next_rev();
        let value = if p.ignore_value {
            prev.as_ref().map(|k| k.value.clone()).unwrap_or_default()
        } else {
            p.value.clone()
        };
        let lease = if p.ignore_lease {
            prev.as_ref().map(|k| k.lease).unwrap_or_default()
        } else {
            p.lease
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map(|k| k.create_revision).unwrap_or(rev),
            mod_revision: rev,
            version: prev.as_ref().map(|k| k.version).unwrap_or(0) + 1,
            value,
            lease,
        };
        if let Some(old) = prev.as_ref().filter(|o| o.lease != 0 && o.lease != lease) {
            self.del(keys::attach_key(old.lease, &p.key));
        }
        if lease != 0 {
            self.set(keys::attach_key(lease, &p.key), Vec::new());
        }
        self.set(kv_key(&p.key), kv.encode_to_vec());
        self.record(Event {
            r#type: event::EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            header: header(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Step<DeleteRangeResponse> {
        if d.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let victims = self.scan(&d.key, &d.range_end)?;
        let rev = self.next_rev();
        for kv in &victims {
            self.del(kv_key(&kv.key));
            if kv.lease != 0 {
                self.del(keys::attach_key(kv.lease, &kv.key));
            }
            self.record(Event {
                r#type: event::EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: Some(kv.clone()),
            });
        }
        Ok(DeleteRangeResponse {
            header: header(self.resp_rev()),
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv { victims } else { Vec::new() },
        })
    }

    /// A range inside a transaction, at the current or a past revision.
    fn range(&mut self, r: &RangeRequest) -> Step<keel_proto::etcdserverpb::RangeResponse> {
        self.check_range(r)?;
        let kvs = if r.revision > 0 && r.revision < self.resp_rev() {
            // Undo stored events after the revision and this batch's own
            // (not yet stored) events, so batching never changes the answer.
            let mut later = Vec::new();
            for item in self
                .tree
                .range(keys::rev_key(r.revision + 1, 0)..vec![keys::REV + 1])
            {
                let (_, v) = item.map_err(storage)?;
                later.push(decode_rec::<Event>(&v)?);
            }
            later.extend(
                self.events
                    .iter()
                    .filter(|(rev, _)| *rev > r.revision)
                    .map(|(_, e)| e.clone()),
            );
            super::read::undo_after(
                self.scan(&r.key, &r.range_end)?,
                later.into_iter(),
                &r.key,
                &r.range_end,
            )
        } else {
            self.scan(&r.key, &r.range_end)?
        };
        let resp = shape_range(kvs, r, self.resp_rev());
        self.range_bytes += resp
            .kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum::<usize>();
        if self.range_bytes > MAX_TXN_RANGE_BYTES {
            return Err(EtcdError::InvalidArgument(format!(
                "ranges in one transaction may return at most {MAX_TXN_RANGE_BYTES} bytes"
            ))
            .into());
        }
        Ok(resp)
    }

    /// etcd's `applyCompare`: every key of the range satisfies the compare;
    /// a range with no keys compares against an absent key.
    fn compare(&self, c: &Compare) -> Step<bool> {
        let kvs = if c.range_end.is_empty() {
            self.get_kv(&c.key)?.into_iter().collect()
        } else {
            self.scan(&c.key, &c.range_end)?
        };
        if kvs.is_empty() {
            return Ok(compare_one(c, None));
        }
        Ok(kvs.iter().all(|kv| compare_one(c, Some(kv))))
    }

    /// etcd's `compareToPath`: the outcome of every compare the transaction
    /// will reach (depth first), all against the state before it writes.
    fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Step<()> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                self.compare_path(inner, path)?;
            }
        }
        Ok(())
    }

    /// etcd's `checkRequests`: checks every op of the branches the path
    /// takes, puts first, then ranges, so a failing op leaves the whole
    /// transaction unapplied. Returns how many path entries it consumed.
    fn check_ops(&self, t: &TxnRequest, path: &[bool], puts: bool) -> Step<usize> {
        let Some(&ok) = path.first() else {
            return Err(EtcdError::Internal("transaction path too short".into()).into());
        };
        let mut used = 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) if puts => self.check_put(p)?,
                Some(request_op::Request::RequestRange(r)) if !puts => self.check_range(r)?,
                Some(request_op::Request::RequestTxn(inner)) => {
                    used += self.check_ops(inner, &path[used..], puts)?;
                }
                _ => {}
            }
        }
        Ok(used)
    }

    fn txn(&mut self, t: &TxnRequest) -> Step<TxnResponse> {
        let mut path = Vec::new();
        self.compare_path(t, &mut path)?;
        self.check_ops(t, &path, true)?;
        self.check_ops(t, &path, false)?;
        let mut at = 0;
        self.run_txn(t, &path, &mut at)
    }

    /// Runs the branches `path` chose; `at` is the next path entry.
    fn run_txn(&mut self, t: &TxnRequest, path: &[bool], at: &mut usize) -> Step<TxnResponse> {
        let succeeded = *path
            .get(*at)
            .ok_or_else(|| EtcdError::Internal("transaction path too short".into()))?;
        *at += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(d)?)
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    response_op::Response::ResponseTxn(self.run_txn(inner, path, at)?)
                }
                None => {
                    return Err(EtcdError::InvalidArgument("empty request op".into()).into());
                }
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: header(self.resp_rev()),
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, c: &CompactionRequest) -> Step<CompactionResponse> {
        if c.revision > self.rev {
            return Err(EtcdError::FutureRevision.into());
        }
        if c.revision <= self.compact {
            return Err(EtcdError::Compacted.into());
        }
        // History below the compaction revision is dropped; reads and
        // watches at or above it stay possible.
        let (lo, hi) = (keys::rev_key(0, 0), keys::rev_key(c.revision, 0));
        let doomed = self.scan_keys(&lo, &hi)?;
        for k in doomed {
            self.del(k);
        }
        self.compact = c.revision;
        self.set(
            keys::META_COMPACT.to_vec(),
            c.revision.to_be_bytes().to_vec(),
        );
        Ok(CompactionResponse {
            header: header(self.rev),
        })
    }

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Step<LeaseGrantResponse> {
        if g.id == 0 {
            return Err(EtcdError::InvalidArgument(
                "lease id must be chosen before proposing".into(),
            )
            .into());
        }
        if self.lease_exists(g.id)? {
            return Err(EtcdError::LeaseExists.into());
        }
        self.set(keys::lease_key(g.id), g.encode_to_vec());
        Ok(LeaseGrantResponse {
            header: header(self.rev),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> Step<LeaseRevokeResponse> {
        if !self.lease_exists(r.id)? {
            return Err(EtcdError::LeaseNotFound.into());
        }
        let prefix = keys::attach_prefix(r.id);
        let attached: Vec<Vec<u8>> = self
            .scan_keys(&prefix, &keys::prefix_end(&prefix))?
            .into_iter()
            .map(|k| k[prefix.len()..].to_vec())
            .collect();
        for user in attached {
            self.delete_range(&DeleteRangeRequest {
                key: user,
                ..Default::default()
            })?;
        }
        self.del(keys::lease_key(r.id));
        Ok(LeaseRevokeResponse {
            header: header(self.resp_rev()),
        })
    }

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

/// One etcd comparison against a key's state (`None`: the key is absent).
pub fn compare_one(c: &Compare, kv: Option<&KeyValue>) -> bool {
    use compare::{CompareResult, TargetUnion};
    use std::cmp::Ordering as O;
    let ord = match &c.target_union {
        Some(TargetUnion::Version(v)) => kv.map(|k| k.version).unwrap_or(0).cmp(v),
        Some(TargetUnion::CreateRevision(v)) => kv.map(|k| k.create_revision).unwrap_or(0).cmp(v),
        Some(TargetUnion::ModRevision(v)) => kv.map(|k| k.mod_revision).unwrap_or(0).cmp(v),
        Some(TargetUnion::Lease(v)) => kv.map(|k| k.lease).unwrap_or(0).cmp(v),
        Some(TargetUnion::Value(v)) => match kv {
            Some(k) => k.value.as_slice().cmp(v.as_slice()),
            None => return false,
        },
        None => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == O::Equal,
        Ok(CompareResult::Greater) => ord == O::Greater,
        Ok(CompareResult::Less) => ord == O::Less,
        Ok(CompareResult::NotEqual) => ord != O::Equal,
        Err(_) => false,
    }
}

impl KvStore {
    /// Applies a batch of commands (`None` for blank or membership entries)
    /// and the batch's metadata in one atomic sled batch, then publishes the
    /// events. Returns one result per command.
    pub fn apply_batch(
        &self,
        cmds: &[Option<&Command>],
        meta: BatchMeta,
    ) -> Result<Vec<Option<CommandResult>>, StoreError> {
        let _g = self.lock.write().unwrap_or_else(|e| e.into_inner());
        let mut w = Writer {
            tree: &self.tree,
            failpoint: self.failpoint.get().map(Vec::as_slice),
            batch: BTreeMap::new(),
            cmd: BTreeMap::new(),
            rev: self.revision(),
            compact: self.compact_revision(),
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
        let mut batch = sled::Batch::default();
        for (k, v) in overlay {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        self.revision.store(rev, Ordering::SeqCst);
        self.compact_revision.store(compact, Ordering::SeqCst);
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(EventBatch { events }));
        }
        Ok(results)
    }
}

/// Checks a put before it is proposed (etcd's `checkPutRequest`).
pub fn validate_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// Checks a range before it is served or proposed inside a transaction
/// (etcd's `checkRangeRequest`).
pub fn validate_range(r: &RangeRequest) -> Result<(), EtcdError> {
    use keel_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// Checks a transaction before it is proposed: empty keys, too many ops,
/// duplicate writes, malformed compares (etcd's `checkTxnRequest`).
pub fn validate_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let target = CompareTarget::try_from(c.target)
            .map_err(|_| EtcdError::InvalidCompare(format!("unknown target {}", c.target)))?;
        CompareResult::try_from(c.result)
            .map_err(|_| EtcdError::InvalidCompare(format!("unknown result {}", c.result)))?;
        let matches = matches!(
            (target, &c.target_union),
            (CompareTarget::Version, Some(TargetUnion::Version(_)))
                | (CompareTarget::Create, Some(TargetUnion::CreateRevision(_)))
                | (CompareTarget::Mod, Some(TargetUnion::ModRevision(_)))
                | (CompareTarget::Value, Some(TargetUnion::Value(_)))
                | (CompareTarget::Lease, Some(TargetUnion::Lease(_)))
        );
        if !matches {
            return Err(EtcdError::InvalidCompare(format!(
                "target {target:?} does not match the value given for key {:?}",
                String::from_utf8_lossy(&c.key)
            )));
        }
    }
    for ops in [&t.success, &t.failure] {
        let mut puts: Vec<&[u8]> = Vec::new();
        let mut dels: Vec<(&[u8], &[u8])> = Vec::new();
        for op in ops.iter() {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    validate_put(p)?;
                    if puts.contains(&p.key.as_slice())
                        || dels.iter().any(|(k, e)| in_range(&p.key, k, e))
                    {
                        return Err(EtcdError::DuplicateKey);
                    }
                    puts.push(&p.key);
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    if d.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
                    if puts.iter().any(|p| in_range(p, &d.key, &d.range_end)) {
                        return Err(EtcdError::DuplicateKey);
                    }
                    dels.push((&d.key, &d.range_end));
                }
                Some(request_op::Request::RequestRange(r)) => validate_range(r)?,
                Some(request_op::Request::RequestTxn(inner)) => {
                    // etcd leaves a nested txn what its parent branch did not use.
                    validate_txn(inner, max_ops.saturating_sub(ops.len()))?
                }
                None => return Err(EtcdError::InvalidArgument("empty request op in txn".into())),
            }
        }
    }
    Ok(())
}
