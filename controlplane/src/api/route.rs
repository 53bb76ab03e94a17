//! Kubernetes REST paths (`/api/v1/namespaces/{ns}/pods/{name}/status`,
//! `/apis/apps/v1/deployments`, ...) parsed into what they address.

use crate::error::ApiError;
use crate::kinds::{self, Kind};

/// What a request path addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: &'static Kind,
    /// The namespace from the path (None: all namespaces, or cluster-scoped).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

fn unknown(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource (no resource at {path})"),
    )
}

/// Parses a path under `/api` or `/apis`.
pub fn parse(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(unknown(path)),
    };
    if version != "v1" {
        return Err(unknown(path));
    }
    let lookup = |plural: &str| kinds::by_path(group, plural).ok_or_else(|| unknown(path));
    let t = |kind, ns: Option<&str>, name: Option<&str>, status| Target {
        kind,
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        status,
    };
    let target = match rest {
        [plural] => t(lookup(plural)?, None, None, false),
        ["namespaces", ns, "status"] if group.is_empty() => {
            t(lookup("namespaces")?, None, Some(ns), true)
        }
        ["namespaces", ns, plural] => t(lookup(plural)?, Some(ns), None, false),
        ["namespaces", ns, plural, name] => t(lookup(plural)?, Some(ns), Some(name), false),
        ["namespaces", ns, plural, name, "status"] => {
            t(lookup(plural)?, Some(ns), Some(name), true)
        }
        [plural, name] => t(lookup(plural)?, None, Some(name), false),
        [plural, name, "status"] => t(lookup(plural)?, None, Some(name), true),
        _ => return Err(unknown(path)),
    };
    if target.kind.namespaced && target.name.is_some() && target.namespace.is_none() {
        return Err(unknown(path));
    }
    if !target.kind.namespaced && target.namespace.is_some() {
        return Err(unknown(path));
    }
    if target.status && !target.kind.has_status {
        return Err(unknown(path));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let t = parse("/api/v1/namespaces/default/pods/web-1/status").unwrap();
        assert_eq!(
            (
                t.kind.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            ("pods", Some("default"), Some("web-1"), true)
        );
        let t = parse("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (t.kind.kind, t.namespace, t.name),
            ("Deployment", None, None)
        );
        let t = parse("/api/v1/namespaces/prod").unwrap();
        assert_eq!(
            (t.kind.kind, t.name.as_deref()),
            ("Namespace", Some("prod"))
        );
        let t = parse("/api/v1/namespaces/prod/status").unwrap();
        assert!(t.status && t.kind.kind == "Namespace");
        let t = parse("/api/v1/nodes/n1").unwrap();
        assert_eq!(t.name.as_deref(), Some("n1"));
        for bad in [
            "/api/v1/widgets",
            "/api/v2/pods",
            "/apis/apps/v1/pods",
            "/api/v1/pods/x",
            "/api/v1/namespaces/a/nodes",
        ] {
            assert_eq!(parse(bad).unwrap_err().code, 404, "{bad}");
        }
    }
}
