//! Reading fields of objects as untyped JSON (the registry, the API and the
//! strategies all handle objects as `serde_json::Value`).

use serde_json::Value;

/// The string field at `path` (e.g. `["metadata", "name"]`), or "".
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, p| v.get(p))
        .and_then(Value::as_str)
        .unwrap_or("")
}
