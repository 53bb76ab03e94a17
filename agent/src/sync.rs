//! The pod sync loop: watches the pods bound to this node (over the masters'
//! gRPC Agent service, `pod_watch`: a list, then every change, resuming on
//! the next master after errors and listing again after compaction) and keeps one worker per
//! pod (see `lifecycle`), so the runtime matches the API: new pods start,
//! deleted ones stop. Losing the API never touches a running pod; only an
//! explicit deletion (or absence from a fresh list) stops one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::api::Pod;
use tokio::sync::{mpsc, watch};

use crate::Ctx;
use crate::lifecycle;
use crate::pod_watch;
use crate::state::PodRecord;
use crate::watcher::Event;

struct Handle {
    spec: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the sync loop until `shutdown` turns true. `adopted` is what the
/// previous agent on this data dir left running.
pub async fn run(ctx: Arc<Ctx>, adopted: Vec<PodRecord>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let w = tokio::spawn(pod_watch::run(
        ctx.client.servers().to_vec(),
        ctx.cfg.name.clone(),
        ctx.cfg.credentials.clone(),
        tx,
    ));
    let mut adopted: Option<HashMap<String, PodRecord>> =
        Some(adopted.into_iter().map(|r| (r.uid.clone(), r)).collect());
    let mut to_adopt: HashMap<String, PodRecord> = HashMap::new();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    // Containers get `<SVC>_SERVICE_HOST` variables, so wait (briefly) for
    // the proxy's first list of Services before starting any.
    let mut synced = ctx.services_synced.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s)).await;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Reset(pods) => {
                        let live: HashSet<String> =
                            pods.iter().map(|p| p.metadata.uid.clone()).collect();
                        if let Some(prev) = adopted.take() {
                            for (uid, rec) in prev {
                                if live.contains(&uid) {
                                    to_adopt.insert(uid, rec);
                                } else {
                                    tokio::spawn(lifecycle::stop_orphan(ctx.clone(), rec));
                                }
                            }
                        }
                        for (uid, h) in &workers {
                            if !live.contains(uid) {
                                h.spec.send_replace(None);
                            }
                        }
                        tracing::debug!(pods = pods.len(), "pods listed");
                        for p in pods {
                            upsert(&ctx, &mut workers, &mut to_adopt, &done_tx, p);
                        }
                    }
                    Event::Apply(p) => upsert(&ctx, &mut workers, &mut to_adopt, &done_tx, p),
                    Event::Delete(p) => {
                        if let Some(h) = workers.get(&p.metadata.uid) {
                            h.spec.send_replace(None);
                        }
                    }
                }
            }
        }
    }
    w.abort();
    if ctx.cfg.stop_pods_on_exit {
        tracing::info!(pods = workers.len(), "stopping every pod before exiting");
        let tasks: Vec<_> = workers
            .into_values()
            .map(|h| {
                h.spec.send_replace(None);
                h.task
            })
            .collect();
        futures::future::join_all(tasks).await;
    }
    // Otherwise dropping the senders ends the workers and leaves their
    // processes running for the next agent to adopt.
}

fn upsert(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, Handle>,
    to_adopt: &mut HashMap<String, PodRecord>,
    done: &mpsc::UnboundedSender<String>,
    p: Pod,
) {
    let uid = p.metadata.uid.clone();
    let deleting = p.metadata.deletion_timestamp.is_some();
    if let Some(h) = workers.get(&uid) {
        h.spec.send_replace(if deleting { None } else { Some(p) });
        return;
    }
    if deleting {
        return;
    }
    let (tx, rx) = watch::channel(Some(p.clone()));
    let adopted = to_adopt.remove(&uid);
    let (ctx, done, u) = (ctx.clone(), done.clone(), uid.clone());
    let task = tokio::spawn(async move {
        lifecycle::run(ctx, p, adopted, rx).await;
        let _ = done.send(u);
    });
    workers.insert(uid, Handle { spec: tx, task });
}
