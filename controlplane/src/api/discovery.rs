//! API discovery as kubectl reads it, generated from the kinds table:
//! `/api` (APIVersions), `/apis` (APIGroupList), `/apis/{group}` (APIGroup)
//! and `/api/v1`, `/apis/{group}/{version}` (APIResourceList with every
//! served resource, its verbs, scope, kind, short names, categories and
//! subresources). Clients that ask for the aggregated format
//! (`as=APIGroupDiscoveryList`) get the plain one with a plain
//! `application/json` content type, from which client-go falls back to
//! these per-group documents.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::route::{Discovery, Sub};
use crate::error::ApiError;
use crate::kinds::{KINDS, Kind};

/// The group of SelfSubjectAccessReview, served beside the kinds.
pub const AUTHZ_GROUP: &str = "authorization.k8s.io";

/// The verbs every kind serves on its collection and objects.
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut set: BTreeSet<(&str, &str)> = KINDS.iter().map(|k| (k.group, k.version)).collect();
    set.insert((AUTHZ_GROUP, "v1"));
    set.into_iter().collect()
}

fn group_doc(group: &str) -> Value {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

fn resource(k: &Kind) -> Value {
    let mut r = json!({
        "name": k.plural,
        "singularName": k.kind.to_ascii_lowercase(),
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": VERBS,
    });
    if !k.short.is_empty() {
        r["shortNames"] = json!(k.short);
    }
    if k.in_all {
        r["categories"] = json!(["all"]);
    }
    r
}

fn subresource(k: &Kind, s: Sub) -> Value {
    let (verbs, kind, group, version): (&[&str], &str, &str, &str) = match s {
        Sub::Status => (&["get", "patch", "update"], k.kind, "", ""),
        Sub::Log => (&["get"], k.kind, "", ""),
        Sub::Scale => (&["get", "patch", "update"], "Scale", "autoscaling", "v1"),
        Sub::Eviction => (&["create"], "Eviction", "policy", "v1"),
        Sub::Exec => (&["create", "get"], "PodExecOptions", "", ""),
        Sub::PortForward => (&["create", "get"], "PodPortForwardOptions", "", ""),
    };
    let mut r = json!({
        "name": format!("{}/{}", k.plural, s.as_str()),
        "singularName": "",
        "namespaced": k.namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if !group.is_empty() {
        r["group"] = json!(group);
        r["version"] = json!(version);
    }
    r
}

fn resources(group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    if (group, version) == (AUTHZ_GROUP, "v1") {
        list.push(json!({
            "name": "selfsubjectaccessreviews",
            "singularName": "selfsubjectaccessreview",
            "namespaced": false,
            "kind": "SelfSubjectAccessReview",
            "verbs": ["create"],
        }));
    }
    for k in KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        list.push(resource(k));
        for s in [
            Sub::Status,
            Sub::Log,
            Sub::Scale,
            Sub::Eviction,
            Sub::Exec,
            Sub::PortForward,
        ] {
            if s.served_by(k) {
                list.push(subresource(k, s));
            }
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": list,
    })
}

/// The document `d` names.
pub fn document(d: &Discovery) -> Result<Value, ApiError> {
    Ok(match d {
        Discovery::Core => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        }),
        Discovery::Groups => {
            let mut groups: Vec<&str> = group_versions()
                .into_iter()
                .map(|(g, _)| g)
                .filter(|g| !g.is_empty())
                .collect();
            groups.dedup();
            json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": groups.into_iter().map(group_doc).collect::<Vec<_>>(),
            })
        }
        Discovery::Group(g) => group_doc(g),
        Discovery::Resources { group, version } => resources(group, version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_kind_with_short_names_and_subresources() {
        let core = document(&Discovery::Resources {
            group: "".into(),
            version: "v1".into(),
        })
        .unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "pods",
            "pods/status",
            "pods/log",
            "nodes",
            "namespaces",
            "services",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let pods = &core["resources"][names.iter().position(|n| *n == "pods").unwrap()];
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["namespaced"], true);
        let apps = document(&Discovery::Resources {
            group: "apps".into(),
            version: "v1".into(),
        })
        .unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(
            (scale["kind"].as_str(), scale["group"].as_str()),
            (Some("Scale"), Some("autoscaling"))
        );
        let groups = document(&Discovery::Groups).unwrap();
        let gs: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(gs, ["apps", "authorization.k8s.io", "coordination.k8s.io"]);
        assert_eq!(
            groups["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
    }
}
