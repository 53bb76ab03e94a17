//! The single-key and range operations a command carries out inside one
//! batch: put, delete-range, range, compaction and leases, with etcd's
//! semantics.

use super::*;

impl<'a> Writer<'a> {
    pub(super) fn put(&mut self, p: &PutRequest) -> Step<PutResponse> {
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

    pub(super) fn delete_range(&mut self, d: &DeleteRangeRequest) -> Step<DeleteRangeResponse> {
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
    pub(super) fn range(
        &mut self,
        r: &RangeRequest,
    ) -> Step<keel_proto::etcdserverpb::RangeResponse> {
        self.check_range(r)?;
        let kvs = if r.revision > 0 && r.revision < self.resp_rev() {
            // Undo stored events after the revision and this batch's own
            // (not yet stored) events, so batching never changes the answer.
            let mut later =
                crate::mvcc::prev::events_after(self.tree, r.revision).map_err(storage)?;
            later.extend(
                self.events
                    .iter()
                    .filter(|(rev, _)| *rev > r.revision)
                    .cloned(),
            );
            crate::mvcc::read::undo_after(
                self.scan(&r.key, &r.range_end)?,
                later.into_iter().map(|(_, e)| e),
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

    pub(super) fn compact(&mut self, c: &CompactionRequest) -> Step<CompactionResponse> {
        if c.revision > self.rev {
            return Err(EtcdError::FutureRevision.into());
        }
        if c.revision <= self.compact {
            return Err(EtcdError::Compacted.into());
        }
        // History below the compaction revision is dropped; reads and
        // watches at or above it stay possible. Records holding a revision
        // that a kept event's previous key-value refers to stay too
        // (`crate::mvcc::prev`). A record covers the revisions after the
        // one before it, up to its own (more, for a record sharing its
        // revision with the one before: keeping too much is harmless).
        let kept = self.pins.kept_by(c.revision);
        let (lo, hi) = (keys::rev_key(0, 0), keys::rev_key(c.revision, 0));
        let mut before = 0;
        for k in self.scan_keys(&lo, &hi)? {
            let last = keys::rev_of(&k);
            let first = if before < last { before + 1 } else { last };
            before = last;
            if kept.range(first..=last).next().is_none() {
                self.del(k);
            }
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

    pub(super) fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Step<LeaseGrantResponse> {
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

    pub(super) fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> Step<LeaseRevokeResponse> {
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
}
