//! Lease expiry is decided by the leader and replicated through Raft: keys
//! of an expired lease disappear on every member at the same revision, while
//! a kept-alive lease survives past its TTL.

use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use keel_tests::{InProcessCluster, poll};
use tonic::transport::Channel;

async fn count(ch: Channel, key: &str) -> (i64, i64) {
    let r = KvClient::new(ch)
        .range(RangeRequest {
            key: key.into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.count, r.header.unwrap().revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_deletes_keys_on_every_member_and_keepalive_prevents_it() {
    let c = InProcessCluster::start(3).await.unwrap();
    let mut lease = LeaseClient::new(c.channel(1));
    // The TTL runs from the grant, so no expiry may come earlier than two
    // seconds after the grant request was sent (measuring from after the
    // later puts would count their time against the lease).
    let sent = Instant::now();
    let short = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner();
    let kept = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(short.id, kept.id);
    let mut kv = KvClient::new(c.channel(1));
    for (k, l) in [("short", short.id), ("kept", kept.id)] {
        kv.put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease: l,
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // Keep `kept` alive through a follower's stream (forwarded to the leader).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let keeper = tokio::spawn(async move {
        loop {
            if tx
                .send(LeaseKeepAliveRequest { id: kept.id })
                .await
                .is_err()
            {
                return;
            }
            match answers.next().await {
                Some(Ok(r)) => assert_eq!(r.ttl, 2, "keep-alive answered TTL {}", r.ttl),
                other => panic!("keep-alive stream broke: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // `short` expires: its key goes away on every member, at one revision.
    let revs = poll(Duration::from_secs(15), "expiry on all members", || async {
        let mut revs = Vec::new();
        for i in 0..3 {
            let (n, rev) = count(c.channel(i), "short").await;
            if n != 0 {
                return None;
            }
            revs.push(rev);
        }
        revs.windows(2).all(|w| w[0] == w[1]).then_some(revs)
    })
    .await;
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "expired before its TTL: {:?} after the grant was sent",
        sent.elapsed()
    );
    assert!(revs[0] > 1);
    // Let more than `kept`'s TTL pass again (this wait is the behaviour under
    // test, not a readiness guess): keep-alives must have saved it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(c.channel(0), "kept").await.0,
        1,
        "kept-alive lease expired"
    );
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: short.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1, "expired lease still known");
    keeper.abort();
    // Every member applied the same history: equal HashKV at the current revision.
    let hashes = poll(Duration::from_secs(10), "equal hashes", || async {
        let mut hs = Vec::new();
        for i in 0..3 {
            hs.push(c.nodes[i].kv.hash_kv(0).ok()?);
        }
        hs.windows(2).all(|w| w[0] == w[1]).then_some(hs)
    })
    .await;
    assert_eq!(hashes.len(), 3);
    c.shutdown().await;
}

/// A lease revoked and granted again under the same ID gets the new grant's
/// TTL at once, not what was left of the old one (the leader's deadlines
/// are refreshed only every 250 ms; a re-grant in between used to keep the
/// old deadline). Found by the differential test against etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_granted_again_under_the_same_id_gets_the_new_ttl() {
    use keel_proto::etcdserverpb::LeaseRevokeRequest;
    let c = InProcessCluster::start(3).await.unwrap();
    let mut lease = LeaseClient::new(c.channel(0));
    let ttl_of = |mut lease: LeaseClient<Channel>| async move {
        let r = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id: 7, keys: false })
            .await
            .unwrap()
            .into_inner();
        (r.ttl, r.granted_ttl)
    };
    for round in 0..5 {
        let long = 80_000 + round;
        lease
            .lease_grant(LeaseGrantRequest { ttl: long, id: 7 })
            .await
            .unwrap();
        // A keep-alive puts the old grant's deadline in the leader's memory.
        let once = futures::stream::iter([LeaseKeepAliveRequest { id: 7 }]);
        let mut kept = lease.lease_keep_alive(once).await.unwrap().into_inner();
        assert_eq!(kept.next().await.unwrap().unwrap().ttl, long);
        let (left, granted) = ttl_of(lease.clone()).await;
        assert_eq!(granted, long);
        assert!(left > long - 5 && left <= long, "left {left} of {long}");
        lease
            .lease_revoke(LeaseRevokeRequest { id: 7 })
            .await
            .unwrap();
        lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 7 })
            .await
            .unwrap();
        let (left, granted) = ttl_of(lease.clone()).await;
        assert_eq!(granted, 60);
        assert!(
            (55..=60).contains(&left),
            "round {round}: a new grant of 60 s has {left} s left"
        );
        lease
            .lease_revoke(LeaseRevokeRequest { id: 7 })
            .await
            .unwrap();
    }
}
