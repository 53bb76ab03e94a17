//! The Event recorder: what the scheduler and controllers did (Scheduled,
//! SuccessfulCreate, ScalingReplicaSet, NodeNotReady, ...) as Kubernetes
//! `Event` objects, for `keel describe`. Recording never blocks a reconcile:
//! events go into a bounded channel (dropped, and counted, when full); a
//! writer aggregates repeats of the same (object, reason, message) into one
//! Event with a count, flushes every 500 ms, and writes at most
//! [`MAX_WRITES_PER_FLUSH`] Events per flush (400/s), dropping the rest of a
//! burst with a log line. Scheduling 10k pods thus costs the store at most a
//! few hundred event writes a second, never 10k synchronous ones.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use keel_proto::api::core::{EventSource, ObjectReference};
use keel_proto::api::meta::now_rfc3339;
use keel_proto::api::{Event, Resource};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::write;

/// Events written per flush at most; the rest of a burst is dropped.
pub const MAX_WRITES_PER_FLUSH: usize = 200;
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Aggregated events remembered (for counting repeats) before forgetting.
const REMEMBER: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EventKey {
    kind: String,
    namespace: String,
    name: String,
    uid: String,
    api_version: String,
    reason: String,
    message: String,
    warning: bool,
}

/// Records Events for one component (`scheduler`, `replicaset-controller`, ...).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(EventKey, &'static str)>,
    component: &'static str,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts the writer; it stops when `cancel` fires.
    pub fn start(registry: Registry, cancel: CancellationToken) -> Recorder {
        let (tx, rx) = mpsc::channel(8_192);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(registry, rx, cancel, dropped.clone()));
        Recorder {
            tx,
            component: "keel-controller",
            dropped,
        }
    }

    /// The same recorder, naming another component as the source.
    pub fn for_component(&self, component: &'static str) -> Recorder {
        Recorder {
            tx: self.tx.clone(),
            component,
            dropped: self.dropped.clone(),
        }
    }

    pub fn normal<T: Resource>(&self, obj: &T, reason: &str, message: impl Into<String>) {
        self.record(obj, false, reason, message.into())
    }

    pub fn warning<T: Resource>(&self, obj: &T, reason: &str, message: impl Into<String>) {
        self.record(obj, true, reason, message.into())
    }

    fn record<T: Resource>(&self, obj: &T, warning: bool, reason: &str, message: String) {
        let m = obj.meta();
        let key = EventKey {
            kind: T::KIND.to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            api_version: T::API_VERSION.to_string(),
            reason: reason.to_string(),
            message,
            warning,
        };
        if self.tx.try_send((key, self.component)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Agg {
    count: i64,
    first: String,
    last: String,
    component: &'static str,
}

async fn writer(
    registry: Registry,
    mut rx: mpsc::Receiver<(EventKey, &'static str)>,
    cancel: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    let mut pending: HashMap<EventKey, Agg> = HashMap::new();
    // Events this writer created, by key: the stored object to count on.
    let mut written: HashMap<EventKey, Event> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            got = rx.recv() => match got {
                Some((k, component)) => {
                    let now = now_rfc3339();
                    let a = pending.entry(k).or_insert_with(|| Agg {
                        count: 0,
                        first: now.clone(),
                        last: now.clone(),
                        component,
                    });
                    a.count += 1;
                    a.last = now;
                }
                None => return,
            },
            _ = tick.tick() => {
                if pending.is_empty() {
                    continue;
                }
                let batch: Vec<(EventKey, Agg)> = pending.drain().collect();
                let over = batch.len().saturating_sub(MAX_WRITES_PER_FLUSH);
                let lost = dropped.swap(0, Ordering::Relaxed);
                if over > 0 || lost > 0 {
                    tracing::debug!(over, lost, "event burst: some events not written");
                }
                if written.len() > REMEMBER {
                    written.clear();
                }
                let jobs = batch.into_iter().take(MAX_WRITES_PER_FLUSH).map(|(k, a)| {
                    let prev = written.get(&k).cloned();
                    let registry = registry.clone();
                    async move {
                        let e = write_one(&registry, &k, &a, prev).await;
                        (k, e)
                    }
                });
                let done: Vec<_> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
                for (k, e) in done {
                    if let Some(e) = e {
                        written.insert(k, e);
                    }
                }
            }
        }
    }
}

fn event_name(k: &EventKey) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    format!("{}.{:016x}", k.name, h.finish())
}

/// Creates the Event, or adds to the count of the one already written.
async fn write_one(reg: &Registry, k: &EventKey, a: &Agg, prev: Option<Event>) -> Option<Event> {
    let ns = if k.namespace.is_empty() {
        "default"
    } else {
        &k.namespace
    };
    let name = event_name(k);
    let prev = match prev {
        Some(p) => Some(p),
        None => {
            let mut e = Event::new(ns, &name);
            e.involved_object = ObjectReference {
                kind: k.kind.clone(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                uid: k.uid.clone(),
                api_version: k.api_version.clone(),
            };
            e.reason = k.reason.clone();
            e.message = k.message.clone();
            e.type_ = if k.warning { "Warning" } else { "Normal" }.into();
            e.count = a.count;
            e.first_timestamp = Some(a.first.clone());
            e.last_timestamp = Some(a.last.clone());
            e.source = Some(EventSource {
                component: a.component.into(),
                host: String::new(),
            });
            match reg.create_t(&e).await {
                Ok(e) => return Some(e),
                Err(err) if err.reason == "AlreadyExists" => {
                    reg.get_t::<Event>(ns, &name).await.ok()
                }
                Err(err) => {
                    tracing::debug!(error = %err, "event not written");
                    return None;
                }
            }
        }
    };
    let prev = prev?;
    let mut e = prev.clone();
    e.count = e.count.max(1) + a.count;
    e.last_timestamp = Some(a.last.clone());
    match write::replace(reg, &prev, &e).await {
        Ok(e) => Some(e),
        Err(err) => {
            tracing::debug!(error = %err, "event count not updated");
            None
        }
    }
}
