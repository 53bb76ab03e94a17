//! What only an admin may put into an object: hostPath volumes, which hand
//! a pod the node's files. Checked on every create, replace and patch of a
//! kind with a pod spec (Pod, ReplicaSet, Deployment), on the object as it
//! would be written. An update that leaves the hostPath volumes as stored
//! (a label, a scale, a status) is anyone's to make.

use serde_json::Value;

use crate::auth::{Identity, Role};
use crate::error::ApiError;

/// The volumes with a hostPath source of the pod spec `obj` carries (its
/// own for a Pod, its template's for the workload kinds).
pub fn host_path_volumes(kind: &str, obj: &Value) -> Vec<Value> {
    let spec = match kind {
        "Pod" => &obj["spec"],
        "ReplicaSet" | "Deployment" => &obj["spec"]["template"]["spec"],
        _ => return Vec::new(),
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

/// Refuses (403) a write by a non-admin `caller` whose object `new` has
/// hostPath volumes that `old` (the stored object, for an update) does
/// not have exactly. No caller means the API runs without authentication.
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
    let wanted = host_path_volumes(kind, new);
    if wanted.is_empty() || old.is_some_and(|o| host_path_volumes(kind, o) == wanted) {
        return Ok(());
    }
    let names: Vec<&str> = wanted.iter().filter_map(|v| v["name"].as_str()).collect();
    let resource = format!("{}s", kind.to_lowercase());
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "{resource} \"{name}\" is forbidden: user \"{}\" (role {}) cannot use hostPath volumes ({}): they reach the node's files, so only an admin may ask for them",
            id.user,
            id.role,
            names.join(", ")
        ),
    ))
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
}
