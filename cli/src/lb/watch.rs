//! Watches through the load balancer: relayed one whole event (NDJSON line)
//! at a time, remembering the resourceVersion of the last one relayed
//! (object, bookmark, or the object of a server-side Table row). When the
//! master's stream ends (it was killed, or it left) before the client's
//! `timeoutSeconds`, the same watch is sent to another master from that
//! resourceVersion, so the client sees one stream: no event twice, none
//! skipped. A resumed watch that the store can no longer serve (its
//! revision compacted meanwhile) ends with the master's error as a watch
//! `ERROR` event, which clients answer by listing again. A watch that had
//! no resourceVersion and relayed nothing yet resumes from "now".

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Lb, relay, status};

/// Whether a query asks for a watch.
pub fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| k == "watch" && matches!(&*v, "true" | "1" | "True"))
}

/// The resourceVersion a watch event carries: its object's, or for a
/// Table, its last row's object's.
pub fn resource_version(line: &[u8]) -> Option<String> {
    let ev: Value = serde_json::from_slice(line).ok()?;
    let obj = &ev["object"];
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if obj["kind"] == "Table" {
        let rows = obj["rows"].as_array()?;
        return rows.iter().rev().find_map(|r| rv(&r["object"])).or(rv(obj));
    }
    rv(obj)
}

/// `path` with its query's `resourceVersion` set to `rv` (or left out).
pub fn with_resource_version(path_query: &str, rv: Option<&str>) -> String {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "resourceVersion" {
            q.append_pair(&k, &v);
        }
    }
    if let Some(rv) = rv {
        q.append_pair("resourceVersion", rv);
    }
    format!("{path}?{}", q.finish())
}

/// How a master's stream ended.
enum End {
    /// The client went away: nothing more to do.
    ClientGone,
    /// The master's stream ended or broke.
    Master,
}

/// Relays whole lines from `r` to `tx`, keeping `rv` current.
async fn pump(
    r: reqwest::Response,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    rv: &mut Option<String>,
) -> End {
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return End::Master };
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Some(v) = resource_version(&line) {
                *rv = Some(v);
            }
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return End::ClientGone;
            }
        }
    }
    End::Master
}

/// Serves a watch, resuming it on another master when its own goes away.
pub async fn serve(lb: Arc<Lb>, parts: Parts, path_query: String) -> Response {
    let q = parts.uri.query().unwrap_or("");
    let mut rv = form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "resourceVersion")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty() && v != "0");
    let until = form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "timeoutSeconds")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let headers = parts.headers.clone();
    let (first, mut master) = match lb
        .send(&Method::GET, &path_query, &headers, Bytes::new(), None)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("no master answered: {e}"),
            );
        }
    };
    if first.status() != StatusCode::OK {
        return relay(first);
    }
    let content_type = first.headers().get(header::CONTENT_TYPE).cloned();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut r = first;
        loop {
            if let End::ClientGone = pump(r, &tx, &mut rv).await {
                return;
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return;
            }
            tracing::info!(master = %lb.masters[master], rv = ?rv, "watch stream ended; resuming on another master");
            let give_up = Instant::now() + lb.resume_timeout;
            let resumed = loop {
                if tx.is_closed() || Instant::now() >= give_up {
                    tracing::warn!("no master took the watch over; ending it");
                    return;
                }
                let pq = with_resource_version(&path_query, rv.as_deref());
                match lb
                    .send(&Method::GET, &pq, &headers, Bytes::new(), Some(master))
                    .await
                {
                    Ok((r, i)) if r.status() == StatusCode::OK => break (r, i),
                    Ok((r, _)) => {
                        // The master refused the resumed watch (e.g. its
                        // revision is compacted): end with its error.
                        let body = r.bytes().await.unwrap_or_default();
                        let status: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let ev = serde_json::json!({"type": "ERROR", "object": status});
                        let mut line = ev.to_string().into_bytes();
                        line.push(b'\n');
                        let _ = tx.send(Ok(Bytes::from(line))).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "resuming the watch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            tracing::info!(master = %lb.masters[resumed.1], rv = ?rv, "watch resumed");
            (r, master) = resumed;
        }
    });
    let mut resp = Response::builder().status(StatusCode::OK);
    if let Some(ct) = content_type {
        resp = resp.header(header::CONTENT_TYPE, ct);
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    resp.body(Body::from_stream(stream))
        .unwrap_or_else(|e| status(StatusCode::BAD_GATEWAY, "InternalError", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_by_their_query() {
        assert!(is_watch(Some("watch=true&resourceVersion=5")));
        assert!(is_watch(Some("labelSelector=a&watch=1")));
        assert!(!is_watch(Some("watch=false")));
        assert!(!is_watch(None));
    }

    #[test]
    fn the_resource_version_of_objects_bookmarks_and_tables() {
        let pod = br#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"a","resourceVersion":"12"}}}"#;
        assert_eq!(resource_version(pod).as_deref(), Some("12"));
        let bookmark =
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"40"}}}"#;
        assert_eq!(resource_version(bookmark).as_deref(), Some("40"));
        let table = br#"{"type":"MODIFIED","object":{"kind":"Table","metadata":{},"rows":[{"cells":[],"object":{"kind":"PartialObjectMetadata","metadata":{"resourceVersion":"7"}}}]}}"#;
        assert_eq!(resource_version(table).as_deref(), Some("7"));
        assert_eq!(resource_version(b"not json"), None);
        assert_eq!(resource_version(br#"{"type":"ERROR","object":{}}"#), None);
    }

    #[test]
    fn the_resumed_query_keeps_everything_but_the_revision() {
        assert_eq!(
            with_resource_version(
                "/api/v1/pods?watch=true&resourceVersion=3&labelSelector=app%3Dweb",
                Some("9")
            ),
            "/api/v1/pods?watch=true&labelSelector=app%3Dweb&resourceVersion=9"
        );
        assert_eq!(
            with_resource_version("/api/v1/pods?watch=1", None),
            "/api/v1/pods?watch=1"
        );
    }
}
