//! The leader's writes: each one conditional on the revision of the cached
//! object it was computed from, in a single Raft transaction (no read barrier
//! first, as the API's read-modify-write needs). A conflict means the cache
//! was stale or another writer (or a newer leader) got there first; the
//! caller requeues and decides again from fresher state. A deposed leader's
//! writes therefore change nothing.

use keel_proto::api::Resource;
use keel_proto::api::meta::now_rfc3339;
use serde_json::json;

use crate::error::ApiError;
use crate::kinds;
use crate::registry::{Registry, from_value, to_value};

/// Replaces `old` (as cached) with `new`, spec and status alike; bumps the
/// generation when the spec changed. Returns the stored object.
pub async fn replace<T: Resource>(reg: &Registry, old: &T, new: &T) -> Result<T, ApiError> {
    write(reg, old, new, true).await
}

/// Like [`replace`] but never bumps the generation (a binding is not a
/// change of the desired spec).
pub async fn replace_keep_generation<T: Resource>(
    reg: &Registry,
    old: &T,
    new: &T,
) -> Result<T, ApiError> {
    write(reg, old, new, false).await
}

async fn write<T: Resource>(reg: &Registry, old: &T, new: &T, bump: bool) -> Result<T, ApiError> {
    let kind = kinds::of::<T>();
    let m = old.meta();
    let mut v = to_value(new)?;
    let old_v = to_value(old)?;
    let generation = m.generation.max(1);
    v["metadata"]["generation"] = json!(if bump && old_v.get("spec") != v.get("spec") {
        generation + 1
    } else {
        generation
    });
    v["apiVersion"] = json!(kind.api_version());
    v["kind"] = json!(kind.kind);
    from_value(
        reg.replace(kind, &m.namespace, &m.name, m.revision(), v)
            .await?,
    )
}

/// Deletes `old` if it is still at the cached revision. Returns the revision
/// of the deletion.
pub async fn delete<T: Resource>(reg: &Registry, old: &T) -> Result<i64, ApiError> {
    mark_deleted(reg, old, old).await
}

/// Deletes `old` like [`delete`], with `finalizer` added first, so it stays
/// (marked) until whoever owns that finalizer removes it. Returns the
/// revision of the write.
pub async fn delete_with_finalizer<T: Resource>(
    reg: &Registry,
    old: &T,
    finalizer: &str,
) -> Result<i64, ApiError> {
    let mut marked = old.clone();
    let f = &mut marked.meta_mut().finalizers;
    if !f.iter().any(|x| x == finalizer) {
        f.push(finalizer.to_string());
    }
    mark_deleted(reg, old, &marked).await
}

/// Writes `new` with a deletionTimestamp over `old` at its cached revision
/// (the registry removes it when no finalizer is left).
async fn mark_deleted<T: Resource>(reg: &Registry, old: &T, new: &T) -> Result<i64, ApiError> {
    let kind = kinds::of::<T>();
    let m = old.meta();
    let mut v = to_value(new)?;
    if v["metadata"]["deletionTimestamp"].is_null() {
        v["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    }
    let done = reg
        .replace(kind, &m.namespace, &m.name, m.revision(), v)
        .await?;
    Ok(
        crate::registry::str_at(&done, &["metadata", "resourceVersion"])
            .parse()
            .unwrap_or(0),
    )
}

/// Whether an error only means "decide again" (the object moved or went away).
pub fn is_stale(e: &ApiError) -> bool {
    e.is_conflict() || e.is_not_found()
}
