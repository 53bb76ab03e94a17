//! SIGKILL of the leader under a steady write load: a new leader is elected,
//! writes resume, every acknowledged write survives, and the killed member
//! restarts from its data dir and catches up.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write_and_member_catches_up() {
    let mut tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (eps, acked, stop) = (eps.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{w}/{n:06}");
                // Round-robin over members; a failed (unknown outcome) write
                // is not counted as acknowledged.
                if put(&eps[n % eps.len()], &key, "v").await.is_ok() {
                    acked.lock().await.push((key, Instant::now()));
                }
                n += 1;
            }
        }));
    }
    poll(
        Duration::from_secs(10),
        "writes before the kill",
        || async { (acked.lock().await.len() > 50).then_some(()) },
    )
    .await;

    let old = tc.c.leader().await.expect("a leader");
    let old_id = tc.c.status(old).await.expect("status").0;
    let killed_at = Instant::now();
    tc.c.kill(old);

    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new_leader = poll(Duration::from_secs(10), "a new leader", || async {
        let s = tc.c.status(others[0]).await?;
        (s.1 != 0 && s.1 != old_id).then_some(s.1)
    })
    .await;
    assert_ne!(new_leader, old_id);
    poll(Duration::from_secs(10), "writes after the kill", || async {
        let a = acked.lock().await;
        (a.iter().filter(|(_, t)| *t > killed_at).count() > 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let acked: BTreeSet<String> = acked.lock().await.iter().map(|(k, _)| k.clone()).collect();
    let live = &eps[others[0]];
    let present: BTreeSet<String> = keys_with_prefix(live, "load/", false)
        .await
        .expect("linearizable read")
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The killed member restarts from disk and catches up.
    tc.c.restart(old).expect("restart");
    let restarted = eps[old].clone();
    poll(
        Duration::from_secs(30),
        "restarted member to catch up",
        || async {
            let keys: BTreeSet<String> = keys_with_prefix(&restarted, "load/", true)
                .await
                .ok()?
                .into_iter()
                .collect();
            acked.is_subset(&keys).then_some(())
        },
    )
    .await;
}
