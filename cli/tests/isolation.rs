//! A follower cut off from the others serves no linearizable read (only
//! serializable, possibly stale, ones) and recovers when the others return.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_serves_no_linearizable_read() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    put(&eps[0], "k", "v1").await.expect("put");
    let leader = tc.c.leader().await.expect("leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    // Wait until the follower applied v1, so the serializable read below is meaningful.
    poll(Duration::from_secs(10), "follower to apply", || async {
        (get(&eps[follower], "k", true).await.ok()?.as_deref() == Some("v1")).then_some(())
    })
    .await;

    // Isolate the follower: freeze both other members.
    for i in (0..3).filter(|i| *i != follower) {
        tc.c.pause(i);
    }
    let lin = get(&eps[follower], "k", false).await;
    assert!(
        lin.is_err(),
        "isolated follower answered a linearizable read: {lin:?}"
    );
    let code = lin.unwrap_err().code();
    assert!(
        matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "unexpected code {code:?}"
    );
    // Serializable reads are still served locally.
    assert_eq!(
        get(&eps[follower], "k", true).await.expect("serializable"),
        Some("v1".into())
    );
    // Writes through it cannot commit either.
    assert!(put(&eps[follower], "k", "v2").await.is_err());

    for i in (0..3).filter(|i| *i != follower) {
        tc.c.resume(i);
    }
    poll(
        Duration::from_secs(20),
        "linearizable read after healing",
        || async { get(&eps[follower], "k", false).await.ok().flatten() },
    )
    .await;
}
