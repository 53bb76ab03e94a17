//! Multi-step changes of a member's data are crash-safe at every step: a
//! test-only failpoint (`--failpoint-crash-at`) aborts the process at each
//! step, as a SIGKILL there would, and the member, started again, ends with
//! every acknowledged write. Snapshot install (a follower brought up by a
//! snapshot) and `--force-new-cluster` (recovery after quorum loss).

mod common;

use std::time::Duration;

use common::*;

/// Waits until member `i` ended by the crash point `point` (an abort).
async fn crashed_at(tc: &mut TestCluster, i: usize, point: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = tc.c.exit_status(i) {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {i} never reached the crash point {point}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !status.success(),
        "member {i} exited cleanly at {point}: {status}"
    );
    let log = std::fs::read_to_string(tc.c.log_path(i)).unwrap_or_default();
    assert!(
        log.contains(&format!("failpoint: crashing at {point}")),
        "member {i} ended otherwise ({status}):\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_survives_a_crash_at_every_step() {
    let mut tc = start(
        3,
        &["--snapshot-every", "50", "--keep-behind-snapshot", "5"],
    )
    .await;
    let eps = tc.c.endpoints();
    // A follower is the one to fall behind; the other two keep a quorum.
    let leader = tc.c.leader().await.expect("a leader");
    let v = (leader + 1) % 3;
    let others: Vec<String> = (0..3).filter(|i| *i != v).map(|i| eps[i].clone()).collect();
    let mut acked = 0;
    for point in ["install-before-kv", "install-after-kv"] {
        // The follower falls behind past the others' purged log...
        tc.c.kill(v);
        for _ in 0..150 {
            let (k, ep) = (format!("k/{acked:05}"), &others[acked % 2]);
            // A write whose outcome is unknown (leadership moved) is sent
            // again: the same key and value, so the count below holds.
            poll(Duration::from_secs(10), "a put", || async {
                put(ep, &k, "v").await.ok()
            })
            .await;
            acked += 1;
        }
        // ...so it can only come back by a snapshot, and crashes installing it.
        tc.c.restart_with(v, &["--failpoint-crash-at", point])
            .unwrap();
        crashed_at(&mut tc, v, point).await;
        tc.c.restart(v).unwrap();
        let want = acked;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let got = loop {
            let n = keys_with_prefix(&eps[v], "k/", true).await.map(|k| k.len());
            if n.as_ref().is_ok_and(|n| *n == want) {
                break want;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(tc.c.log_path(v)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let at = lines.iter().position(|l| l.contains("panicked at"));
                let from = at.unwrap_or(lines.len().saturating_sub(40));
                panic!(
                    "after a crash at {point} the member has {n:?} of {want} keys; its log:\n{}",
                    lines[from..(from + 40).min(lines.len())].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("{point}: {got} keys on the restarted member");
    }
    // It is a full member again: it takes writes, and every member's
    // key space hashes the same at one revision.
    let rev = put(&eps[v], "after", "crashes")
        .await
        .expect("write via member 2");
    let hashes = equal_hash_kv(&eps, rev).await;
    assert_eq!(hashes.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_survives_a_crash_at_every_step() {
    let (mut tc, acked) = survivor_after_quorum_loss(40).await;
    for point in [
        "force-after-replay",
        "force-after-build",
        "force-after-move-old",
    ] {
        tc.c.restart_with(0, &["--force-new-cluster", "--failpoint-crash-at", point])
            .unwrap();
        crashed_at(&mut tc, 0, point).await;
    }
    // The last crash left the old dir moved aside and the new one not yet
    // in place: a plain start refuses rather than start empty...
    tc.c.restart(0).unwrap();
    let log = tc.c.log_path(0);
    poll(Duration::from_secs(20), "the refusal to start", || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("an interrupted --force-new-cluster")
            .then_some(())
    })
    .await;
    // ...and running the recovery again finishes it, with every write.
    tc.c.restart_with(0, &["--force-new-cluster"]).unwrap();
    tc.c.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_recovered(&tc, &acked).await;
}
