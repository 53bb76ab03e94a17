//! The write path: applying replicated commands to the key space with etcd's
//! semantics. A whole batch of Raft entries becomes one atomic sled batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keel_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare, request_op, response_op,
};
use keel_proto::keelraft::{Command, CommandError, CommandResult, command, command_result};
use keel_proto::mvccpb::{Event, KeyValue, event};
use prost::Message;

use super::keys::{self, in_range, kv_bounds, kv_key};
use super::read::shape_range;
use super::{EventBatch, KvStore, decode};
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

/// Builds one sled batch over the committed tree, reading its own writes.
struct Writer<'a> {
    tree: &'a sled::Tree,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The latest revision, including entries earlier in this batch.
    rev: i64,
    compact: i64,
    /// Events recorded by the entry being applied.
    sub: u32,
    events: Vec<(i64, Event)>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl<'a> Writer<'a> {
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        match self.overlay.get(k) {
            Some(v) => v.clone(),
            None => self.tree.get(k).ok().flatten().map(|v| v.to_vec()),
        }
    }

    fn set(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert(k, Some(v));
    }

    fn del(&mut self, k: Vec<u8>) {
        self.overlay.insert(k, None);
    }

    fn get_kv(&self, user: &[u8]) -> Option<KeyValue> {
        self.get(&kv_key(user)).map(|v| decode(&v))
    }

    /// Current key-values in an etcd range, seeing this batch's writes.
    fn scan(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let (start, end) = kv_bounds(key, range_end);
        let end = end.unwrap_or_else(|| vec![keys::KV + 1]);
        let mut map: BTreeMap<Vec<u8>, Vec<u8>> = self
            .tree
            .range(start.clone()..end.clone())
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        for (k, v) in self.overlay.range(start..end) {
            match v {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        map.values().map(|v| decode(v)).collect()
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

    fn lease_exists(&self, id: i64) -> bool {
        self.get(&keys::lease_key(id)).is_some()
    }

    fn check_put(&self, p: &PutRequest) -> Result<(), EtcdError> {
        if p.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        if (p.ignore_value || p.ignore_lease) && self.get_kv(&p.key).is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        if !p.ignore_lease && p.lease != 0 && !self.lease_exists(p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        Ok(())
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, EtcdError> {
        self.check_put(p)?;
        let prev = self.get_kv(&p.key);
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

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        if d.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        let victims = self.scan(&d.key, &d.range_end);
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

    fn range(
        &self,
        r: &RangeRequest,
    ) -> Result<keel_proto::etcdserverpb::RangeResponse, EtcdError> {
        if r.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        if r.revision > 0 && r.revision != self.resp_rev() {
            // A historic read inside a transaction reads committed history.
            if r.revision < self.compact {
                return Err(EtcdError::Compacted);
            }
            if r.revision > self.rev {
                return Err(EtcdError::FutureRevision);
            }
            // Undo stored events after the revision and this batch's own
            // (not yet stored) events, so batching never changes the answer.
            let mut later = super::read::later_events(self.tree, r.revision);
            later.extend(
                self.events
                    .iter()
                    .filter(|(rev, _)| *rev > r.revision)
                    .map(|(_, e)| e.clone()),
            );
            let kvs = super::read::undo_after(
                self.scan(&r.key, &r.range_end),
                later.into_iter(),
                &r.key,
                &r.range_end,
            );
            return Ok(shape_range(kvs, r, self.resp_rev()));
        }
        Ok(shape_range(
            self.scan(&r.key, &r.range_end),
            r,
            self.resp_rev(),
        ))
    }

    fn compare(&self, c: &Compare) -> bool {
        let kvs: Vec<Option<KeyValue>> = if c.range_end.is_empty() {
            vec![self.get_kv(&c.key)]
        } else {
            self.scan(&c.key, &c.range_end)
                .into_iter()
                .map(Some)
                .collect()
        };
        kvs.iter().all(|kv| compare_one(c, kv.as_ref()))
    }

    /// Checks every op of the branch that will run, so a failing op leaves
    /// the whole transaction unapplied.
    fn check_ops(&self, ops: &[RequestOp]) -> Result<(), EtcdError> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => self.check_put(p)?,
                Some(request_op::Request::RequestRange(r)) => {
                    if r.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
                    if r.revision > 0 && r.revision < self.compact {
                        return Err(EtcdError::Compacted);
                    }
                    if r.revision > self.rev + 1 {
                        return Err(EtcdError::FutureRevision);
                    }
                }
                Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                    return Err(EtcdError::EmptyKey);
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let ok = t.compare.iter().all(|c| self.compare(c));
                    self.check_ops(if ok { &t.success } else { &t.failure })?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let succeeded = t.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        self.check_ops(ops)?;
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
                    response_op::Response::ResponseTxn(self.txn(inner)?)
                }
                None => return Err(EtcdError::InvalidArgument("empty request op".into())),
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

    fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        if c.revision > self.rev {
            return Err(EtcdError::FutureRevision);
        }
        if c.revision <= self.compact {
            return Err(EtcdError::Compacted);
        }
        // History below the compaction revision is dropped; reads and
        // watches at or above it stay possible.
        let (lo, hi) = (keys::rev_key(0, 0), keys::rev_key(c.revision, 0));
        let mut doomed: Vec<Vec<u8>> = self
            .tree
            .range(lo.clone()..hi.clone())
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| k.to_vec())
            .collect();
        // Events recorded earlier in this batch are not stored yet.
        doomed.extend(
            self.overlay
                .range(lo..hi)
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.clone()),
        );
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

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse, EtcdError> {
        if g.id == 0 {
            return Err(EtcdError::InvalidArgument(
                "lease id must be chosen before proposing".into(),
            ));
        }
        if self.lease_exists(g.id) {
            return Err(EtcdError::LeaseExists);
        }
        self.set(keys::lease_key(g.id), g.encode_to_vec());
        Ok(LeaseGrantResponse {
            header: header(self.rev),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, EtcdError> {
        if !self.lease_exists(r.id) {
            return Err(EtcdError::LeaseNotFound);
        }
        let prefix = keys::attach_prefix(r.id);
        let mut attached: Vec<Vec<u8>> = self
            .tree
            .scan_prefix(&prefix)
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| k[prefix.len()..].to_vec())
            .collect();
        for (k, v) in self
            .overlay
            .range(prefix.clone()..keys::prefix_end(&prefix))
        {
            let user = k[prefix.len()..].to_vec();
            if v.is_some() {
                attached.push(user);
            } else {
                attached.retain(|u| *u != user);
            }
        }
        attached.sort();
        attached.dedup();
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

    fn apply(&mut self, cmd: &Command) -> CommandResult {
        use command::Op;
        use command_result::Result as R;
        // A transaction validates its branch before writing, but nested
        // branches can still fail midway: keep a rollback point for it.
        let mark =
            matches!(cmd.op, Some(Op::Txn(_))).then(|| (self.overlay.clone(), self.events.len()));
        let res = match &cmd.op {
            Some(Op::Put(p)) => self.put(p).map(R::Put),
            Some(Op::DeleteRange(d)) => self.delete_range(d).map(R::DeleteRange),
            Some(Op::Txn(t)) => self.txn(t).map(R::Txn),
            Some(Op::Compact(c)) => self.compact(c).map(R::Compact),
            Some(Op::LeaseGrant(g)) => self.lease_grant(g).map(R::LeaseGrant),
            Some(Op::LeaseRevoke(r)) => self.lease_revoke(r).map(R::LeaseRevoke),
            None => Err(EtcdError::InvalidArgument("empty command".into())),
        };
        let result = match res {
            Ok(r) => r,
            Err(e) => {
                // Every other command validates before its first write.
                if let Some((overlay, n_events)) = mark {
                    self.overlay = overlay;
                    self.events.truncate(n_events);
                    self.sub = 0;
                }
                R::Error(CommandError {
                    code: e.code() as i32,
                    message: e.to_string(),
                })
            }
        };
        self.finish_entry();
        CommandResult {
            result: Some(result),
        }
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
            overlay: BTreeMap::new(),
            rev: self.revision(),
            compact: self.compact_revision(),
            sub: 0,
            events: Vec::new(),
        };
        let results = cmds
            .iter()
            .map(|c| c.map(|c| w.apply(c)))
            .collect::<Vec<_>>();
        w.set(keys::META_REVISION.to_vec(), w.rev.to_be_bytes().to_vec());
        w.set(keys::META_APPLIED.to_vec(), meta.applied);
        if let Some(m) = meta.membership {
            w.set(keys::META_MEMBERSHIP.to_vec(), m);
        }
        if let Some(id) = meta.cluster_id
            && w.get(keys::META_CLUSTER_ID).is_none()
        {
            w.set(keys::META_CLUSTER_ID.to_vec(), id.to_be_bytes().to_vec());
        }
        let (rev, compact, events) = (w.rev, w.compact, std::mem::take(&mut w.events));
        let mut batch = sled::Batch::default();
        for (k, v) in w.overlay {
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
                    if p.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
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
                Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                    return Err(EtcdError::EmptyKey);
                }
                Some(request_op::Request::RequestRange(_)) => {}
                Some(request_op::Request::RequestTxn(inner)) => validate_txn(inner, max_ops)?,
                None => return Err(EtcdError::InvalidArgument("empty request op in txn".into())),
            }
        }
    }
    Ok(())
}
