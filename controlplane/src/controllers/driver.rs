//! The one controller driver, as kube-runtime's `Controller`: a controller
//! is only its decision, and this owns everything around it. It subscribes
//! to the informers the controller watches (before they sync, so no change
//! falls between the list and the watch), waits until every informer it
//! reads holds its first list, queues every primary key once, then maps
//! each change to the primary keys it concerns (a resync of any watched
//! informer queues every key again) and runs a few workers over one
//! deduplicating [`WorkQueue`].
//!
//! The contract with a reconcile: it gets one key, reads the caches,
//! carries out its decision and returns an [`Outcome`] — `Done` (nothing
//! more until a watched object changes) or `RequeueAfter(d)` (look again
//! after `d` even if nothing changes: a timeout that falls due, a periodic
//! scan). An error is retried with exponential [`Backoff`] (a conflict or a
//! vanished object soon, since deciding again from fresher state usually
//! works; anything else later; both capped), and the count of failures in a
//! row resets on success. A key is never reconciled by two workers at once.
//! Everything stops when the controller's cancellation token fires.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::api::Resource;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::informer::{Delta, Informer, Key, key_of};
use crate::workqueue::WorkQueue;

/// What a successful reconcile asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more until a watched object changes.
    Done,
    /// Look again after this long, even if nothing changes.
    RequeueAfter(Duration),
}

/// What every reconcile returns.
pub type ReconcileResult = Result<Outcome, ApiError>;

/// Retry delays after failures: the `n`th failure in a row waits `2^n`
/// times the base (`n` counted up to 6), never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The base after a conflict or a vanished object (`write::is_stale`).
    pub conflict: Duration,
    /// The base after any other error.
    pub error: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            conflict: Duration::from_millis(20),
            error: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before the retry that follows the `failures`th failure in a
    /// row (1 for the first).
    pub fn delay(&self, failures: u32, stale: bool) -> Duration {
        let base = if stale { self.conflict } else { self.error };
        base.saturating_mul(1 << failures.min(6)).min(self.max)
    }
}

/// The key of a controller that decides over everything at once
/// ([`Controller::singleton`]).
pub fn singleton_key() -> Key {
    (String::new(), "all".to_string())
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;
type Keys = Arc<dyn Fn() -> Vec<Key> + Send + Sync>;

/// A controller being put together: its keys, what it watches, and how it
/// works; [`Controller::run`] drives it with a reconcile.
pub struct Controller {
    kind: &'static str,
    cancel: CancellationToken,
    queue: Arc<WorkQueue<Key>>,
    keys: Keys,
    workers: usize,
    backoff: Backoff,
    /// One per informer read: resolves once it holds its first list.
    synced: Vec<Task>,
    /// One per informer watched: maps its changes to keys, forever.
    feeds: Vec<Task>,
}

impl Controller {
    /// A controller named `kind` (for logs) whose keys are those `keys`
    /// lists (every primary object), stopped by `cancel`.
    pub fn new(
        kind: &'static str,
        cancel: &CancellationToken,
        keys: impl Fn() -> Vec<Key> + Send + Sync + 'static,
    ) -> Controller {
        Controller {
            kind,
            cancel: cancel.clone(),
            queue: WorkQueue::new(),
            keys: Arc::new(keys),
            workers: 1,
            backoff: Backoff::default(),
            synced: Vec::new(),
            feeds: Vec::new(),
        }
    }

    /// A controller of every object in `inf`, queued on its every change
    /// (add more with [`Controller::watches`]).
    pub fn for_kind<T: Resource>(
        kind: &'static str,
        cancel: &CancellationToken,
        inf: &Informer<T>,
    ) -> Controller {
        Controller::new(kind, cancel, keys_of(inf)).watches(inf, |d| match d {
            Delta::Added(o) | Delta::Modified { new: o, .. } | Delta::Deleted(o) => {
                vec![key_of(&**o)]
            }
            Delta::Resync => vec![],
        })
    }

    /// A controller with the one key [`singleton_key`], for a decision over
    /// the whole cluster (typically re-run with `RequeueAfter`).
    pub fn singleton(kind: &'static str, cancel: &CancellationToken) -> Controller {
        Controller::new(kind, cancel, || vec![singleton_key()])
    }

    /// How many keys are reconciled at once (default 1).
    pub fn workers(mut self, n: usize) -> Controller {
        self.workers = n.max(1);
        self
    }

    pub fn backoff(mut self, b: Backoff) -> Controller {
        self.backoff = b;
        self
    }

    /// The first reconcile waits until `inf` holds its first list (for an
    /// informer the reconcile reads but whose changes queue nothing).
    pub fn reads<T: Resource>(mut self, inf: &Informer<T>) -> Controller {
        let inf = inf.clone();
        self.synced
            .push(Box::pin(async move { inf.synced().await }));
        self
    }

    /// Queues the keys `map` gives for each change of `inf`; a resync of
    /// `inf` queues every key instead (`map` never sees `Delta::Resync`).
    /// Implies [`Controller::reads`].
    pub fn watches<T: Resource>(
        self,
        inf: &Informer<T>,
        map: impl Fn(&Delta<T>) -> Vec<Key> + Send + Sync + 'static,
    ) -> Controller {
        // Subscribe now, before the sync wait, so nothing is missed.
        let mut sub = inf.subscribe();
        let mut c = self.reads(inf);
        let (queue, keys) = (c.queue.clone(), c.keys.clone());
        c.feeds.push(Box::pin(async move {
            while let Some(d) = sub.next().await {
                let ks = match d {
                    Delta::Resync => keys(),
                    d => map(&d),
                };
                ks.into_iter().for_each(|k| queue.add(k));
            }
        }));
        c
    }

    /// Drives `reconcile` until the cancellation token fires: waits for the
    /// informers, queues every key, then feeds changes to the workers.
    pub async fn run<F, Fut>(self, reconcile: F)
    where
        F: Fn(Key) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ReconcileResult> + Send,
    {
        let Controller {
            kind,
            cancel,
            queue,
            keys,
            workers,
            backoff,
            synced,
            feeds,
        } = self;
        let drive = async move {
            futures::future::join_all(synced).await;
            keys().into_iter().for_each(|k| queue.add(k));
            let failures = Arc::new(Mutex::new(HashMap::new()));
            let workers: Vec<_> = (0..workers)
                .map(|_| {
                    worker(
                        kind,
                        queue.clone(),
                        backoff,
                        failures.clone(),
                        reconcile.clone(),
                    )
                })
                .collect();
            futures::future::join(
                futures::future::join_all(workers),
                futures::future::join_all(feeds),
            )
            .await;
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = drive => {}
        }
    }
}

/// The keys of every object in `inf`.
pub fn keys_of<T: Resource>(inf: &Informer<T>) -> impl Fn() -> Vec<Key> + Send + Sync + 'static {
    let inf = inf.clone();
    move || inf.list().iter().map(|o| key_of(&**o)).collect()
}

/// One worker: takes a key, reconciles it in a `reconcile` span, and
/// schedules what the outcome asks for.
async fn worker<F, Fut>(
    kind: &'static str,
    queue: Arc<WorkQueue<Key>>,
    backoff: Backoff,
    failures: Arc<Mutex<HashMap<Key, u32>>>,
    reconcile: F,
) where
    F: Fn(Key) -> Fut,
    Fut: Future<Output = ReconcileResult>,
{
    loop {
        let k = queue.next().await;
        let name = if k.0.is_empty() {
            k.1.clone()
        } else {
            format!("{}/{}", k.0, k.1)
        };
        let span = tracing::debug_span!("reconcile", kind, name = %name);
        let r = reconcile(k.clone()).instrument(span).await;
        queue.done(&k);
        let mut failed = failures.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(outcome) => {
                failed.remove(&k);
                if let Outcome::RequeueAfter(d) = outcome {
                    queue.add_after(k, d);
                }
            }
            Err(e) => {
                let n = failed.entry(k.clone()).or_insert(0);
                *n += 1;
                let d = backoff.delay(*n, crate::write::is_stale(&e));
                tracing::debug!(kind, key = %name, error = %e, retry_ms = d.as_millis() as u64, "reconcile failed");
                queue.add_after(k, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    fn key(n: &str) -> Key {
        ("default".to_string(), n.to_string())
    }

    /// Runs a controller over `keys` whose reconcile reports each call
    /// (key, virtual time) and answers with `answer(call number)`.
    fn start(
        keys: Vec<Key>,
        cancel: &CancellationToken,
        answer: impl Fn(usize) -> ReconcileResult + Send + Sync + 'static,
    ) -> (
        mpsc::UnboundedReceiver<(Key, Instant)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let c = Controller::new("Test", cancel, move || keys.clone()).workers(2);
        let task = tokio::spawn(c.run(move |k| {
            let (tx, calls, answer) = (tx.clone(), calls.clone(), answer.clone());
            async move {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tx.send((k, Instant::now()));
                answer(n)
            }
        }));
        (rx, task)
    }

    /// The gaps between the first `n` calls.
    async fn gaps(rx: &mut mpsc::UnboundedReceiver<(Key, Instant)>, n: usize) -> Vec<u64> {
        let mut at = Vec::new();
        for _ in 0..n {
            at.push(rx.recv().await.expect("a reconcile").1);
        }
        at.windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect()
    }

    #[test]
    fn backoff_doubles_from_its_base_and_caps() {
        let b = Backoff::default();
        let errors: Vec<u64> = (1..=8)
            .map(|n| b.delay(n, false).as_millis() as u64)
            .collect();
        assert_eq!(errors, [400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
        let conflicts: Vec<u64> = (1..=8)
            .map(|n| b.delay(n, true).as_millis() as u64)
            .collect();
        assert_eq!(conflicts, [40, 80, 160, 320, 640, 1280, 1280, 1280]);
        let tight = Backoff {
            max: Duration::from_millis(100),
            ..b
        };
        assert_eq!(tight.delay(1, false), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_growing_delays_that_reset_on_success() {
        let cancel = CancellationToken::new();
        // Four errors, one success that asks to look again, then conflicts.
        let (mut rx, _task) = start(vec![key("a")], &cancel, |n| match n {
            0..=3 => Err(ApiError::unavailable("store down")),
            4 => Ok(Outcome::RequeueAfter(Duration::from_secs(1))),
            _ => Err(ApiError::conflict("deployments.apps", "a")),
        });
        assert_eq!(
            gaps(&mut rx, 9).await,
            [400, 800, 1600, 3200, 1000, 40, 80, 160]
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_fires_and_done_waits_for_a_change() {
        let cancel = CancellationToken::new();
        let (mut rx, _task) = start(vec![key("a"), key("b")], &cancel, |_| {
            Ok(Outcome::RequeueAfter(Duration::from_secs(10)))
        });
        let mut seen: Vec<(String, u64)> = Vec::new();
        let t0 = Instant::now();
        for _ in 0..6 {
            let (k, at) = rx.recv().await.unwrap();
            seen.push((k.1, (at - t0).as_secs()));
        }
        seen.sort();
        let want: Vec<(String, u64)> = ["a", "b"]
            .iter()
            .flat_map(|k| [0, 10, 20].map(|s| (k.to_string(), s)))
            .collect();
        assert_eq!(seen, want);
        cancel.cancel();

        let cancel = CancellationToken::new();
        let (mut rx, _task) = start(vec![key("c")], &cancel, |_| Ok(Outcome::Done));
        rx.recv().await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await;
        assert!(again.is_err(), "Done: no reconcile without a change");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_controller_and_its_pending_retries() {
        let cancel = CancellationToken::new();
        let (mut rx, task) = start(vec![key("a")], &cancel, |_| {
            Ok(Outcome::RequeueAfter(Duration::from_millis(50)))
        });
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        cancel.cancel();
        task.await.expect("the driver returns once cancelled");
        // The reconcile (and with it every sender) is gone: the stream ends,
        // even though a requeue was pending.
        while rx.recv().await.is_some() {}
    }
}
