//! The leader compacts history beyond the configured retention through Raft:
//! every member drops the same old revisions, recent ones stay readable.

use std::time::Duration;

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
use keel_tests::{InProcessCluster, poll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_auto_compacts_old_history_on_every_member() {
    let c = InProcessCluster::start_with(3, |cfg| cfg.auto_compact_revisions = 20)
        .await
        .unwrap();
    let ch = c.channel(0);
    let mut kv = KvClient::new(ch);
    let mut last = 0;
    for i in 0..60 {
        last = kv
            .put(PutRequest {
                key: format!("k{}", i % 5).into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
    }
    let compacted = poll(
        Duration::from_secs(10),
        "compaction on every member",
        || async {
            let revs: Vec<i64> = c.nodes.iter().map(|n| n.kv.compact_revision()).collect();
            // Retention 20 with 10% slack: in the end at most 22 revisions remain.
            (revs[0] >= last - 22 && revs.iter().all(|r| *r == revs[0])).then_some(revs[0])
        },
    )
    .await;
    assert!(
        compacted <= last - 20,
        "compacted to {compacted}, last {last}: too much"
    );
    let old = kv
        .range(RangeRequest {
            key: b"k0".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::OutOfRange, "{old:?}");
    let recent = kv
        .range(RangeRequest {
            key: b"k0".to_vec(),
            revision: last - 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recent.kvs.len(), 1);
    c.shutdown().await;
}
