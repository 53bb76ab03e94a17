//! Checks a request before it is proposed (etcd's `checkPutRequest`,
//! `checkRangeRequest`, `checkTxnRequest`): a refused request never reaches
//! the log.

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
