//! A 4th member joins after the log was purged: it can only be brought up
//! by a snapshot, and ends up with every key and a vote.

mod common;

use std::time::Duration;

use common::*;
use keel_proto::etcdserverpb::MemberListRequest;
use keel_proto::etcdserverpb::cluster_client::ClusterClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_joins_by_snapshot_after_log_purge() {
    let mut tc = start(
        3,
        &["--snapshot-every", "50", "--keep-behind-snapshot", "5"],
    )
    .await;
    let eps = tc.c.endpoints();
    for i in 0..300 {
        put(&eps[i % 3], &format!("pre/{i:04}"), "x")
            .await
            .expect("put");
    }
    let leader = tc.c.leader().await.expect("leader");
    // The leader must have snapshotted (and so purged) by now.
    let log = tc.c.log_path(leader);
    poll(
        Duration::from_secs(10),
        "a snapshot on the leader",
        || async {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("built snapshot")
                .then_some(())
        },
    )
    .await;

    let new = tc.c.add_member(0).expect("spawn 4th member");
    let new_ep = tc.c.endpoints()[new].clone();
    let name = tc.c.members[new].name.clone();
    poll(
        Duration::from_secs(60),
        "4th member to become a voter",
        || async {
            let ms = ClusterClient::new(channel(&eps[0]).await)
                .member_list(MemberListRequest {
                    linearizable: false,
                })
                .await
                .ok()?
                .into_inner()
                .members;
            (ms.len() == 4 && ms.iter().any(|m| m.name == name && !m.is_learner)).then_some(())
        },
    )
    .await;
    let keys = poll(
        Duration::from_secs(30),
        "all keys on the new member",
        || async {
            let k = keys_with_prefix(&new_ep, "pre/", true).await.ok()?;
            (k.len() == 300).then_some(k)
        },
    )
    .await;
    assert_eq!(keys.first().map(String::as_str), Some("pre/0000"));
    let new_log = std::fs::read_to_string(tc.c.log_path(new)).unwrap();
    assert!(
        new_log.contains("installed snapshot"),
        "the new member was not brought up by a snapshot:\n{new_log}"
    );
    // It serves linearizable reads and takes writes like any member.
    put(&new_ep, "post", "y")
        .await
        .expect("write through new member");
    assert_eq!(get(&eps[0], "post", false).await.unwrap(), Some("y".into()));
}
