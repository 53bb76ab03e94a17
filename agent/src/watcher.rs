//! List-then-watch of one collection, as an informer does: list, hand the
//! whole set over, watch from the list's resourceVersion, and on a broken
//! stream watch again from the last version seen (the client fails over to
//! another master). When that version is gone (410) the list starts over,
//! so the consumer sees a fresh full set and can drop what disappeared.
//! Consumers' running work is never touched by any of this.

use std::time::Duration;

use crate::credentials::MasterClient;
use futures::StreamExt;
use keel_proto::api::{List, Resource};
use tokio::sync::mpsc;

/// What the consumer learns.
#[derive(Debug)]
pub enum Event<T> {
    /// The complete current set (after a list).
    Reset(Vec<T>),
    /// An object was added or changed.
    Apply(T),
    Delete(T),
}

/// Lists and watches `path` (a collection path, with its query) until the
/// receiver goes away.
pub async fn run<T: Resource>(client: MasterClient, path: String, tx: mpsc::Sender<Event<T>>) {
    let mut pause = Duration::from_millis(100);
    'list: loop {
        let list = match client
            .get()
            .call::<List<T>>(reqwest::Method::GET, &path, None)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%path, error = %e, "list failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut rv = list.metadata.resource_version.clone();
        if tx.send(Event::Reset(list.items)).await.is_err() {
            return;
        }
        loop {
            let stream = match client.get().watch(&path, &rv).await {
                Ok(s) => s,
                Err(e) if e.code() == 410 => continue 'list,
                Err(e) => {
                    tracing::debug!(%path, error = %e, "watch failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!(%path, error = %e, "watch stream broke; watching again");
                        break;
                    }
                };
                if ev.type_ == "ERROR" {
                    if ev.object.get("code").and_then(|c| c.as_u64()) == Some(410) {
                        continue 'list;
                    }
                    tracing::debug!(%path, status = %ev.object, "watch error; watching again");
                    break;
                }
                let obj: T = match serde_json::from_value(ev.object) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "undecodable watch event skipped");
                        continue;
                    }
                };
                if !obj.meta().resource_version.is_empty() {
                    rv = obj.meta().resource_version.clone();
                }
                let e = if ev.type_ == "DELETED" {
                    Event::Delete(obj)
                } else {
                    Event::Apply(obj)
                };
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(pause).await;
        }
    }
}
