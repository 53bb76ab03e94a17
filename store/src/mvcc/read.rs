//! Reads of the key space: ranges at the current or a past revision, and the
//! event history that watches replay.

use std::collections::BTreeMap;

use keel_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader, range_request};
use keel_proto::mvccpb::{Event, KeyValue};

use super::keys::{self, in_range, kv_bounds};
use super::{KvStore, decode, history, prev};
use crate::error::EtcdError;

/// Every current key-value in `[key, range_end)`, sorted by key.
pub fn scan_current(tree: &sled::Tree, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
    let (start, end) = kv_bounds(key, range_end);
    tree.range(start..end)
        .filter_map(|r| r.ok())
        .map(|(_, v)| decode::<KeyValue>(&v))
        .collect()
}

/// The key-values in `[key, range_end)` as they were at revision `at`: the
/// current state with every later event undone, newest first.
pub fn scan_at(tree: &sled::Tree, key: &[u8], range_end: &[u8], at: i64) -> Vec<KeyValue> {
    undo_after(
        scan_current(tree, key, range_end),
        later_events(tree, at).into_iter(),
        key,
        range_end,
    )
}

/// The stored events with a revision above `at`, oldest first, their
/// previous key-values resolved.
pub fn later_events(tree: &sled::Tree, at: i64) -> Vec<Event> {
    let events = prev::events_after(tree, at).unwrap_or_else(|e| panic!("{e}"));
    events.into_iter().map(|(_, e)| e).collect()
}

/// Rolls `current` (sorted key-values of a range) back over `later` events
/// (oldest first), returning the range as it was before them.
pub fn undo_after(
    current: Vec<KeyValue>,
    later: impl DoubleEndedIterator<Item = Event>,
    key: &[u8],
    range_end: &[u8],
) -> Vec<KeyValue> {
    let mut map: BTreeMap<Vec<u8>, KeyValue> =
        current.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    for ev in later.rev() {
        let Some(kv) = ev.kv else { continue };
        if !in_range(&kv.key, key, range_end) {
            continue;
        }
        match ev.prev_kv {
            Some(prev) => {
                map.insert(kv.key.clone(), prev);
            }
            None => {
                map.remove(&kv.key);
            }
        }
    }
    map.into_values().collect()
}

/// Applies a range request's options (filters, sort, limit, keys/count only)
/// to the matching key-values, sorted by key.
pub fn shape_range(mut kvs: Vec<KeyValue>, req: &RangeRequest, revision: i64) -> RangeResponse {
    let count = kvs.len() as i64;
    kvs.retain(|kv| {
        (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
    });
    use range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    if order == SortOrder::None && !filtered && req.limit > 0 {
        // etcd 3.4 reads everything only for an explicit order or a
        // filter; otherwise it reads limit + 1 keys in key order and a
        // sort target without an order sorts just those.
        kvs.truncate(req.limit as usize + 1);
    }
    let order = if order == SortOrder::None && target != SortTarget::Key {
        SortOrder::Ascend
    } else {
        order
    };
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let o = match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        // etcd's count-only range returns no keys, so it never has "more".
        more = !req.count_only;
    }
    if req.count_only {
        kvs.clear();
    } else if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    }
}

/// The HashKV of a set of key-values sorted by key: a CRC-32 over each key,
/// value, create/mod revision, version and lease. Backups record it so a
/// restored cluster can be checked against them.
pub fn hash_kvs(kvs: &[KeyValue]) -> u32 {
    let mut h = KvHash::default();
    for kv in kvs {
        h.add(kv);
    }
    h.finish()
}

/// [`hash_kvs`] one key at a time, for callers that do not keep the keys.
#[derive(Default)]
pub struct KvHash(crc32fast::Hasher);

impl KvHash {
    pub fn add(&mut self, kv: &KeyValue) {
        let h = &mut self.0;
        h.update(&(kv.key.len() as u64).to_be_bytes());
        h.update(&kv.key);
        h.update(&(kv.value.len() as u64).to_be_bytes());
        h.update(&kv.value);
        for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
            h.update(&n.to_be_bytes());
        }
    }

    pub fn finish(self) -> u32 {
        self.0.finalize()
    }
}

impl KvStore {
    /// A range over the committed key space (current or at `req.revision`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        self.consistent(|tree| {
            let cur = self.revision();
            if req.revision > cur {
                return Err(EtcdError::FutureRevision);
            }
            if req.revision > 0 && req.revision < self.compact_revision() {
                return Err(EtcdError::Compacted);
            }
            let kvs = if req.revision <= 0 || req.revision == cur {
                scan_current(tree, &req.key, &req.range_end)
            } else {
                scan_at(tree, &req.key, &req.range_end, req.revision)
            };
            Ok(shape_range(kvs, req, cur))
        })
    }

    /// The events with revision in `[from, to]`, in order, plus the current
    /// revision. Fails with `Compacted` when `from` is below the compaction.
    pub fn events_between(
        &self,
        from: i64,
        to: Option<i64>,
    ) -> Result<(Vec<(i64, Event)>, i64), EtcdError> {
        self.events_where(from, to, |_| true, true)
    }

    /// As `events_between`, keeping only the events `keep` wants (by key:
    /// an event's previous key-value may be read from an earlier event of
    /// the same key), and with their previous key-values only if
    /// `with_prev` (else without any).
    pub fn events_where(
        &self,
        from: i64,
        to: Option<i64>,
        keep: impl Fn(&Event) -> bool,
        with_prev: bool,
    ) -> Result<(Vec<(i64, Event)>, i64), EtcdError> {
        self.consistent(|tree| {
            if from < self.compact_revision() {
                return Err(EtcdError::Compacted);
            }
            let cur = self.revision();
            let to = to.unwrap_or(cur).min(cur);
            let mut out = history::events_in(tree, from, to).map_err(EtcdError::Internal)?;
            out.retain(|(_, e)| keep(e));
            if with_prev {
                prev::resolve(tree, &mut out).map_err(EtcdError::Internal)?;
            } else {
                for (_, e) in &mut out {
                    e.prev_kv = None;
                }
            }
            Ok((out, cur))
        })
    }

    /// etcd's HashKV: a CRC-32 over every key-value at revision `at` (0 = now).
    pub fn hash_kv(&self, at: i64) -> Result<(u32, i64, i64), EtcdError> {
        self.consistent(|tree| {
            let cur = self.revision();
            let at = if at <= 0 { cur } else { at };
            if at > cur {
                return Err(EtcdError::FutureRevision);
            }
            let compact = self.compact_revision();
            if at < compact {
                return Err(EtcdError::Compacted);
            }
            let kvs = if at == cur {
                scan_current(tree, &[0], &[0])
            } else {
                scan_at(tree, &[0], &[0], at)
            };
            Ok((hash_kvs(&kvs), compact, at))
        })
    }

    /// The lease's TTL and attached keys, if the lease exists.
    pub fn lease(&self, id: i64) -> Option<(i64, Vec<Vec<u8>>)> {
        self.consistent(|tree| {
            let rec = tree.get(keys::lease_key(id)).ok()??;
            let grant: keel_proto::etcdserverpb::LeaseGrantRequest = decode(&rec);
            let prefix = keys::attach_prefix(id);
            let attached = tree
                .scan_prefix(&prefix)
                .filter_map(|r| r.ok())
                .map(|(k, _)| k[prefix.len()..].to_vec())
                .collect();
            Some((grant.ttl, attached))
        })
    }

    /// Every lease as (id, ttl).
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.consistent(|tree| {
            tree.scan_prefix([keys::LEASE])
                .filter_map(|r| r.ok())
                .map(|(_, v)| {
                    let g: keel_proto::etcdserverpb::LeaseGrantRequest = decode(&v);
                    (g.id, g.ttl)
                })
                .collect()
        })
    }
}
