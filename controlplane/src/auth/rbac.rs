//! Role-based access control: the built-in roles `admin`, `edit`, `view` and
//! `node`, checked per verb and resource, with node restriction (a node may
//! change only its own Node, its own Lease and the status of pods bound to it).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and cluster-scoped objects.
    Admin,
    /// Read everything; write namespaced workload objects (not nodes, namespaces or tokens).
    Edit,
    /// Read everything except tokens.
    View,
    /// An agent: read what it runs; write only its own Node, its own Lease and
    /// the status of pods bound to it; create events.
    Node,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "edit" => Ok(Role::Edit),
            "view" => Ok(Role::View),
            "node" => Ok(Role::Node),
            _ => Err(format!("unknown role {s:?}: use admin, edit, view or node")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Edit => "edit",
            Role::View => "view",
            Role::Node => "node",
        })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

impl Identity {
    /// The node name of a `node:<name>` identity.
    pub fn node_name(&self) -> Option<&str> {
        if self.role == Role::Node {
            self.user.strip_prefix("node:")
        } else {
            None
        }
    }
}

/// What a request wants to do.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// get, list, watch, create, update, patch or delete.
    pub verb: &'a str,
    /// The resource's plural (`pods`), or `tokens`.
    pub resource: &'a str,
    /// The API group ("" for core).
    pub group: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `status`, `log`, or "".
    pub subresource: &'a str,
}

const READ: [&str; 3] = ["get", "list", "watch"];
/// Resources only admins may touch, even to read: tokens, the audit log,
/// node revocations and node certificates (a node renews its own, below).
const ADMIN_ONLY: [&str; 4] = ["tokens", "audit", "revoked-nodes", "certificates"];
const CLUSTER_SCOPED_WRITES: [&str; 2] = ["nodes", "namespaces"];

/// Allows or denies `access` by `id`; `stored` is the object as stored (for
/// node restriction on pods), `body` the object sent (for creates).
/// A denial names the permission that is missing.
pub fn authorize(id: &Identity, a: &Access, stored: Option<&Value>) -> Result<(), String> {
    let read = READ.contains(&a.verb);
    let allowed = match id.role {
        Role::Admin => true,
        Role::View => read && !ADMIN_ONLY.contains(&a.resource),
        Role::Edit => {
            !ADMIN_ONLY.contains(&a.resource)
                && (read || !CLUSTER_SCOPED_WRITES.contains(&a.resource))
        }
        Role::Node => node_may(id, a, stored, read),
    };
    if allowed {
        return Ok(());
    }
    let what = if a.subresource.is_empty() {
        format!("resource \"{}\"", a.resource)
    } else {
        format!("resource \"{}/{}\"", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut msg = format!(
        "{} \"{}\" (role {}) cannot {} {what} in API group \"{}\" {scope}",
        if id.role == Role::Node {
            "node"
        } else {
            "user"
        },
        id.user,
        id.role,
        a.verb,
        a.group,
    );
    if let Some(n) = id.node_name() {
        msg.push_str(&format!(
            ": node {n} may only change its own Node and Lease and the status of pods bound to it"
        ));
    }
    Err(msg)
}

fn node_may(id: &Identity, a: &Access, stored: Option<&Value>, read: bool) -> bool {
    let Some(me) = id.node_name() else {
        return false;
    };
    match a.resource {
        // A node renews its own certificate, no other.
        "certificates" => a.verb == "create" && a.name == me,
        r if ADMIN_ONLY.contains(&r) => false,
        // Agents read what they run, services and endpoints for the proxy,
        // and nodes, namespaces and leases.
        _ if read => true,
        "nodes" => a.name == me && a.verb != "delete",
        "leases" => a.namespace == "kube-node-lease" && a.name == me && a.verb != "delete",
        "pods" => {
            a.subresource == "status"
                && matches!(a.verb, "update" | "patch")
                && stored.is_some_and(|p| p["spec"]["nodeName"].as_str() == Some(me))
        }
        "events" => a.verb == "create",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(user: &str, role: Role) -> Identity {
        Identity {
            user: user.into(),
            role,
        }
    }

    fn access<'a>(
        verb: &'a str,
        resource: &'a str,
        ns: &'a str,
        name: &'a str,
        sub: &'a str,
    ) -> Access<'a> {
        Access {
            verb,
            resource,
            group: "",
            namespace: ns,
            name,
            subresource: sub,
        }
    }

    #[test]
    fn view_reads_but_cannot_write() {
        let v = id("alice", Role::View);
        assert!(authorize(&v, &access("list", "pods", "default", "", ""), None).is_ok());
        let e = authorize(
            &v,
            &access("create", "deployments", "default", "", ""),
            None,
        )
        .unwrap_err();
        assert!(e.contains("cannot create resource \"deployments\""), "{e}");
        assert!(authorize(&v, &access("list", "tokens", "", "", ""), None).is_err());
    }

    #[test]
    fn edit_writes_workloads_not_nodes() {
        let e = id("bob", Role::Edit);
        assert!(
            authorize(
                &e,
                &access("create", "deployments", "default", "", ""),
                None
            )
            .is_ok()
        );
        assert!(authorize(&e, &access("delete", "nodes", "", "n1", ""), None).is_err());
        assert!(authorize(&e, &access("create", "tokens", "", "", ""), None).is_err());
        assert!(
            authorize(
                &id("root", Role::Admin),
                &access("create", "tokens", "", "", ""),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn nodes_change_only_their_own_objects() {
        let n1 = id("node:n1", Role::Node);
        let mine = json!({"spec": {"nodeName": "n1"}});
        let theirs = json!({"spec": {"nodeName": "n2"}});
        assert!(
            authorize(
                &n1,
                &access("update", "pods", "default", "p", "status"),
                Some(&mine)
            )
            .is_ok()
        );
        let e = authorize(
            &n1,
            &access("update", "pods", "default", "p", "status"),
            Some(&theirs),
        )
        .unwrap_err();
        assert!(
            e.contains("pods/status") && e.contains("only change its own"),
            "{e}"
        );
        assert!(
            authorize(
                &n1,
                &access("update", "pods", "default", "p", ""),
                Some(&mine)
            )
            .is_err()
        );
        assert!(authorize(&n1, &access("update", "nodes", "", "n1", "status"), None).is_ok());
        assert!(authorize(&n1, &access("update", "nodes", "", "n2", "status"), None).is_err());
        assert!(
            authorize(
                &n1,
                &access("update", "leases", "kube-node-lease", "n1", ""),
                None
            )
            .is_ok()
        );
        assert!(
            authorize(
                &n1,
                &access("update", "leases", "kube-node-lease", "n2", ""),
                None
            )
            .is_err()
        );
        assert!(
            authorize(
                &n1,
                &access("create", "deployments", "default", "", ""),
                None
            )
            .is_err()
        );
        assert!(authorize(&n1, &access("watch", "pods", "", "", ""), None).is_ok());
    }
}
