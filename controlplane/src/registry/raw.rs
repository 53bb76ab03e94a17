//! Raw keys outside `/registry` (the cluster's credentials:
//! `auth::credentials`), read and written with the same conditional
//! transactions as objects.

use keel_proto::etcdserverpb::{RangeRequest, TxnRequest, compare};
use keel_proto::prefix_end;

use super::{Registry, cmp_create, cmp_mod, put};
use crate::error::ApiError;

impl Registry {
    /// One key's value and mod_revision; linearizable unless `local`.
    pub async fn raw_get(
        &self,
        key: &str,
        local: bool,
    ) -> Result<Option<(Vec<u8>, i64)>, ApiError> {
        if !local {
            self.node.read_barrier().await?;
        }
        let r = self.node.kv.range(&RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })?;
        Ok(r.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision)))
    }

    /// Every value under `prefix` (linearizable).
    pub async fn raw_list(&self, prefix: &str) -> Result<Vec<Vec<u8>>, ApiError> {
        self.node.read_barrier().await?;
        let r = self.node.kv.range(&RangeRequest {
            range_end: prefix_end(prefix.as_bytes()),
            key: prefix.as_bytes().to_vec(),
            ..Default::default()
        })?;
        Ok(r.kvs.into_iter().map(|kv| kv.value).collect())
    }

    /// Writes `key` only if it does not exist; false if it did.
    pub async fn raw_create(&self, key: &str, value: Vec<u8>) -> Result<bool, ApiError> {
        let r = self
            .txn(TxnRequest {
                compare: vec![cmp_create(key, 0, compare::CompareResult::Equal)],
                success: vec![put(key, value)],
                ..Default::default()
            })
            .await?;
        Ok(r.succeeded)
    }

    /// Overwrites `key` only if its mod_revision is still `rev`; false if not.
    pub async fn raw_swap(&self, key: &str, value: Vec<u8>, rev: i64) -> Result<bool, ApiError> {
        let r = self
            .txn(TxnRequest {
                compare: vec![cmp_mod(key, rev)],
                success: vec![put(key, value)],
                ..Default::default()
            })
            .await?;
        Ok(r.succeeded)
    }
}
