//! The watch workload: writers put unique keys under `watch/` through
//! random members while watchers follow the prefix. A watcher that errors,
//! is cancelled, or hears nothing for `idle` (its member may be paused or
//! cut off) reconnects to another member and resumes from its last
//! revision + 1, exactly as an etcd client must. After healing, the harness
//! tells the watchers the final revision to drain to; the watch checker
//! then compares what each watcher saw with the keys in the final state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, watch_request};
use keel_proto::pki::Credentials;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use super::kv::{KvKind, KvOp, KvOutcome};
use super::{ERROR_BACKOFF, kv_clients, never_sent};

/// The key prefix the workload writes and watches.
pub const PREFIX: &str = "watch/";

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct WatchWorkload {
    pub endpoints: Vec<String>,
    /// How the writers and watchers dial the members.
    pub creds: Credentials,
    /// Writer tasks.
    pub writers: u64,
    /// Watcher tasks.
    pub watchers: u64,
    pub duration: Duration,
    pub timeout: Duration,
    /// A watcher that hears nothing for this long while writes go on
    /// moves to another member.
    pub idle: Duration,
}

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub watcher: u64,
    /// Index of the member the event came from.
    pub member: usize,
    pub revision: i64,
    pub key: String,
    /// Microseconds since the start.
    pub at: u64,
}

/// A watcher's (re)connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconnect {
    pub watcher: u64,
    pub member: usize,
    pub from_revision: i64,
    pub at: u64,
    pub reason: String,
}

/// What the workload recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatchHistory {
    pub writes: Vec<KvOp>,
    pub received: Vec<Received>,
    pub reconnects: Vec<Reconnect>,
}

/// A running watch workload: writers stop after `duration`; watchers keep
/// following until `drain` is called with the revision to reach.
pub struct Running {
    writers: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    target: watch::Sender<Option<i64>>,
    history: Arc<Mutex<WatchHistory>>,
}

/// Starts writers and watchers on the run's clock `start`.
pub fn start(w: &WatchWorkload, start: Instant) -> Running {
    let history = Arc::new(Mutex::new(WatchHistory::default()));
    let (target, target_rx) = watch::channel(None);
    let writers = (0..w.writers)
        .map(|client| tokio::spawn(writer(w.clone(), client, start, history.clone())))
        .collect();
    let watchers = (0..w.watchers)
        .map(|id| {
            tokio::spawn(watcher(
                w.clone(),
                id,
                start,
                history.clone(),
                target_rx.clone(),
            ))
        })
        .collect();
    Running {
        writers,
        watchers,
        target,
        history,
    }
}

impl Running {
    /// Waits for the writers to finish their duration.
    pub async fn writers_done(&mut self) {
        for t in self.writers.drain(..) {
            let _ = t.await;
        }
    }

    /// Lets the watchers run until each saw `revision` (or `max` passed),
    /// then returns the history.
    pub async fn drain(mut self, revision: i64, max: Duration) -> WatchHistory {
        self.writers_done().await;
        self.target.send_replace(Some(revision));
        let deadline = tokio::time::Instant::now() + max;
        for t in self.watchers {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        let mut h = self.history.lock().await.clone();
        h.writes.sort_by_key(|o| o.call);
        h
    }
}

async fn writer(w: WatchWorkload, client: u64, start: Instant, history: Arc<Mutex<WatchHistory>>) {
    let clients = kv_clients(&w.creds, &w.endpoints, w.timeout);
    if clients.is_empty() {
        return;
    }
    let deadline = start + w.duration;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let mut kv = clients[rand::rng().random_range(0..clients.len())].clone();
        let key = format!("{PREFIX}{client}/{n}");
        let call = start.elapsed().as_micros() as u64;
        let r = kv
            .put(PutRequest {
                key: key.clone().into_bytes(),
                value: n.to_string().into_bytes(),
                ..Default::default()
            })
            .await;
        let outcome = match r {
            Ok(_) => KvOutcome::Ok(None),
            Err(e) if never_sent(&e) => KvOutcome::Fail,
            Err(_) => KvOutcome::Unknown,
        };
        if !matches!(outcome, KvOutcome::Ok(_)) {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        history.lock().await.writes.push(KvOp {
            client,
            kind: KvKind::Put,
            key,
            value: Some(n.to_string()),
            call,
            ret: start.elapsed().as_micros() as u64,
            outcome,
        });
    }
}

async fn watcher(
    w: WatchWorkload,
    id: u64,
    start: Instant,
    history: Arc<Mutex<WatchHistory>>,
    target: watch::Receiver<Option<i64>>,
) {
    let mut last = 0i64;
    let mut member = id as usize % w.endpoints.len().max(1);
    let mut reason = "start".to_string();
    loop {
        if target.borrow().is_some_and(|t| last >= t) {
            return;
        }
        history.lock().await.reconnects.push(Reconnect {
            watcher: id,
            member,
            from_revision: last + 1,
            at: start.elapsed().as_micros() as u64,
            reason: std::mem::take(&mut reason),
        });
        reason = follow(&w, id, member, start, &history, &target, &mut last).await;
        if target.borrow().is_some_and(|t| last >= t) {
            return;
        }
        // Another member, picked at random among the others.
        if w.endpoints.len() > 1 {
            let step = rand::rng().random_range(1..w.endpoints.len());
            member = (member + step) % w.endpoints.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows one watch stream on `member` until it fails, goes idle, or the
/// target revision is reached; returns why it stopped.
async fn follow(
    w: &WatchWorkload,
    id: u64,
    member: usize,
    start: Instant,
    history: &Arc<Mutex<WatchHistory>>,
    target: &watch::Receiver<Option<i64>>,
    last: &mut i64,
) -> String {
    let Ok(ep) = w.creds.endpoint(&w.endpoints[member]) else {
        return "bad endpoint".into();
    };
    let ch = ep.connect_timeout(w.timeout).connect_lazy();
    let end = keel_proto::prefix_end(PREFIX.as_bytes());
    let req = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: end,
                start_revision: *last + 1,
                ..Default::default()
            },
        )),
    };
    let mut client = WatchClient::new(ch);
    let open = client.watch(futures::stream::iter(vec![req]).chain(futures::stream::pending()));
    let mut stream = match tokio::time::timeout(w.timeout, open).await {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(e)) => return format!("open failed: {}", e.message()),
        Err(_) => return "open timed out".into(),
    };
    loop {
        if target.borrow().is_some_and(|t| *last >= t) {
            return "done".into();
        }
        let msg = match tokio::time::timeout(w.idle, stream.next()).await {
            Err(_) => return "idle".into(),
            Ok(None) => return "stream ended".into(),
            Ok(Some(Err(e))) => return format!("stream error: {}", e.message()),
            Ok(Some(Ok(m))) => m,
        };
        if msg.canceled {
            return format!(
                "canceled: {} (compact revision {})",
                msg.cancel_reason, msg.compact_revision
            );
        }
        if msg.events.is_empty() {
            continue;
        }
        let at = start.elapsed().as_micros() as u64;
        let mut h = history.lock().await;
        for e in msg.events {
            let Some(kv) = e.kv else { continue };
            *last = (*last).max(kv.mod_revision);
            h.received.push(Received {
                watcher: id,
                member,
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                at,
            });
        }
    }
}
