//! kubectl-style tables: one row per object, columns chosen per kind, padded
//! so they line up.

use keel_proto::api::meta::parse_rfc3339;
use serde_json::Value;

/// Formats rows with columns padded to the widest cell (3 spaces apart).
pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header);
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 timestamp.
pub fn age(ts: &str) -> String {
    let Some(t) = parse_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = (now - t).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    keel_controlplane::registry::str_at(v, path)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["NAME".into(), "READY".into()],
            &[
                vec!["a-long-name".into(), "1/1".into()],
                vec!["b".into(), "0/1".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          READY\na-long-name   1/1\nb             0/1"
        );
    }

    #[test]
    fn pod_rows_show_reasons() {
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 3,
              "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = row("Pod", &p, true);
        assert_eq!(&r[..4], &["p", "0/1", "CrashLoopBackOff", "3"]);
        assert_eq!(r[6], "<none>");
    }
}
