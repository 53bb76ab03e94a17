//! What only an admin may put into an object: hostPath volumes, which hand
//! a pod the node's files, and a `securityContext` running as user or
//! group 0 (root on the node with the process runtime) or as one of the
//! ids the process runtime keeps for pods (from `POD_UID_BASE`, which would
//! let one pod signal another). Checked on every create, replace and patch
//! of a kind with a pod spec (Pod, ReplicaSet, Deployment), on the object
//! as it would be written. An update that leaves these as stored (a label,
//! a scale, a status) is anyone's to make.

use keel_proto::api::core::POD_UID_BASE;
use serde_json::Value;

use crate::auth::{Identity, Role};
use crate::error::ApiError;

/// The pod spec `obj` carries (its own for a Pod, its template's for the
/// workload kinds).
fn pod_spec<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match kind {
        "Pod" => Some(&obj["spec"]),
        "ReplicaSet" | "Deployment" => Some(&obj["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// The volumes with a hostPath source of the pod spec `obj` carries.
pub fn host_path_volumes(kind: &str, obj: &Value) -> Vec<Value> {
    let Some(spec) = pod_spec(kind, obj) else {
        return Vec::new();
    };
    spec["volumes"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a user or group id is root or one the process runtime keeps.
fn reserved_id(v: &Value) -> bool {
    v.as_i64()
        .is_some_and(|id| id == 0 || id >= i64::from(POD_UID_BASE))
}

/// Where the pod spec of `obj` asks to run as a reserved id
/// (`spec.securityContext.runAsUser=0`, `containers[web]...`).
pub fn reserved_identities(kind: &str, obj: &Value) -> Vec<String> {
    let Some(spec) = pod_spec(kind, obj) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut scan = |at: String, sc: &Value| {
        for f in ["runAsUser", "runAsGroup"] {
            if reserved_id(&sc[f]) {
                found.push(format!("{at}.securityContext.{f}={}", sc[f]));
            }
        }
    };
    scan("spec".into(), &spec["securityContext"]);
    for c in spec["containers"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        scan(format!("containers[{name}]"), &c["securityContext"]);
    }
    found
}

/// Refuses (403) a write by a non-admin `caller` whose object `new` has
/// hostPath volumes or reserved run-as ids that `old` (the stored object,
/// for an update) does not have exactly. No caller means the API runs
/// without authentication.
pub fn check(
    kind: &str,
    name: &str,
    new: &Value,
    old: Option<&Value>,
    caller: Option<&Identity>,
) -> Result<(), ApiError> {
    let Some(id) = caller.filter(|id| id.role != Role::Admin) else {
        return Ok(());
    };
    let resource = format!("{}s", kind.to_lowercase());
    let forbidden = |what: String| {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{resource} \"{name}\" is forbidden: user \"{}\" (role {}) cannot use {what}",
                id.user, id.role
            ),
        )
    };
    let wanted = host_path_volumes(kind, new);
    if !wanted.is_empty() && old.is_none_or(|o| host_path_volumes(kind, o) != wanted) {
        let names: Vec<&str> = wanted.iter().filter_map(|v| v["name"].as_str()).collect();
        return Err(forbidden(format!(
            "hostPath volumes ({}): they reach the node's files, so only an admin may ask for them",
            names.join(", ")
        )));
    }
    let ids = reserved_identities(kind, new);
    if !ids.is_empty() && old.is_none_or(|o| reserved_identities(kind, o) != ids) {
        return Err(forbidden(format!(
            "{}: user and group 0 (root on the node) and ids from {POD_UID_BASE} up (the ids pods are isolated by) are for admins only",
            ids.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(role: Role) -> Identity {
        Identity {
            user: "u".into(),
            role,
        }
    }

    fn pod(volumes: Value) -> Value {
        json!({"spec": {"volumes": volumes, "containers": [{"name": "c"}]}})
    }

    #[test]
    fn only_an_admin_adds_host_paths_and_anyone_keeps_them() {
        let hp = pod(json!([{"name": "root", "hostPath": {"path": "/"}}]));
        let plain = pod(json!([{"name": "d", "emptyDir": {}}]));
        let edit = who(Role::Edit);
        // Creates.
        let e = check("Pod", "p", &hp, None, Some(&edit)).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("hostPath volumes (root)"),
            "{}",
            e.message
        );
        assert!(check("Pod", "p", &hp, None, Some(&who(Role::Admin))).is_ok());
        assert!(check("Pod", "p", &plain, None, Some(&edit)).is_ok());
        assert!(check("Pod", "p", &hp, None, None).is_ok());
        // Updates: keeping the stored hostPath volumes is fine, adding or
        // changing one is not.
        assert!(check("Pod", "p", &hp, Some(&hp), Some(&edit)).is_ok());
        assert!(check("Pod", "p", &hp, Some(&plain), Some(&edit)).is_err());
        let moved = pod(json!([{"name": "root", "hostPath": {"path": "/etc"}}]));
        assert!(check("Pod", "p", &moved, Some(&hp), Some(&edit)).is_err());
        // A template's volumes count for the workload kinds.
        let deploy = json!({"spec": {"template": {"spec": hp["spec"].clone()}}});
        assert!(check("Deployment", "d", &deploy, None, Some(&edit)).is_err());
        assert!(check("ReplicaSet", "r", &deploy, None, Some(&edit)).is_err());
        assert!(check("Service", "s", &deploy, None, Some(&edit)).is_ok());
    }

    #[test]
    fn only_an_admin_runs_pods_as_root_or_as_a_pod_uid() {
        let edit = who(Role::Edit);
        let as_user = |pod_level: Value, ctr: Value| {
            json!({"spec": {"securityContext": pod_level,
                "containers": [{"name": "web", "securityContext": ctr}]}})
        };
        let root = as_user(json!({"runAsUser": 0}), Value::Null);
        let e = check("Pod", "p", &root, None, Some(&edit)).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("spec.securityContext.runAsUser=0"),
            "{}",
            e.message
        );
        let group = as_user(Value::Null, json!({"runAsGroup": 0}));
        let e = check("Pod", "p", &group, None, Some(&edit)).unwrap_err();
        assert!(
            e.message
                .contains("containers[web].securityContext.runAsGroup=0"),
            "{}",
            e.message
        );
        let pod_uid = as_user(json!({"runAsUser": POD_UID_BASE + 5}), Value::Null);
        assert!(check("Pod", "p", &pod_uid, None, Some(&edit)).is_err());
        let plain = as_user(json!({"runAsUser": 1000, "runAsGroup": 1000}), Value::Null);
        assert!(check("Pod", "p", &plain, None, Some(&edit)).is_ok());
        assert!(check("Pod", "p", &root, None, Some(&who(Role::Admin))).is_ok());
        // Keeping what an admin set is anyone's; changing it is not.
        assert!(check("Pod", "p", &root, Some(&root), Some(&edit)).is_ok());
        assert!(check("Pod", "p", &root, Some(&plain), Some(&edit)).is_err());
    }
}
