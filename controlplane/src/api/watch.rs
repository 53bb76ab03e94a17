//! `?watch=1` streams: newline-delimited `{"type":..., "object":...}` events
//! from a resourceVersion (every change after it, in order), or the current
//! objects as ADDED followed by every later change when none is given;
//! BOOKMARK events when asked for.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::handlers::Filter;
use super::route::Target;
use crate::error::ApiError;
use crate::registry::Registry;

fn line(type_: &str, object: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    b.push(b'\n');
    b
}

/// How often a watch that asked for them (`allowWatchBookmarks=true`) gets a
/// BOOKMARK: the revision it has reached, to resume from without a relist.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// A BOOKMARK event's object: only the kind and a resourceVersion.
fn bookmark(kind: &crate::kinds::Kind, rv: i64) -> Value {
    json!({
        "kind": kind.kind,
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
    })
}

/// What a watch asks for besides its target and selectors.
pub struct Options {
    /// Start after this revision (None or 0: list first, then follow).
    pub resource_version: Option<i64>,
    /// End the stream after this long (`timeoutSeconds`).
    pub timeout: Option<Duration>,
    /// Send each object as a one-row Table (with this `includeObject`).
    pub table: Option<String>,
    /// Send BOOKMARK events (`allowWatchBookmarks`).
    pub bookmarks: bool,
}

/// Starts a watch; fails with 410 when `resource_version` was compacted away.
pub async fn start(
    reg: &Registry,
    t: &Target,
    filter: Filter,
    o: Options,
    slot: keel_store::watch_quota::WatchSlot,
) -> Result<Response, ApiError> {
    let Options {
        resource_version,
        timeout,
        table,
        bookmarks,
    } = o;
    let (initial, after) = match resource_version {
        Some(rv) if rv > 0 => {
            let compacted = reg.node().kv.compact_revision();
            if rv < compacted {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} (compacted to {compacted})"
                )));
            }
            reg.node().read_barrier().await?;
            (Vec::new(), rv)
        }
        _ => {
            let (items, rev) = reg.list(t.kind, t.namespace.as_deref()).await?;
            (items, rev)
        }
    };
    let mut w = reg.watch(t.kind, t.namespace.as_deref(), after);
    let name = t.name.clone();
    let kind = t.kind;
    // kubectl get -w asks for each event's object as a one-row Table.
    let shape = move |o: &Value| match &table {
        Some(include) => {
            let rv = crate::registry::str_at(o, &["metadata", "resourceVersion"]).to_string();
            super::table::table(kind, std::slice::from_ref(o), &rv, include)
        }
        None => o.clone(),
    };
    let keep = move |o: &Value| {
        filter.matches(o)
            && name
                .as_deref()
                .is_none_or(|n| crate::registry::str_at(o, &["metadata", "name"]) == n)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    tokio::spawn(async move {
        let _slot = slot;
        for o in initial.iter().filter(|o| keep(o)) {
            if tx.send(Ok(line("ADDED", &shape(o)))).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // The revision the stream has reached (every change, kept or not).
        let mut reached = after;
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, w.next()).await.ok(),
                    None => Some(w.next().await),
                }
            };
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(Ok(line("BOOKMARK", &bookmark(kind, reached)))).await.is_err() {
                        return;
                    }
                }
                r = next => match r {
                    None => return,
                    Some(Ok(c)) => {
                        if let Ok(rv) = crate::registry::str_at(&c.object, &["metadata", "resourceVersion"]).parse::<i64>() {
                            reached = reached.max(rv);
                        }
                        if keep(&c.object) && tx.send(Ok(line(c.type_, &shape(&c.object)))).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Ok(line("ERROR", &serde_json::to_value(e.status()).unwrap_or_default()))).await;
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
