//! Quorum loss: two of three members' data dirs are gone. `keel cluster
//! recover` names the survivor, `--force-new-cluster` brings it back as a
//! single-member cluster with every acknowledged write, and refuses to run a
//! second time.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_recovers_a_survivor_without_losing_acknowledged_writes() {
    let (mut tc, acked) = survivor_after_quorum_loss(50).await;
    let d0 = tc.c.members[0].data_dir.clone();
    let d1 = tc.c.members[1].data_dir.clone();
    let out = common::keel()
        .args(["cluster", "recover", "--data-dir"])
        .arg(&d0)
        .arg("--data-dir")
        .arg(&d1)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("unusable"), "{report}");
    assert!(
        report.contains(&format!("Most recent state: {}", d0.display())),
        "{report}"
    );

    tc.c.restart_with(0, &["--force-new-cluster"]).unwrap();
    tc.c.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_recovered(&tc, &acked).await;
    let ep = tc.c.endpoints()[0].clone();

    // A second --force-new-cluster by accident is refused.
    tc.c.restart_with(0, &["--force-new-cluster"]).unwrap();
    let log = tc.c.log_path(0);
    poll(
        Duration::from_secs(10),
        "the refusal in the log",
        || async {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("already forced into a new cluster")
                .then_some(())
        },
    )
    .await;
    // Started normally it serves the recovered data.
    tc.c.restart(0).unwrap();
    tc.c.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        get(&ep, "after", false).await.unwrap(),
        Some("recovery".into())
    );
}
