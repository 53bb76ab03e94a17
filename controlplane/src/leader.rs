//! Leader gating: the scheduler and the controllers run only while this
//! master is the Raft leader, start when it becomes leader and stop at once
//! when it stops being leader (or its term changes). Everything they run
//! hangs off one cancellation token per term; their writes are conditional on
//! the revisions they read, so a deposed leader that has not noticed yet can
//! change nothing.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::controllers::ControllerConfig;
use crate::controllers::{self, Informers};
use crate::events::Recorder;
use crate::registry::Registry;
use crate::scheduler;

/// How often leadership is checked.
const POLL: Duration = Duration::from_millis(25);

/// Runs the leader-only loops whenever this member leads, until it shuts down.
pub fn spawn(registry: Registry, cfg: ControllerConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(watch_leadership(registry, cfg))
}

struct Term {
    term: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Term {
    fn stop(self, why: &str) {
        self.cancel.cancel();
        self.task.abort();
        tracing::info!(
            term = self.term,
            why,
            "stopped the scheduler and controllers"
        );
    }
}

async fn watch_leadership(registry: Registry, cfg: ControllerConfig) {
    let node = registry.node().clone();
    let mut shutdown = node.shutdown_signal();
    let mut current: Option<Term> = None;
    loop {
        if *shutdown.borrow() {
            if let Some(t) = current.take() {
                t.stop("member shutting down");
            }
            return;
        }
        let leading = node.is_leader();
        let term = node.metrics().current_term;
        match current.take() {
            Some(t) if !leading => {
                tracing::info!(term = t.term, "lost leadership");
                t.stop("no longer leader");
            }
            Some(t) if t.term != term => {
                tracing::info!(old = t.term, new = term, "leader term changed");
                t.stop("term changed");
                current = Some(start(&registry, &cfg, term));
            }
            Some(t) => current = Some(t),
            None if leading => current = Some(start(&registry, &cfg, term)),
            None => {}
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

fn start(registry: &Registry, cfg: &ControllerConfig, term: u64) -> Term {
    let became = Instant::now();
    tracing::info!(
        term,
        member = registry.node().id,
        "became leader: starting the scheduler and controllers"
    );
    let cancel = CancellationToken::new();
    let span = tracing::info_span!("leader", term);
    let task = tokio::spawn(
        lead(registry.clone(), cfg.clone(), cancel.clone(), became, term).instrument(span),
    );
    Term { term, cancel, task }
}

/// Everything the leader runs for one term.
async fn lead(
    registry: Registry,
    cfg: ControllerConfig,
    cancel: CancellationToken,
    became: Instant,
    term: u64,
) {
    // Fence first: from now on a previous leader's controllers can write
    // nothing, creates included, and ours can write only until the next
    // leader fences us out in turn.
    let registry = loop {
        match registry.fenced(term).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "could not write the leader fencing token; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    };
    let inf = Informers::start(&registry, &cancel);
    let events = Recorder::start(registry.clone(), cancel.clone());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(scheduler::run(
        registry.clone(),
        inf.pods.clone(),
        inf.nodes.clone(),
        events.clone(),
        cancel.clone(),
    ));
    controllers::spawn_all(&mut tasks, &registry, &inf, &events, &cfg, &cancel);
    inf.synced().await;
    tracing::info!(
        active_after_ms = became.elapsed().as_millis() as u64,
        "controllers active: every informer synced"
    );
    // Dropping the set aborts every task when the term ends.
    cancel.cancelled().await;
    tasks.shutdown().await;
}
