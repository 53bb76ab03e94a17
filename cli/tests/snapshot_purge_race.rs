//! The conditions of openraft issue #2116 (a panic in the Raft core when a
//! log purge races an apply, with `keep_behind_snapshot` small): a snapshot
//! every 20 entries with nothing kept behind it, writers on every member,
//! and a follower SIGKILLed and restarted twice under that load, so it
//! catches up by snapshot install while the leader keeps building and
//! purging. No member may panic or stop; every acknowledged write is on
//! every member; all members' key spaces hash the same at one revision.
//! (The panic has not been reproduced with Keel's storage; this
//! keeps the conditions under test.)

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Waits until `n` more writes than `from` were acknowledged.
async fn acked_beyond(acked: &Mutex<Vec<String>>, from: usize, n: usize) -> usize {
    poll(
        Duration::from_secs(60),
        "more acknowledged writes",
        || async {
            let len = acked.lock().unwrap().len();
            (len >= from + n).then_some(len)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_snapshots_and_purges_under_restarts_never_stop_a_member() {
    let mut tc = start(
        3,
        &["--snapshot-every", "20", "--keep-behind-snapshot", "0"],
    )
    .await;
    let eps = tc.c.endpoints();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (eps, acked, stop) = (eps.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("race/{w}/{i:06}");
                // Any member: a killed one fails and the next write tries another.
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    put(&eps[(w + i) % eps.len()], &key, "v"),
                )
                .await
                {
                    Ok(Ok(_)) => acked.lock().unwrap().push(key),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                i += 1;
            }
        }));
    }
    let mut seen = acked_beyond(&acked, 0, 200).await;
    let mut restarted = Vec::new();
    for _ in 0..2 {
        // Polled: a member restarted just before may not know the leader yet.
        let leader =
            tc.c.wait_ready(Duration::from_secs(30))
                .await
                .expect("a leader");
        let f = (leader + 1) % 3;
        tc.c.kill(f);
        seen = acked_beyond(&acked, seen, 200).await;
        tc.c.restart(f).expect("restart the follower");
        restarted.push(f);
        seen = acked_beyond(&acked, seen, 200).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for i in 0..3 {
        assert!(
            tc.c.exit_status(i).is_none(),
            "member {i} exited: {:?}",
            tc.c.exit_status(i)
        );
        let log = std::fs::read_to_string(tc.c.log_path(i)).unwrap_or_default();
        assert!(
            !log.contains("panicked") && !log.contains("Raft core stopped"),
            "member {i} logged a panic or a stopped core"
        );
    }
    let leader =
        tc.c.wait_ready(Duration::from_secs(30))
            .await
            .expect("a leader");
    let built = std::fs::read_to_string(tc.c.log_path(leader)).unwrap_or_default();
    assert!(built.contains("built snapshot"), "no snapshot was built");
    // The restarted followers caught up by snapshot: the log they missed
    // was purged.
    for f in restarted {
        let log = std::fs::read_to_string(tc.c.log_path(f)).unwrap_or_default();
        assert!(
            log.contains("installed snapshot"),
            "member {f} caught up without a snapshot"
        );
    }
    let acked = acked.lock().unwrap().clone();
    let rev = put(&eps[leader], "race-end", "x")
        .await
        .expect("a last write");
    for ep in &eps {
        let keys = poll(
            Duration::from_secs(30),
            "every acknowledged write",
            || async {
                let keys = keys_with_prefix(ep, "race/", true).await.ok()?;
                (keys.len() >= acked.len()).then_some(keys)
            },
        )
        .await;
        let keys: std::collections::BTreeSet<String> = keys.into_iter().collect();
        let missing: Vec<&String> = acked.iter().filter(|k| !keys.contains(*k)).collect();
        assert!(missing.is_empty(), "{ep} lost {missing:?}");
    }
    let hashes = equal_hash_kv(&eps, rev).await;
    eprintln!(
        "{} acknowledged writes, {} members agree at revision {rev}",
        acked.len(),
        hashes.len()
    );
}
