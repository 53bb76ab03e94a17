//! Bad requests against a 3-member cluster get etcd's gRPC code and message
//! and change nothing: the store revision is the same before and after.

mod common;

use std::time::Duration;

use common::*;
use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::request_op::Request as Op;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// The current store revision, read linearizably through `ep`.
async fn revision(ep: &str) -> i64 {
    kv(ep)
        .await
        .range(RangeRequest {
            key: b"any".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision
}

/// Asserts `r` failed with `code` and a message containing `msg`.
fn assert_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str, what: &str) {
    let s = match r {
        Ok(v) => panic!("{what}: accepted, expected {code:?} {msg:?}: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(s.code(), code, "{what}: wrong code ({})", s.message());
    assert!(
        s.message().contains(msg),
        "{what}: message {:?} does not contain {msg:?}",
        s.message()
    );
}

/// Runs `f`, asserting it left the revision seen by every member unchanged.
async fn unchanged<F, Fut>(eps: &[String], what: &str, f: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = revision(&eps[0]).await;
    f().await;
    for ep in eps {
        assert_eq!(
            revision(ep).await,
            before,
            "{what} changed the revision (seen through {ep})"
        );
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_keyless_puts_are_refused() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    put(&eps[0], "seed", "x").await.expect("put");

    unchanged(&eps, "1.6 MiB put", || async {
        let r = kv(&eps[1])
            .await
            .put(PutRequest {
                key: b"big".to_vec(),
                value: vec![b'x'; 1_677_722], // 1.6 MiB
                ..Default::default()
            })
            .await;
        assert_err(
            r,
            Code::InvalidArgument,
            "request is too large",
            "1.6 MiB put",
        );
    })
    .await;
    assert_eq!(get(&eps[0], "big", false).await.unwrap(), None);

    unchanged(&eps, "put with empty key", || async {
        let r = kv(&eps[2])
            .await
            .put(PutRequest {
                key: Vec::new(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await;
        assert_err(
            r,
            Code::InvalidArgument,
            "key is not provided",
            "empty key put",
        );
    })
    .await;

    // A put just under the limit is still accepted (the limit is not too low).
    put(&eps[1], "almost-big", &"x".repeat(1_500_000))
        .await
        .expect("1.5 MB put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_txns_are_refused() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    put(&eps[0], "k", "v0").await.expect("put");

    let cases = [
        (
            "compare VALUE with a version operand",
            TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: b"k".to_vec(),
                    target_union: Some(TargetUnion::Version(1)),
                    ..Default::default()
                }],
                success: vec![put_op("k", "v1")],
                failure: vec![put_op("k", "v2")],
            },
            "compare",
        ),
        (
            "compare with an empty key",
            TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: Vec::new(),
                    target_union: Some(TargetUnion::Version(1)),
                    ..Default::default()
                }],
                success: vec![put_op("k", "v1")],
                failure: vec![put_op("k", "v2")],
            },
            "key is not provided",
        ),
        (
            "the same key put twice",
            TxnRequest {
                compare: Vec::new(),
                success: vec![put_op("dup", "a"), put_op("other", "b"), put_op("dup", "c")],
                failure: Vec::new(),
            },
            "duplicate key",
        ),
    ];
    for (i, (what, txn, msg)) in cases.into_iter().enumerate() {
        unchanged(&eps, what, || async {
            let r = kv(&eps[i % 3]).await.txn(txn).await;
            assert_err(r, Code::InvalidArgument, msg, what);
        })
        .await;
    }
    assert_eq!(get(&eps[0], "k", false).await.unwrap(), Some("v0".into()));
    assert_eq!(get(&eps[0], "dup", false).await.unwrap(), None);
    assert_eq!(get(&eps[0], "other", false).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_leases_are_not_found() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    put(&eps[0], "seed", "x").await.expect("put");

    unchanged(&eps, "put with unknown lease", || async {
        let r = kv(&eps[1])
            .await
            .put(PutRequest {
                key: b"leased".to_vec(),
                value: b"v".to_vec(),
                lease: 12345,
                ..Default::default()
            })
            .await;
        assert_err(
            r,
            Code::NotFound,
            "requested lease not found",
            "put with unknown lease",
        );
    })
    .await;
    assert_eq!(get(&eps[0], "leased", false).await.unwrap(), None);

    unchanged(&eps, "revoke of unknown lease", || async {
        let r = LeaseClient::new(channel(&eps[2]).await)
            .lease_revoke(LeaseRevokeRequest { id: 12345 })
            .await;
        assert_err(
            r,
            Code::NotFound,
            "requested lease not found",
            "revoke unknown lease",
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_and_future_revisions_are_out_of_range() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    let mut revs = Vec::new();
    for i in 0..6 {
        revs.push(put(&eps[0], "hist", &format!("v{i}")).await.expect("put"));
    }
    let r = revs[3];
    let cr = KvClient::new(channel(&eps[0]).await)
        .compact(CompactionRequest {
            revision: r,
            physical: true,
        })
        .await
        .expect("compact")
        .into_inner();
    let after_compact = cr.header.expect("header").revision;

    // Every member: a linearizable read below r is compacted (the read
    // barrier makes the member apply the compaction first); at r it works.
    for ep in &eps {
        unchanged(&eps, "range at a compacted revision", || async {
            let r = kv(ep)
                .await
                .range(RangeRequest {
                    key: b"hist".to_vec(),
                    revision: revs[2],
                    ..Default::default()
                })
                .await;
            assert_err(
                r,
                Code::OutOfRange,
                "compacted",
                "range below the compaction",
            );
        })
        .await;
        let at = kv(ep)
            .await
            .range(RangeRequest {
                key: b"hist".to_vec(),
                revision: r,
                ..Default::default()
            })
            .await
            .expect("range at the compaction revision")
            .into_inner();
        assert_eq!(
            at.kvs.first().map(|kv| kv.value.clone()),
            Some(b"v3".to_vec())
        );
    }

    unchanged(&eps, "range at a future revision", || async {
        let r = kv(&eps[1])
            .await
            .range(RangeRequest {
                key: b"hist".to_vec(),
                revision: after_compact + 1_000_000,
                ..Default::default()
            })
            .await;
        assert_err(
            r,
            Code::OutOfRange,
            "future revision",
            "range at a future revision",
        );
    })
    .await;

    // A watch from before the compaction is cancelled with the compact revision.
    for ep in &eps {
        let (tx, rx) = mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"hist".to_vec(),
                    start_revision: revs[1],
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let mut stream = WatchClient::new(channel(ep).await)
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let cancel = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = stream
                    .message()
                    .await
                    .expect("watch stream error")
                    .expect("watch stream ended without a cancel");
                assert!(
                    m.events.is_empty(),
                    "compacted watch on {ep} delivered events: {m:?}"
                );
                if m.canceled {
                    return m;
                }
                assert!(m.created, "unexpected watch response on {ep}: {m:?}");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no cancel for a compacted watch on {ep}"));
        assert_eq!(
            cancel.compact_revision, r,
            "compact_revision on {ep}: {cancel:?}"
        );
        drop(tx);
    }
    assert_eq!(
        revision(&eps[2]).await,
        after_compact,
        "the watches changed the revision"
    );
}
