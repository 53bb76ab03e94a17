//! etcd's Watch service: each watcher replays history from its start
//! revision, then follows live events, delivering every event once and in
//! revision order; a watcher that falls behind re-reads history instead of
//! skipping events.

use std::collections::HashMap;

use futures::StreamExt;
use keel_proto::etcdserverpb::watch_server::Watch;
use keel_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request, watch_request,
};
use keel_proto::mvccpb::{Event, event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Etcd;
use crate::error::EtcdError;
use crate::mvcc::feed::Feed;
use crate::mvcc::keys::in_range;
use crate::peer::BoxStream;

/// Events per response when replaying history.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

#[tonic::async_trait]
impl Watch for Etcd {
    type WatchStream = BoxStream<WatchResponse>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Watches are counted per client identity (its certificate's CN;
        // one shared name without TLS).
        let who = req
            .peer_certs()
            .and_then(|c| c.first().and_then(keel_proto::pki::subject))
            .map(|(cn, _)| cn)
            .unwrap_or_else(|| "(plain text)".into());
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<WatchResponse, Status>>(256);
        let svc = self.clone();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id: i64 = 0;
            while let Some(Ok(msg)) = inbound.next().await {
                match msg.request_union {
                    Some(watch_request::RequestUnion::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 { c.watch_id } else { next_id };
                        watchers.retain(|_, h| !h.is_finished());
                        if let Some(reason) = refusal(&c, watchers.contains_key(&id)) {
                            // etcd's answer: created and canceled at once, ID -1.
                            let _ = tx
                                .send(Ok(WatchResponse {
                                    header: svc.header(0),
                                    watch_id: -1,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: reason.into(),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        let Some(slot) = svc.watches.acquire(&who) else {
                            let _ = tx
                                .send(Ok(WatchResponse {
                                    header: svc.header(0),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: format!(
                                        "etcdserver: too many watches for {who:?} (at most {} at once)",
                                        svc.watches.limit()
                                    ),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        };
                        next_id = next_id.max(id + 1);
                        let w = run_watcher(svc.clone(), id, c, tx.clone());
                        let h = tokio::spawn(async move {
                            let _slot = slot;
                            w.await
                        });
                        watchers.insert(id, h);
                    }
                    Some(watch_request::RequestUnion::CancelRequest(c)) => {
                        if let Some(h) = watchers.remove(&c.watch_id) {
                            h.abort();
                        }
                        let _ = tx
                            .send(Ok(WatchResponse {
                                header: svc.header(0),
                                watch_id: c.watch_id,
                                canceled: true,
                                ..Default::default()
                            }))
                            .await;
                    }
                    Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                        let _ = tx
                            .send(Ok(WatchResponse {
                                header: svc.header(0),
                                watch_id: -1,
                                ..Default::default()
                            }))
                            .await;
                    }
                    None => {}
                }
            }
            for (_, h) in watchers {
                h.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Why etcd refuses a watch, if it does (its mvcc errors, verbatim): a
/// range that holds no key (an end at or before the key; an empty key
/// stands for `\0`, an end of `\0` for "no end"), or an ID in use.
fn refusal(c: &WatchCreateRequest, id_in_use: bool) -> Option<&'static str> {
    let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
    let end = c.range_end.as_slice();
    if !end.is_empty() && end != [0] && key >= end {
        return Some("mvcc: watcher range is empty");
    }
    if id_in_use {
        return Some("mvcc: duplicate watch ID provided on the WatchStream");
    }
    None
}

/// Does this watcher want this event, and in what shape?
fn shape(c: &WatchCreateRequest, ev: &Event) -> Option<Event> {
    let kv = ev.kv.as_ref()?;
    if !in_range(&kv.key, &c.key, &c.range_end) {
        return None;
    }
    let is_put = ev.r#type == event::EventType::Put as i32;
    for f in &c.filters {
        let f = watch_create_request::FilterType::try_from(*f).ok();
        if (f == Some(watch_create_request::FilterType::Noput) && is_put)
            || (f == Some(watch_create_request::FilterType::Nodelete) && !is_put)
        {
            return None;
        }
    }
    let mut ev = ev.clone();
    if !c.prev_kv {
        ev.prev_kv = None;
    }
    Some(ev)
}

async fn send_events(
    svc: &Etcd,
    id: i64,
    c: &WatchCreateRequest,
    events: &[(i64, Event)],
    tx: &mpsc::Sender<Result<WatchResponse, Status>>,
) -> bool {
    let mut out = Vec::new();
    let mut last = 0;
    for (i, (rev, ev)) in events.iter().enumerate() {
        if let Some(e) = shape(c, ev) {
            out.push(e);
            last = *rev;
        }
        // Never split one revision across responses.
        let boundary = events.get(i + 1).is_none_or(|(r, _)| r != rev);
        if out.len() >= MAX_EVENTS_PER_RESPONSE && boundary {
            let batch = std::mem::take(&mut out);
            if !send(tx, svc, id, batch, last).await {
                return false;
            }
        }
    }
    out.is_empty() || send(tx, svc, id, out, last).await
}

async fn send(
    tx: &mpsc::Sender<Result<WatchResponse, Status>>,
    svc: &Etcd,
    id: i64,
    events: Vec<Event>,
    rev: i64,
) -> bool {
    tx.send(Ok(WatchResponse {
        header: svc.header(rev),
        watch_id: id,
        events,
        ..Default::default()
    }))
    .await
    .is_ok()
}

/// etcd's answer to a watch whose start revision was compacted away:
/// canceled with the compact revision, and no cancel reason (clients read
/// the compact revision as `ErrCompacted`).
async fn cancel_compacted(svc: &Etcd, id: i64, tx: &mpsc::Sender<Result<WatchResponse, Status>>) {
    let _ = tx
        .send(Ok(WatchResponse {
            header: svc.header(0),
            watch_id: id,
            canceled: true,
            compact_revision: svc.node.kv.compact_revision(),
            ..Default::default()
        }))
        .await;
}

async fn run_watcher(
    svc: Etcd,
    id: i64,
    c: WatchCreateRequest,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let range = Some((c.key.clone(), c.range_end.clone()));
    let (feed, cur) = Feed::open_range(svc.node.kv.clone(), c.start_revision, range);
    let mut feed = if c.prev_kv { feed } else { feed.without_prev() };
    let created = WatchResponse {
        header: svc.header(cur),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    if tx.send(Ok(created)).await.is_err() {
        return;
    }
    loop {
        match feed.next().await {
            Ok(events) => {
                if !send_events(&svc, id, &c, &events, &tx).await {
                    return;
                }
            }
            Err(EtcdError::Compacted) => {
                cancel_compacted(&svc, id, &tx).await;
                return;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &[u8], end: &[u8]) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn watches_etcd_refuses_are_refused_with_its_reasons() {
        let empty = Some("mvcc: watcher range is empty");
        assert_eq!(refusal(&w(b"b", b"a"), false), empty);
        assert_eq!(refusal(&w(b"b", b"b"), false), empty);
        assert_eq!(refusal(&w(b"\0", b"\0"), false), None);
        assert_eq!(refusal(&w(b"", b"\0"), false), None);
        assert_eq!(refusal(&w(b"", b""), false), None);
        assert_eq!(refusal(&w(b"a", b""), false), None);
        assert_eq!(refusal(&w(b"a", b"b"), false), None);
        assert_eq!(refusal(&w(b"\xff", b"\0"), false), None);
        assert_eq!(
            refusal(&w(b"a", b""), true),
            Some("mvcc: duplicate watch ID provided on the WatchStream")
        );
    }
}
