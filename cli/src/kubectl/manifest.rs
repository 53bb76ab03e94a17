//! Manifests from files, directories or stdin: YAML (several documents per
//! file) or JSON, each resolved to the kind and path it is served at.

use std::path::Path;

use anyhow::{Context, bail};
use keel_controlplane::kinds::{self, Kind};
use serde::Deserialize;
use serde_json::Value;

/// One object from a manifest.
pub struct Doc {
    pub kind: &'static Kind,
    pub value: Value,
    /// Where it came from, for messages.
    pub source: String,
}

impl Doc {
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    pub fn namespace(&self, default_ns: &str) -> String {
        match self.value["metadata"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => default_ns.to_string(),
        }
    }
}

/// Reads every document from `-` (stdin), a file, or the `.yaml`, `.yml`
/// and `.json` files of a directory (sorted by name).
pub fn load(path: &str) -> anyhow::Result<Vec<Doc>> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return parse(&s, "stdin");
    }
    let p = Path::new(path);
    if p.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                matches!(
                    f.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            out.extend(load(&f.to_string_lossy())?);
        }
        return Ok(out);
    }
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {path}"))?;
    parse(&s, path)
}

/// Parses YAML documents (JSON is YAML) and resolves their kinds.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Vec<Doc>> {
    let mut out = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(d)
            .with_context(|| format!("{source}: document {}: malformed YAML", i + 1))?;
        if v.is_null() {
            continue;
        }
        if v["kind"].as_str() == Some("List") {
            for item in v["items"].as_array().cloned().unwrap_or_default() {
                out.push(resolve(item, source)?);
            }
            continue;
        }
        out.push(resolve(v, source)?);
    }
    if out.is_empty() {
        bail!("{source}: no objects found");
    }
    Ok(out)
}

fn resolve(v: Value, source: &str) -> anyhow::Result<Doc> {
    let api = v["apiVersion"].as_str().unwrap_or("");
    let kind = v["kind"].as_str().unwrap_or("");
    if api.is_empty() || kind.is_empty() {
        bail!("{source}: every object needs apiVersion and kind");
    }
    let k = kinds::by_kind(api, kind)
        .with_context(|| format!("{source}: no kind {kind:?} is served for version {api:?}"))?;
    Ok(Doc {
        kind: k,
        value: v,
        source: source.to_string(),
    })
}

/// The REST path of a kind's collection in `ns`.
pub fn collection_path(k: &Kind, ns: &str) -> String {
    let g = keel_proto::client::group_prefix(&k.api_version());
    if k.namespaced && !ns.is_empty() {
        format!("{g}/namespaces/{ns}/{}", k.plural)
    } else {
        format!("{g}/{}", k.plural)
    }
}

/// The REST path of one object.
pub fn object_path(k: &Kind, ns: &str, name: &str) -> String {
    format!("{}/{name}", collection_path(k, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_rejects_unknown_kinds() {
        let docs = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
            "t",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].kind.plural, "deployments");
        assert!(parse("apiVersion: v1\nkind: Widget\n", "t").is_err());
        assert!(parse("kind: [", "t").is_err());
        assert_eq!(
            object_path(docs[1].kind, "prod", "d"),
            "/apis/apps/v1/namespaces/prod/deployments/d"
        );
    }
}
