//! Leader fencing: once a newer leader has written its fencing token, every
//! write through an older leader's registry (create, replace, delete) fails
//! and changes nothing, while the API's own (unfenced) writes go on.

use std::time::Duration;

use keel_controlplane::{Registry, kinds};
use keel_proto::api::Lease;
use keel_store::node::LeaderRequest;
use keel_tests::{InProcessCluster, typed};

/// The mod_revision of `key` (0 if absent).
async fn keys_rev(reg: &Registry, key: &str) -> i64 {
    reg.raw_get(key, false)
        .await
        .unwrap()
        .map(|(_, rev)| rev)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_writes_change_nothing() {
    let c = InProcessCluster::start(3).await.unwrap();
    let first = c.leader().unwrap();
    let follower = (first + 1) % 3;
    let plain = Registry::new(c.nodes[first].clone());
    plain.ensure_namespaces().await.unwrap();
    // Only the leader itself can write a fencing token: a member with a
    // stale view of leadership must not get one committed through the
    // leader (it would fence the real leader out).
    let fence_rev = || keys_rev(&plain, "/keel/leader");
    let before_fence = fence_rev().await;
    let e = Registry::new(c.nodes[follower].clone())
        .fenced(1)
        .await
        .unwrap_err();
    assert!(e.message.contains("not the leader"), "{e}");
    assert_eq!(fence_rev().await, before_fence, "a follower wrote a fence");

    let old = plain.fenced(1).await.unwrap();
    let l = old.create_t(&Lease::new("default", "a")).await.unwrap();
    // Leadership moves; the newer leader fences the old one out.
    c.nodes[first]
        .leader_call(LeaderRequest::TransferLeader(c.nodes[follower].id))
        .await
        .unwrap();
    // As the leader loop does, the new leader retries until its own Raft
    // accepts the write (its metrics can name it before it takes writes).
    let new = keel_tests::poll(
        Duration::from_secs(10),
        "the new leader's fence",
        || async {
            Registry::new(c.nodes[follower].clone())
                .fenced(2)
                .await
                .ok()
        },
    )
    .await;
    let before = plain.revision().await.unwrap();

    let e = old.create_t(&Lease::new("default", "b")).await.unwrap_err();
    assert_eq!(e.code, 409);
    assert!(e.message.contains("fenced"), "{e}");
    let mut changed = l.clone();
    changed.spec.holder_identity = "old-leader".into();
    let e = typed::update(&old, &changed).await.unwrap_err();
    assert!(e.message.contains("fenced"), "{e}");
    let e = typed::delete(&old, &l).await.unwrap_err();
    assert!(e.message.contains("fenced"), "{e}");
    assert_eq!(
        plain.revision().await.unwrap(),
        before,
        "nothing was written"
    );
    let kept: Lease = plain.get_t("default", "a").await.unwrap();
    assert_eq!(kept.spec.holder_identity, "");
    assert!(plain.get_t::<Lease>("default", "b").await.is_err());

    // The new leader and the API are unaffected; a plain conflict is still a conflict.
    typed::update(&new, &changed).await.unwrap();
    let e = typed::update(&new, &changed).await.unwrap_err();
    assert_eq!(e.reason, "Conflict");
    assert!(!e.message.contains("fenced"), "{e}");
    plain
        .create(
            kinds::of::<Lease>(),
            serde_json::to_value(Lease::new("default", "c")).unwrap(),
        )
        .await
        .unwrap();
    c.shutdown().await;
}
