//! Watch streams survive a leader change without gaps or duplicates, and a
//! client that reconnects to another member with its last seen revision
//! continues exactly where it stopped.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};

/// Opens a watch on `prefix` from `start` on `ep`, returning the event stream.
async fn watch(
    ep: &str,
    prefix: &str,
    start: i64,
) -> tonic::Streaming<keel_proto::etcdserverpb::WatchResponse> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let req = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: end,
                start_revision: start,
                ..Default::default()
            },
        )),
    };
    WatchClient::new(channel(ep).await)
        .watch(futures::stream::iter(vec![req]).chain(futures::stream::pending()))
        .await
        .expect("watch")
        .into_inner()
}

/// Reads events until one with revision `upto` (or later) was seen.
async fn collect(
    s: &mut tonic::Streaming<keel_proto::etcdserverpb::WatchResponse>,
    revs: &mut Vec<i64>,
    upto: i64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while revs.last().is_none_or(|r| *r < upto) {
        let msg = tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap_or_else(|_| panic!("events up to {upto} did not arrive; got {revs:?}"))
            .expect("stream ended")
            .expect("watch error");
        assert!(!msg.canceled, "watch canceled: {}", msg.cancel_reason);
        revs.extend(
            msg.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_has_no_gap_across_leader_change_and_reconnect() {
    let mut tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    let first = put(&eps[0], "w/start", "0").await.expect("put");
    let leader = tc.c.leader().await.expect("leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    let mut s = watch(&eps[follower], "w/", first).await;

    let mut written = vec![first];
    for i in 0..40 {
        written.push(
            put(&eps[follower], &format!("w/{i}"), "a")
                .await
                .expect("put"),
        );
    }
    tc.c.kill(leader);
    for i in 40..80 {
        // Writes during the election may fail; retry until acknowledged.
        let key = format!("w/{i}");
        let rev = poll(
            Duration::from_secs(15),
            "a write after the kill",
            || async { put(&eps[follower], &key, "b").await.ok() },
        )
        .await;
        written.push(rev);
    }
    let mut seen = Vec::new();
    collect(&mut s, &mut seen, *written.last().unwrap()).await;
    // Every acknowledged write arrived, in strictly increasing order.
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "duplicate or reorder: {seen:?}"
    );
    for r in &written {
        assert!(
            seen.contains(r),
            "acknowledged revision {r} missing from the watch"
        );
    }
    // And the live stream equals the stored history (a write whose ack was
    // lost in the election may have applied; then both must show it).
    let mut replay = watch(&eps[other], "w/", first).await;
    let mut history = Vec::new();
    collect(&mut replay, &mut history, *seen.last().unwrap()).await;
    assert_eq!(seen, history, "live watch differs from the history replay");

    // Reconnect to another member from the last seen revision.
    drop(s);
    let last = *seen.last().unwrap();
    let mut more = Vec::new();
    for i in 80..100 {
        more.push(put(&eps[other], &format!("w/{i}"), "c").await.expect("put"));
    }
    let mut s2 = watch(&eps[other], "w/", last + 1).await;
    let mut seen2 = Vec::new();
    collect(&mut s2, &mut seen2, *more.last().unwrap()).await;
    assert_eq!(seen2, more);
    assert!(seen2[0] > last);
}
