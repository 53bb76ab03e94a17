//! Rows and columns of each kind as `kubectl get` prints them: the API's
//! server-side `Table` (`Accept: ...;as=Table;g=meta.k8s.io;v=v1`) and
//! `keel get` both read them from here, so the two print the same.

use keel_proto::api::meta::parse_rfc3339;
use serde_json::{Value, json};

use crate::kinds::Kind;

/// How long ago an RFC 3339 timestamp was, as Kubernetes prints ages
/// (`45s`, `4m30s`, `12m`, `5h20m`, `30h`, `3d4h`, `120d`, `2y30d`).
pub fn age(ts: &str) -> String {
    let Some(t) = parse_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    human_duration(now - t)
}

/// Kubernetes' `duration.HumanDuration` of a number of seconds.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        format!("{}y{}d", h / 24 / 365, (h / 24) % 365)
    } else {
        format!("{}y", h / 24 / 365)
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    crate::registry::str_at(v, path)
}

fn n(v: &Value, path: &[&str]) -> i64 {
    path.iter()
        .try_fold(v, |v, p| v.get(p))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

fn condition(v: &Value, path: &[&str], type_: &str) -> Option<String> {
    path.iter()
        .try_fold(v, |v, p| v.get(p))?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
}

/// The pod's STATUS column: a waiting/terminated reason when there is one, else the phase.
fn pod_status(p: &Value) -> String {
    if !s(p, &["metadata", "deletionTimestamp"]).is_empty() {
        return "Terminating".into();
    }
    for c in p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for st in ["waiting", "terminated"] {
            let r = s(c, &["state", st, "reason"]);
            if !r.is_empty() {
                return r.into();
            }
        }
    }
    match s(p, &["status", "phase"]) {
        "" => "Pending".into(),
        ph => ph.into(),
    }
}

/// Header and row of one object of `kind`, kubectl-style; `wide` adds columns.
pub fn columns(kind: &str, wide: bool) -> Vec<&'static str> {
    let mut c = match kind {
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet" => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "Node" => vec!["NAME", "STATUS", "ZONE", "AGE"],
        "Service" => vec!["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"],
        "Endpoints" => vec!["NAME", "ENDPOINTS", "AGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "Lease" => vec!["NAME", "HOLDER", "AGE"],
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match kind {
            "Pod" => c.extend(["IP", "NODE"]),
            "Deployment" | "ReplicaSet" => c.extend(["CONTAINERS", "SELECTOR"]),
            "Node" => c.extend(["CPU", "MEMORY"]),
            "Service" => c.push("SELECTOR"),
            _ => {}
        }
    }
    c
}

pub fn row(kind: &str, o: &Value, wide: bool) -> Vec<String> {
    let name = s(o, &["metadata", "name"]).to_string();
    let age_ = age(s(o, &["metadata", "creationTimestamp"]));
    let mut r = match kind {
        "Pod" => {
            let cs = o["spec"]["containers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            let statuses = o["status"]["containerStatuses"].as_array();
            let ready = statuses
                .map(|v| v.iter().filter(|c| c["ready"] == true).count())
                .unwrap_or(0);
            let restarts: i64 = statuses
                .map(|v| {
                    v.iter()
                        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            vec![
                name,
                format!("{ready}/{cs}"),
                pod_status(o),
                restarts.to_string(),
                age_,
            ]
        }
        "Deployment" => {
            let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
            vec![
                name,
                format!("{}/{want}", n(o, &["status", "readyReplicas"])),
                n(o, &["status", "updatedReplicas"]).to_string(),
                n(o, &["status", "availableReplicas"]).to_string(),
                age_,
            ]
        }
        "ReplicaSet" => vec![
            name,
            o["spec"]["replicas"].as_i64().unwrap_or(1).to_string(),
            n(o, &["status", "replicas"]).to_string(),
            n(o, &["status", "readyReplicas"]).to_string(),
            age_,
        ],
        "Node" => {
            let ready = match condition(o, &["status", "conditions"], "Ready").as_deref() {
                Some("True") => "Ready",
                Some(_) => "NotReady",
                None => "Unknown",
            };
            let mut st = ready.to_string();
            if o["spec"]["unschedulable"] == true {
                st.push_str(",SchedulingDisabled");
            }
            vec![
                name,
                st,
                or_none(s(o, &["metadata", "labels", "topology.kubernetes.io/zone"])),
                age_,
            ]
        }
        "Service" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["port"].as_i64().unwrap_or(0),
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect();
            vec![
                name,
                match s(o, &["spec", "type"]) {
                    "" => "ClusterIP".into(),
                    t => t.into(),
                },
                or_none(s(o, &["spec", "clusterIP"])),
                ports.join(","),
                age_,
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in o["subsets"].as_array().into_iter().flatten() {
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    for p in sub["ports"].as_array().into_iter().flatten() {
                        eps.push(format!(
                            "{}:{}",
                            s(a, &["ip"]),
                            p["port"].as_i64().unwrap_or(0)
                        ));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, or_none(&shown), age_]
        }
        "Namespace" => vec![
            name,
            match s(o, &["status", "phase"]) {
                "" => "Active".into(),
                p => p.into(),
            },
            age_,
        ],
        "Event" => vec![
            age(match s(o, &["lastTimestamp"]) {
                "" => s(o, &["metadata", "creationTimestamp"]),
                t => t,
            }),
            s(o, &["type"]).into(),
            s(o, &["reason"]).into(),
            format!(
                "{}/{}",
                s(o, &["involvedObject", "kind"]).to_ascii_lowercase(),
                s(o, &["involvedObject", "name"])
            ),
            s(o, &["message"]).into(),
        ],
        "Lease" => vec![name, or_none(s(o, &["spec", "holderIdentity"])), age_],
        _ => vec![name, age_],
    };
    if wide {
        match kind {
            "Pod" => {
                r.push(or_none(s(o, &["status", "podIP"])));
                r.push(or_none(s(o, &["spec", "nodeName"])));
            }
            "Deployment" | "ReplicaSet" => {
                let names: Vec<&str> = o["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                r.push(names.join(","));
                let sel: Vec<String> = o["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                r.push(sel.join(","));
            }
            "Node" => {
                r.push(or_none(s(o, &["status", "allocatable", "cpu"])));
                r.push(or_none(s(o, &["status", "allocatable", "memory"])));
            }
            "Service" => {
                let sel: Vec<String> = o["spec"]["selector"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                r.push(or_none(&sel.join(",")));
            }
            _ => {}
        }
    }
    r
}

/// A `meta.k8s.io/v1` Table of `items`: the kind's columns (the wide ones
/// at priority 1) and one row per object, each with the object itself,
/// its metadata only or nothing (`includeObject=Object|Metadata|None`).
pub fn table(kind: &Kind, items: &[Value], resource_version: &str, include: &str) -> Value {
    let narrow = columns(kind.kind, false).len();
    let defs: Vec<Value> = columns(kind.kind, true)
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c,
                "type": "string",
                "format": if *c == "NAME" { "name" } else { "" },
                "description": "",
                "priority": if i < narrow { 0 } else { 1 },
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut r = json!({"cells": row(kind.kind, o, true)});
            match include {
                "None" => {}
                "Object" => r["object"] = o.clone(),
                _ => {
                    r["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"].clone(),
                    })
                }
            }
            r
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// Whether the client asked for a Table (`kubectl get` does).
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_show_reasons() {
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 3,
              "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = row("Pod", &p, true);
        assert_eq!(&r[..4], &["p", "0/1", "CrashLoopBackOff", "3"]);
        assert_eq!(r[6], "<none>");
    }

    #[test]
    fn ages_print_as_kubernetes_prints_them() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (270, "4m30s"),
            (300, "5m"),
            (720, "12m"),
            (5 * 3600 + 1200, "5h20m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (120 * 86400, "120d"),
            ((2 * 365 + 30) * 86400, "2y30d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn tables_carry_columns_rows_and_objects() {
        let k = crate::kinds::by_name("pods").unwrap();
        let p = json!({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}});
        let t = table(k, std::slice::from_ref(&p), "7", "Metadata");
        assert_eq!(t["columnDefinitions"][0]["name"], "NAME");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["cells"][0], "p");
        assert_eq!(t["rows"][0]["object"]["metadata"]["labels"]["a"], "b");
        assert!(
            table(k, &[p], "7", "None")["rows"][0]
                .get("object")
                .is_none()
        );
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }
}
