//! `keel apply -f FILE|DIR|-` (create or update every object), `keel delete`
//! and `keel scale`.

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::manifest::{self, object_path};
use super::{Target, kind_and_name};
use keel_proto::client::ClientError;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them, or `-` for stdin.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
}

/// Whether applying `want` over `have` would change what the user manages
/// (labels, annotations, spec and top-level data other than status).
fn same(want: &Value, have: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
            o.remove("apiVersion");
            o.remove("kind");
            let m = o.remove("metadata").unwrap_or(json!({}));
            o.insert(
                "labels".into(),
                m.get("labels").cloned().unwrap_or(json!({})),
            );
            o.insert(
                "annotations".into(),
                m.get("annotations").cloned().unwrap_or(json!({})),
            );
        }
        v
    };
    // Fields the server fills in (e.g. a Service's clusterIP) count as
    // unchanged when the manifest omits them: merge the manifest over them.
    let want = strip(want);
    let have = strip(have);
    let mut merged = have.clone();
    json_patch::merge(&mut merged, &want);
    merged == have
}

pub async fn apply(t: &Target, a: ApplyArgs) -> anyhow::Result<()> {
    let client = t.client();
    let docs = manifest::load(&a.file)?;
    let mut failed = 0;
    for d in docs {
        let ns = if d.kind.namespaced {
            d.namespace(&t.namespace)
        } else {
            String::new()
        };
        let label = format!("{}/{}", d.kind.resource(), d.name());
        if d.name().is_empty() {
            eprintln!(
                "error: {}: {label}: metadata.name is required for apply",
                d.source
            );
            failed += 1;
            continue;
        }
        let path = object_path(d.kind, &ns, d.name());
        let result = match client.get_value(&path).await {
            Ok(have) => {
                if same(&d.value, &have) {
                    Ok("unchanged")
                } else {
                    // Merge the manifest over the live object, so fields it
                    // does not mention (a pause, a server-set clusterIP) stay
                    // as they are; the server retries the merge if the object
                    // changes meanwhile (a controller updating its status).
                    let body = serde_json::to_vec(&d.value)?;
                    client
                        .call::<Value>(
                            Method::PATCH,
                            &path,
                            Some(("application/merge-patch+json", body)),
                        )
                        .await
                        .map(|_| "configured")
                }
            }
            Err(ClientError::Api(s)) if s.code == 404 && s.message.contains(d.name()) => {
                let body = serde_json::to_vec(&d.value)?;
                client
                    .call::<Value>(
                        Method::POST,
                        &manifest::collection_path(d.kind, &ns),
                        Some(("application/json", body)),
                    )
                    .await
                    .map(|_| "created")
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(what) => println!("{label} {what}"),
            Err(e) => {
                eprintln!("error: {}: {label}: {e}", d.source);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} object(s) failed");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// KIND/NAME, or KIND followed by NAME.
    pub what: Option<String>,
    pub name: Option<String>,
    /// Delete the objects of a manifest instead.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<String>,
}

pub async fn delete(t: &Target, a: DeleteArgs) -> anyhow::Result<()> {
    let client = t.client();
    let targets = match (&a.file, &a.what) {
        (Some(f), None) => manifest::load(f)?
            .into_iter()
            .map(|d| {
                let ns = if d.kind.namespaced {
                    d.namespace(&t.namespace)
                } else {
                    String::new()
                };
                (d.kind, ns, d.name().to_string())
            })
            .collect(),
        (None, Some(w)) => {
            let (k, n) = kind_and_name(w, a.name.as_deref())?;
            vec![(
                k,
                if k.namespaced {
                    t.namespace.clone()
                } else {
                    String::new()
                },
                n,
            )]
        }
        _ => anyhow::bail!("give KIND NAME, KIND/NAME or -f FILE"),
    };
    for (k, ns, name) in targets {
        client
            .call::<Value>(Method::DELETE, &object_path(k, &ns, &name), None)
            .await?;
        println!("{}/{name} deleted", k.resource());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// KIND/NAME (deployment or replicaset), or KIND followed by NAME.
    pub what: String,
    pub name: Option<String>,
    #[arg(long)]
    pub replicas: i64,
}

pub async fn scale(t: &Target, a: ScaleArgs) -> anyhow::Result<()> {
    let (k, name) = kind_and_name(&a.what, a.name.as_deref())?;
    if !matches!(k.kind, "Deployment" | "ReplicaSet") {
        anyhow::bail!("{} cannot be scaled", k.resource());
    }
    if a.replicas < 0 {
        anyhow::bail!("--replicas must be 0 or more");
    }
    let body = serde_json::to_vec(&json!({"spec": {"replicas": a.replicas}}))?;
    t.client()
        .call::<Value>(
            Method::PATCH,
            &object_path(k, &t.namespace, &name),
            Some(("application/merge-patch+json", body)),
        )
        .await?;
    println!("{}/{name} scaled", k.resource());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_ignores_server_fields() {
        let want = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "b"}},
            "spec": {"ports": [{"port": 80}]}});
        let mut have = want.clone();
        have["metadata"]["uid"] = json!("x");
        have["spec"]["clusterIP"] = json!("127.1.0.1");
        assert!(same(&want, &have));
        let mut changed = want.clone();
        changed["spec"]["ports"][0]["port"] = json!(81);
        assert!(!same(&changed, &have));
        let mut relabelled = want.clone();
        relabelled["metadata"]["labels"]["a"] = json!("c");
        assert!(!same(&relabelled, &have));
    }
}
