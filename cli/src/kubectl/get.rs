//! `keel get` (tables, `-o wide|yaml|json`, `-l`, `-w`) and `keel describe`.

use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::Value;

use super::manifest::{collection_path, object_path};
use super::table;
use super::{Target, kind};
use keel_proto::client::encode;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kind: pods, deployments, replicasets, nodes, services, endpoints, events, namespaces, leases (or a short name).
    pub kind: String,
    /// One object's name.
    pub name: Option<String>,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector (`spec.nodeName=n1`).
    #[arg(long)]
    pub field_selector: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// After listing, keep printing changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

fn print_objects(
    kind: &str,
    items: &[Value],
    out: Option<Output>,
    all_ns: bool,
    header: bool,
) -> anyhow::Result<()> {
    // A listing comes out as one `List`, as kubectl prints it; watch events
    // (no header) one object at a time.
    let list = || serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    match out {
        Some(Output::Json) if header => println!("{}", serde_json::to_string_pretty(&list())?),
        Some(Output::Yaml) if header => print!("{}", serde_yaml_ng::to_string(&list())?),
        Some(Output::Json) => {
            for i in items {
                println!("{}", serde_json::to_string_pretty(i)?);
            }
        }
        Some(Output::Yaml) => {
            for i in items {
                println!("---\n{}", serde_yaml_ng::to_string(i)?.trim_end());
            }
        }
        _ => {
            let wide = out == Some(Output::Wide);
            let mut cols: Vec<String> = table::columns(kind, wide)
                .iter()
                .map(|c| c.to_string())
                .collect();
            let mut rows: Vec<Vec<String>> =
                items.iter().map(|o| table::row(kind, o, wide)).collect();
            if all_ns {
                cols.insert(0, "NAMESPACE".into());
                for (r, o) in rows.iter_mut().zip(items) {
                    r.insert(
                        0,
                        o["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
            }
            let t = table::render(&cols, &rows);
            let t = if header {
                t
            } else {
                t.lines().skip(1).collect::<Vec<_>>().join("\n")
            };
            if !t.is_empty() {
                println!("{t}");
            }
        }
    }
    Ok(())
}

pub async fn get(t: &Target, a: GetArgs) -> anyhow::Result<()> {
    let k = kind(&a.kind)?;
    let client = t.client();
    let ns = if !k.namespaced || a.all_namespaces {
        String::new()
    } else {
        t.namespace.clone()
    };
    let all_ns = k.namespaced && a.all_namespaces;
    if let (Some(name), false) = (&a.name, a.watch) {
        let o = client.get_value(&object_path(k, &ns, name)).await?;
        if a.output == Some(Output::Json) {
            println!("{}", serde_json::to_string_pretty(&o)?);
        } else if a.output == Some(Output::Yaml) {
            print!("{}", serde_yaml_ng::to_string(&o)?);
        } else {
            print_objects(k.kind, &[o], a.output, false, true)?;
        }
        return Ok(());
    }
    let mut q = Vec::new();
    if let Some(l) = &a.selector {
        q.push(format!("labelSelector={}", encode(l)));
    }
    let mut fs = a.field_selector.clone().unwrap_or_default();
    if let Some(n) = &a.name {
        fs = if fs.is_empty() {
            format!("metadata.name={n}")
        } else {
            format!("{fs},metadata.name={n}")
        };
    }
    if !fs.is_empty() {
        q.push(format!("fieldSelector={}", encode(&fs)));
    }
    let mut path = collection_path(k, &ns);
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let list = client.get_value(&path).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() && !a.watch && a.output.is_none() {
        if ns.is_empty() {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {ns} namespace.");
        }
    } else {
        print_objects(k.kind, &items, a.output, all_ns, true)?;
    }
    if a.watch {
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut w = Box::pin(client.watch(&path, &rv).await?);
        while let Some(ev) = w.next().await {
            let ev = ev?;
            if ev.type_ == "ERROR" {
                anyhow::bail!(
                    "watch ended: {}",
                    ev.object["message"].as_str().unwrap_or("")
                );
            }
            print_objects(k.kind, &[ev.object], a.output, all_ns, false)?;
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
}

pub async fn describe(t: &Target, a: DescribeArgs) -> anyhow::Result<()> {
    let k = kind(&a.kind)?;
    let ns = if k.namespaced {
        t.namespace.clone()
    } else {
        String::new()
    };
    let client = t.client();
    let o = client.get_value(&object_path(k, &ns, &a.name)).await?;
    println!("Name:         {}", a.name);
    if k.namespaced {
        println!("Namespace:    {ns}");
    }
    println!("Kind:         {}", k.kind);
    let m = &o["metadata"];
    for (title, field) in [("Labels", "labels"), ("Annotations", "annotations")] {
        let pairs: Vec<String> = m[field]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!(
            "{:<14}{}",
            format!("{title}:"),
            if pairs.is_empty() {
                "<none>".into()
            } else {
                pairs.join("\n              ")
            }
        );
    }
    println!(
        "Created:      {}",
        m["creationTimestamp"].as_str().unwrap_or("")
    );
    if let Some(owner) = m["ownerReferences"].as_array().and_then(|o| o.first()) {
        println!(
            "Controlled By: {}/{}",
            owner["kind"].as_str().unwrap_or(""),
            owner["name"].as_str().unwrap_or("")
        );
    }
    for part in ["spec", "status"] {
        if let Some(v) = o.get(part).filter(|v| !v.is_null()) {
            println!("{}:", if part == "spec" { "Spec" } else { "Status" });
            for line in serde_yaml_ng::to_string(v)?.lines() {
                println!("  {line}");
            }
        }
    }
    // Events about this object, newest last.
    let events_ns = if k.namespaced {
        ns.clone()
    } else {
        "default".into()
    };
    let evs = client
        .get_value(&format!("/api/v1/namespaces/{events_ns}/events"))
        .await
        .map(|l| l["items"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let mine: Vec<Value> = evs
        .into_iter()
        .filter(|e| {
            e["involvedObject"]["name"] == a.name.as_str() && e["involvedObject"]["kind"] == k.kind
        })
        .collect();
    println!("Events:");
    if mine.is_empty() {
        println!("  <none>");
    } else {
        let rows: Vec<Vec<String>> = mine
            .iter()
            .map(|e| {
                vec![
                    e["type"].as_str().unwrap_or("").to_string(),
                    e["reason"].as_str().unwrap_or("").to_string(),
                    table::age(e["lastTimestamp"].as_str().unwrap_or("")),
                    e["message"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        let hdr = ["TYPE", "REASON", "AGE", "MESSAGE"].map(String::from);
        for l in table::render(&hdr, &rows).lines() {
            println!("  {l}");
        }
    }
    Ok(())
}
