//! Checks a request before it is proposed (etcd's `checkPutRequest`,
//! `checkRangeRequest`, `checkTxnRequest`): a refused request never reaches
//! the log.

use std::collections::BTreeSet;

use keel_proto::etcdserverpb::RequestOp;

use super::*;

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

/// Checks a transaction before it is proposed, in etcd's order: first
/// every op at every depth on its own (empty keys, too many ops, malformed
/// compares: etcd's `checkTxnRequest`), then the writes of each branch
/// against each other across nested Txns (etcd's `checkIntervals`).
pub fn validate_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    check_ops(t, max_ops)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: the op counts and each op on its own. A nested
/// Txn may use what its parent's largest list left of `max_ops`.
fn check_ops(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let used = t.compare.len().max(t.success.len()).max(t.failure.len());
    if used > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    for c in &t.compare {
        check_compare(c)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => validate_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(EtcdError::EmptyKey);
            }
            Some(request_op::Request::RequestDeleteRange(_)) => {}
            Some(request_op::Request::RequestRange(r)) => validate_range(r)?,
            Some(request_op::Request::RequestTxn(inner)) => check_ops(inner, max_ops - used)?,
            // etcd answers an empty op with "key not found".
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

fn check_compare(c: &Compare) -> Result<(), EtcdError> {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    if c.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
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
    Ok(())
}

/// The keys one branch puts and the ranges it deletes.
type Writes<'a> = (BTreeSet<&'a [u8]>, Vec<(&'a [u8], &'a [u8])>);

/// etcd's `checkIntervals` for one branch: the keys it puts and the ranges
/// it deletes, nested Txns included, refusing a put that meets another put
/// or a delete. Like etcd: this level's deletes are known before the nested
/// Txns are checked, a nested Txn's puts are checked against the deletes of
/// the nested Txns before it (not after it), the two branches of one nested
/// Txn may put the same key (only one runs), and this level's puts are
/// checked last, against everything.
fn check_intervals(ops: &[RequestOp]) -> Result<Writes<'_>, EtcdError> {
    let deleted = |dels: &[(&[u8], &[u8])], k: &[u8]| dels.iter().any(|(s, e)| in_range(k, s, e));
    let mut dels: Vec<(&[u8], &[u8])> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some((d.key.as_slice(), d.range_end.as_slice()))
            }
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (then_puts, then_dels) = check_intervals(&t.success)?;
        let (else_puts, else_dels) = check_intervals(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        puts.extend(then_puts.iter().copied());
        for k in else_puts {
            if (puts.contains(k) && !then_puts.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(p.key.as_slice()) || deleted(&dels, &p.key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(&p.key);
        }
    }
    Ok((puts, dels))
}
