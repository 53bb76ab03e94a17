//! Requests that used to take members down (issue 12), against real
//! 3-member clusters of `keel` processes: they get etcd's answer, the cluster
//! stays up and survives a full restart; and a member whose Raft core stops
//! exits non-zero instead of lingering as a zombie.

mod common;

use std::time::{Duration, Instant};

use common::etcdctl::*;
use common::*;
use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, HashKvRequest, RangeRequest, RequestOp, TxnRequest, request_op,
    response_op,
};

/// `etcdctl txn` with no compares and success ops `put x 1`, `get b a`
/// (a range ending before its key) took every member down, for good: the
/// entry was committed, so each member panicked again replaying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversed_range_in_a_txn_answers_empty_and_the_cluster_stays_up() {
    etcdctl_bin();
    let mut tc = start(3, &[]).await;
    let all = tc.c.endpoints().join(",");
    let out = ctl_on(&all, &["put", "a", "1"], None)
        .await
        .expect_ok("put a");
    assert_eq!(out.trim(), "OK");
    let out = ctl_on(&all, &["txn"], Some("\nput x 1\nget b a\n\n\n"))
        .await
        .expect_ok("txn with a reversed range");
    // etcd 3.4 prints SUCCESS, the put's OK, and nothing for the empty range.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["SUCCESS", "", "OK", ""],
        "{out:?}"
    );

    // The same forms through the API: DeleteRange, a compare with a
    // reversed range end (it compares an absent key: version 0 holds), a
    // range with a reversed end outside a txn.
    let ep = tc.c.endpoints()[0].clone();
    let mut kv = kv(&ep).await;
    let d = kv
        .delete_range(DeleteRangeRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            prev_kv: true,
        })
        .await
        .expect("reversed delete range")
        .into_inner();
    assert_eq!(d.deleted, 0);
    let t = kv
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"z".to_vec(),
                range_end: b"a".to_vec(),
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                target_union: Some(TargetUnion::Version(0)),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"z".to_vec(),
                        range_end: b"a".to_vec(),
                        prev_kv: false,
                    },
                )),
            }],
            failure: vec![],
        })
        .await
        .expect("txn with reversed compare and delete")
        .into_inner();
    assert!(t.succeeded);
    match &t.responses[0].response {
        Some(response_op::Response::ResponseDeleteRange(d)) => assert_eq!(d.deleted, 0),
        other => panic!("{other:?}"),
    }
    let r = kv
        .range(RangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("reversed range")
        .into_inner();
    assert!(r.kvs.is_empty() && r.count == 0);
    assert_eq!(
        ctl_on(&all, &["put", "after", "ok"], None)
            .await
            .expect_ok("put after")
            .trim(),
        "OK"
    );

    // Every member replays the committed entries after SIGKILL of all three.
    for i in 0..3 {
        tc.c.kill(i);
    }
    for i in 0..3 {
        tc.c.restart(i).expect("restart");
    }
    tc.c.wait_ready(Duration::from_secs(30))
        .await
        .expect("cluster ready after restart");
    assert_eq!(
        get(&ep, "x", false).await.expect("get x").as_deref(),
        Some("1")
    );
    let rev = put(&ep, "after-restart", "ok")
        .await
        .expect("write after restart");
    // All members applied the same history: their HashKV agree.
    let hashes = poll(
        Duration::from_secs(20),
        "equal HashKV on all members",
        || {
            let eps = tc.c.endpoints();
            async move {
                let mut hs = Vec::new();
                for ep in &eps {
                    let mut m = MaintenanceClient::new(channel(ep).await);
                    let h = m.hash_kv(HashKvRequest { revision: rev }).await.ok()?;
                    hs.push(h.into_inner().hash);
                }
                hs.windows(2).all(|w| w[0] == w[1]).then_some(hs)
            }
        },
    )
    .await;
    assert_eq!(hashes.len(), 3);
}

/// A member whose Raft core stops (here: a storage error while applying,
/// injected by a test-only failpoint) exits non-zero at once with a clear
/// log line, rather than keep its ports open and time every write out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_raft_core_stops_exits_non_zero() {
    let mut tc = start(3, &["--failpoint-apply-error-key", "keel-failpoint"]).await;
    let ep = tc.c.endpoints()[0].clone();
    put(&ep, "fine", "1").await.expect("an ordinary write");
    let sent = Instant::now();
    // Committed on a majority, then every member fails to apply it.
    let r = tokio::time::timeout(Duration::from_secs(15), put(&ep, "keel-failpoint", "x")).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a write that failed to apply was acknowledged: {r:?}"
    );
    // The leader applies the entry first and stops; the other two elect a
    // new leader, which commits the entry in its term and stops too. The
    // last member stops only if it learnt that commit before its peers
    // went: alone it has no quorum, its Raft core is still running and it
    // is not a zombie. So at least two members exit, and one still running
    // must never have seen its core stop.
    let mut exited = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut third_deadline = None;
    while exited.len() < 3 && Instant::now() < deadline {
        for i in 0..3 {
            if exited.iter().any(|(j, _, _)| *j == i) {
                continue;
            }
            if let Some(st) = tc.c.exit_status(i) {
                exited.push((i, st, sent.elapsed()));
            }
        }
        if exited.len() == 2 && third_deadline.is_none() {
            third_deadline = Some(Instant::now() + Duration::from_secs(3));
        }
        if third_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("exits after the write was sent: {exited:?}");
    assert!(
        exited.len() >= 2,
        "the members that applied the entry must exit: {exited:?}"
    );
    for (i, st, _) in &exited {
        assert!(!st.success(), "member {i} exited with {st}");
        let log = std::fs::read_to_string(tc.c.log_path(*i)).unwrap_or_default();
        assert!(
            log.contains("FATAL") && log.contains("Raft core stopped"),
            "member {i}'s log does not say why it exited:\n{}",
            &log[log.len().saturating_sub(3000)..]
        );
    }
    for i in (0..3).filter(|i| !exited.iter().any(|(j, _, _)| j == i)) {
        let log = std::fs::read_to_string(tc.c.log_path(i)).unwrap_or_default();
        if !log.contains("Raft core stopped") {
            continue;
        }
        // Its core stopped after all: it must be gone within a second.
        let by = Instant::now() + Duration::from_secs(1);
        while tc.c.exit_status(i).is_none() && Instant::now() < by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = tc.c.exit_status(i);
        assert!(
            st.is_some_and(|s| !s.success()),
            "member {i}'s Raft core stopped but it is still running: {st:?}"
        );
    }
}

/// A client that opens REST watches without end gets 429s once it holds
/// its per-user share (`--max-watches-per-user`), other users keep
/// watching, and a closed watch frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_watches_are_capped_per_user() {
    use keel_proto::client::{ApiClient, ClientError};
    let tc = start(1, &["--max-watches-per-user", "2"]).await;
    let api = vec![tc.c.members[0].api_addr()];
    let admin = ApiClient::new(&api, tc.c.credentials());
    let path = "/api/v1/namespaces/default/pods";
    let first = admin.watch(path, "").await.expect("first watch");
    let second = admin.watch(path, "").await.expect("second watch");
    match admin.watch(path, "").await {
        Err(ClientError::Api(s)) => {
            assert_eq!(s.code, 429, "{s:?}");
            assert!(s.message.contains("at most 2"), "{}", s.message);
        }
        Err(e) => panic!("the third watch failed otherwise: {e}"),
        Ok(_) => panic!("a third concurrent watch was served"),
    }
    // Another user has a share of their own.
    let other = token_client(&admin, tc.c.credentials(), &api, "other", "view").await;
    let _theirs = other.watch(path, "").await.expect("another user's watch");
    // Closing one frees its slot (the server notices the closed stream).
    drop(first);
    let again = poll(Duration::from_secs(10), "a freed watch slot", || async {
        admin.watch(path, "").await.ok()
    })
    .await;
    drop((second, again));
}
