//! A deduplicating work queue of object keys, as client-go's: a key queued
//! many times is processed once, a key is never processed by two workers at
//! once, and a key added while being processed runs again afterwards. It
//! turns many watch events into few reconciles. A key asked for later
//! (a retry or a timed re-check) has at most one timer: the earliest wins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

struct State<K> {
    order: VecDeque<K>,
    queued: HashSet<K>,
    active: HashSet<K>,
    /// Added while active: queue again when done.
    again: HashSet<K>,
    /// Keys waiting for a timer, and when it fires.
    delayed: HashMap<K, Instant>,
}

/// A queue of keys shared by a controller's event handlers and workers.
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                order: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                delayed: HashMap::new(),
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `k` unless it is already queued.
    pub fn add(&self, k: K) {
        let mut s = self.lock();
        if s.active.contains(&k) {
            s.again.insert(k);
            return;
        }
        if s.queued.insert(k.clone()) {
            s.order.push_back(k);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `k` after `d` (a retry or a timed re-check), unless a timer
    /// for `k` fires sooner anyway. Timers end with the queue.
    pub fn add_after(self: &Arc<Self>, k: K, d: Duration) {
        let at = Instant::now() + d;
        {
            let mut s = self.lock();
            match s.delayed.get(&k) {
                Some(t) if *t <= at => return,
                _ => {
                    s.delayed.insert(k.clone(), at);
                }
            }
        }
        let q = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(q) = q.upgrade() else { return };
            let mine = {
                let mut s = q.lock();
                let mine = s.delayed.get(&k) == Some(&at);
                if mine {
                    s.delayed.remove(&k);
                }
                mine
            };
            // A sooner timer replaced this one and has queued the key.
            if mine {
                q.add(k);
            }
        });
    }

    /// The next key to process; call [`WorkQueue::done`] after processing it.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(k) = s.order.pop_front() {
                    s.queued.remove(&k);
                    s.active.insert(k.clone());
                    if !s.order.is_empty() {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    /// Marks `k` processed, queueing it again if it was added meanwhile.
    pub fn done(&self, k: &K) {
        let mut s = self.lock();
        s.active.remove(k);
        if s.again.remove(k) && s.queued.insert(k.clone()) {
            s.order.push_back(k.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_requeues_keys_added_while_active() {
        let q = WorkQueue::new();
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, 1);
        q.add(1);
        assert_eq!(q.len(), 1, "an active key waits until done");
        q.done(&k);
        assert_eq!(q.next().await, 2);
        assert_eq!(q.next().await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_has_one_timer_and_the_earliest_wins() {
        let q = WorkQueue::new();
        let t0 = Instant::now();
        q.add_after("k", Duration::from_secs(10));
        q.add_after("k", Duration::from_secs(3));
        q.add_after("k", Duration::from_secs(5));
        assert_eq!(q.next().await, "k");
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        q.done(&"k");
        // The later timers were dropped: nothing more comes.
        let more = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(more.is_err(), "one timer per key");
    }
}
