//! `/openapi/v3`: the OpenAPI v3 index and one document per group version,
//! generated from the kinds table. They describe each kind's paths and
//! operations (with `x-kubernetes-group-version-kind` and the
//! `fieldValidation` query parameter), which is what kubectl reads to learn
//! that the server validates fields itself (`kubectl apply`, `create`,
//! `replace` then send `fieldValidation=Strict` instead of validating client
//! side). Each document's `components.schemas` holds the JSON schemas of its
//! kinds and their parts, derived from the API types (their serde shapes and
//! doc comments) by schemars, each kind's marked with
//! `x-kubernetes-group-version-kind`: what `kubectl explain` reads.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::kinds::{KINDS, Kind};

/// The path of a group version's document (`api/v1`, `apis/apps/v1`).
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is.
pub fn index() -> Value {
    let gvs: BTreeSet<(&str, &str)> = KINDS.iter().map(|k| (k.group, k.version)).collect();
    let mut paths = Map::new();
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

fn operation(k: &Kind, action: &str, write: bool) -> Value {
    let mut params = vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
    if write {
        for p in ["dryRun", "fieldManager", "fieldValidation"] {
            params.push(json!({"name": p, "in": "query", "schema": {"type": "string"}}));
        }
    }
    json!({
        "operationId": format!("{action}{}", k.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
    })
}

/// The schemas of the kinds of `path`'s group version and of everything
/// they refer to, by name, each kind's marked with its group, version and
/// kind.
fn schemas(path: &str) -> Map<String, Value> {
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    let kinds: Vec<&Kind> = KINDS
        .iter()
        .filter(|k| gv_path(k.group, k.version) == path)
        .collect();
    for k in &kinds {
        (k.schema)(&mut g);
    }
    let mut defs = g.take_definitions(true);
    for d in defs.values_mut() {
        unnull(d);
    }
    for k in kinds {
        if let Some(Value::Object(d)) = defs.get_mut(k.kind) {
            d.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": k.group, "version": k.version, "kind": k.kind}]),
            );
            d.entry("description").or_insert_with(|| {
                json!(format!(
                    "{} ({}), as Kubernetes has it; fields Keel does not serve are refused.",
                    k.kind,
                    k.api_version()
                ))
            });
        }
    }
    defs
}

/// Rewrites an optional reference, which schemars writes as `anyOf` the
/// reference and `null`, as Kubernetes' documents have it (`allOf` the
/// reference), the form `kubectl explain` follows into the referenced
/// schema.
fn unnull(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(any)) = m.get("anyOf")
                && any.len() == 2
                && let Some(r) = any.iter().find(|s| s.get("$ref").is_some())
                && any.iter().any(|s| s["enum"] == json!([null]))
            {
                let r = r.clone();
                m.remove("anyOf");
                m.insert("allOf".into(), json!([r]));
            }
            m.values_mut().for_each(unnull);
        }
        Value::Array(a) => a.iter_mut().for_each(unnull),
        _ => {}
    }
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`; None for others.
pub fn document(path: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut found = false;
    for k in KINDS.iter() {
        if gv_path(k.group, k.version) != path {
            continue;
        }
        found = true;
        let base = format!("/{path}");
        let coll = if k.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", k.plural)
        } else {
            format!("{base}/{}", k.plural)
        };
        paths.insert(
            coll.clone(),
            json!({
                "get": operation(k, "list", false),
                "post": operation(k, "post", true),
                "delete": operation(k, "deletecollection", false),
            }),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": operation(k, "get", false),
                "put": operation(k, "put", true),
                "patch": operation(k, "patch", true),
                "delete": operation(k, "delete", false),
            }),
        );
    }
    found.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Keel", "version": env!("CARGO_PKG_VERSION")},
            "paths": paths,
            "components": {"schemas": schemas(path)},
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_say_patch_takes_field_validation() {
        let i = index();
        assert!(
            i["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1")
        );
        let d = document("apis/apps/v1").unwrap();
        let op = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(document("api/v1").unwrap()["paths"]["/api/v1/nodes/{name}"].is_object());
        assert!(document("apis/nope/v1").is_none());
    }

    #[test]
    fn each_kind_has_a_schema_with_its_fields_and_group_version_kind() {
        let d = document("api/v1").unwrap();
        let s = &d["components"]["schemas"];
        let pod = &s["Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"][0],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        for f in ["apiVersion", "kind", "metadata", "spec", "status"] {
            assert!(pod["properties"][f].is_object(), "Pod.{f}: {pod}");
        }
        // Parts are referenced and defined once, with their doc comments.
        assert!(
            s["PodSpec"]["properties"]["containers"].is_object(),
            "{}",
            s["PodSpec"]
        );
        assert_eq!(
            s["Container"]["properties"]["securityContext"]["allOf"][0]["$ref"],
            "#/components/schemas/SecurityContext"
        );
        assert!(
            s["SecurityContext"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("runAsUser"))
        );
        let apps = document("apis/apps/v1").unwrap();
        assert_eq!(
            apps["components"]["schemas"]["Deployment"]["x-kubernetes-group-version-kind"][0]["group"],
            "apps"
        );
        assert!(apps["components"]["schemas"]["Pod"].is_null());
    }
}
