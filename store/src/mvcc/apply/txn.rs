//! Transactions: etcd's compares, the chosen branch's checks
//! (`checkRequests`) and running it, nested transactions included.

use super::*;

impl<'a> Writer<'a> {
    /// etcd's `applyCompare`: every key of the range satisfies the compare;
    /// a range with no keys compares against an absent key.
    pub(super) fn compare(&self, c: &Compare) -> Step<bool> {
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
    pub(super) fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Step<()> {
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
    pub(super) fn check_ops(&self, t: &TxnRequest, path: &[bool], puts: bool) -> Step<usize> {
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

    pub(super) fn txn(&mut self, t: &TxnRequest) -> Step<TxnResponse> {
        let mut path = Vec::new();
        self.compare_path(t, &mut path)?;
        self.check_ops(t, &path, true)?;
        self.check_ops(t, &path, false)?;
        let mut at = 0;
        self.run_txn(t, &path, &mut at)
    }

    /// Runs the branches `path` chose; `at` is the next path entry.
    pub(super) fn run_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Step<TxnResponse> {
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
