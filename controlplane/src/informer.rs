//! Informers: an in-memory copy of one kind's objects, kept current by
//! listing once and then watching from the list's revision, so the leader's
//! loops read from memory and react to changes instead of polling the store.
//! A watch that falls behind compaction (410) re-lists; subscribers are then
//! told to resync everything.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_proto::api::Resource;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::kinds;
use crate::registry::{Registry, from_value};

/// `(namespace, name)`; the namespace is "" for cluster-scoped kinds.
pub type Key = (String, String);

/// The key of an object.
pub fn key_of<T: Resource>(o: &T) -> Key {
    (o.meta().namespace.clone(), o.meta().name.clone())
}

/// One change to the cache, as subscribers see it.
#[derive(Debug)]
pub enum Delta<T> {
    Added(Arc<T>),
    Modified {
        old: Arc<T>,
        new: Arc<T>,
    },
    Deleted(Arc<T>),
    /// The cache was (re)built or this subscriber fell behind: treat every
    /// cached object as changed.
    Resync,
}

impl<T> Clone for Delta<T> {
    fn clone(&self) -> Self {
        match self {
            Delta::Added(o) => Delta::Added(o.clone()),
            Delta::Modified { old, new } => Delta::Modified {
                old: old.clone(),
                new: new.clone(),
            },
            Delta::Deleted(o) => Delta::Deleted(o.clone()),
            Delta::Resync => Delta::Resync,
        }
    }
}

struct Shared<T> {
    cache: RwLock<HashMap<Key, Arc<T>>>,
    /// The revision the cache reflects (0 until the first list); every
    /// change bumps it, so it doubles as the change notification.
    rev: watch::Sender<i64>,
    deltas: broadcast::Sender<Delta<T>>,
}

/// A shared, always-current cache of one kind's objects.
pub struct Informer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Informer<T> {
    fn clone(&self) -> Self {
        Informer {
            shared: self.shared.clone(),
        }
    }
}

/// A subscriber's stream of deltas.
pub struct Subscription<T> {
    rx: broadcast::Receiver<Delta<T>>,
}

impl<T: Clone> Subscription<T> {
    /// The next delta; `Resync` when this subscriber lagged. `None` once the
    /// informer stopped.
    pub async fn next(&mut self) -> Option<Delta<T>> {
        match self.rx.recv().await {
            Ok(d) => Some(d),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Delta::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Every delta already waiting, without blocking (lag becomes `Resync`).
    pub fn try_next(&mut self) -> Option<Delta<T>> {
        match self.rx.try_recv() {
            Ok(d) => Some(d),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Delta::Resync),
            Err(_) => None,
        }
    }
}

impl<T: Resource> Informer<T> {
    /// Starts listing and watching `T` (all namespaces) until `cancel` fires.
    pub fn start(registry: Registry, cancel: CancellationToken) -> Self {
        let (rev, _) = watch::channel(0);
        let (deltas, _) = broadcast::channel(16_384);
        let shared = Arc::new(Shared {
            cache: RwLock::new(HashMap::new()),
            rev,
            deltas,
        });
        let inf = Informer {
            shared: shared.clone(),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = run(registry, shared) => {}
            }
        });
        inf
    }

    /// Subscribes to changes from now on. Subscribe before reading the cache
    /// so that nothing falls between the read and the first delta.
    pub fn subscribe(&self) -> Subscription<T> {
        Subscription {
            rx: self.shared.deltas.subscribe(),
        }
    }

    /// A receiver of the cache's revision, which changes with every change.
    pub fn changed(&self) -> watch::Receiver<i64> {
        self.shared.rev.subscribe()
    }

    /// The revision the cache reflects (0 before the first list).
    pub fn revision(&self) -> i64 {
        *self.shared.rev.borrow()
    }

    /// Waits until the first list is in the cache.
    pub async fn synced(&self) {
        self.wait_for(1).await
    }

    /// Waits until the cache reflects revision `rev` of this kind (e.g. a
    /// write of ours), so a loop reads its own writes.
    pub async fn wait_for(&self, rev: i64) {
        let mut rx = self.shared.rev.subscribe();
        let _ = rx.wait_for(|r| *r >= rev).await;
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<T>> {
        self.read()
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<T>> {
        self.read().values().cloned().collect()
    }

    /// Cached objects for which `f` holds.
    pub fn filter(&self, f: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.read().values().filter(|o| f(o)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<T>>> {
        self.shared.cache.read().unwrap_or_else(|e| e.into_inner())
    }
}

async fn run<T: Resource>(registry: Registry, shared: Arc<Shared<T>>) {
    let kind = kinds::of::<T>();
    loop {
        let (items, rev) = match registry.list_t::<T>(None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(kind = kind.kind, error = %e, "informer list failed, retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut cache = shared.cache.write().unwrap_or_else(|e| e.into_inner());
            cache.clear();
            for o in items {
                cache.insert(key_of(&o), Arc::new(o));
            }
        }
        shared.rev.send_replace(rev.max(1));
        let _ = shared.deltas.send(Delta::Resync);
        tracing::debug!(kind = kind.kind, rev, "informer listed");

        let mut w = registry.watch(kind, None, rev);
        loop {
            let change = match w.next().await {
                Ok(c) => c,
                Err(e) => {
                    if e.code == 410 {
                        tracing::info!(kind = kind.kind, "informer watch compacted, re-listing");
                    } else {
                        tracing::debug!(kind = kind.kind, error = %e, "informer watch ended, re-listing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            };
            let obj: T = match from_value(change.object) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(kind = kind.kind, error = %e, "undecodable object skipped");
                    continue;
                }
            };
            let k = key_of(&obj);
            let obj = Arc::new(obj);
            let delta = {
                let mut cache = shared.cache.write().unwrap_or_else(|e| e.into_inner());
                if change.type_ == "DELETED" {
                    cache.remove(&k);
                    Delta::Deleted(obj)
                } else {
                    match cache.insert(k, obj.clone()) {
                        Some(old) => Delta::Modified { old, new: obj },
                        None => Delta::Added(obj),
                    }
                }
            };
            shared.rev.send_replace(change.revision);
            let _ = shared.deltas.send(delta);
        }
    }
}
