//! The apply path is total: arbitrary commands (every range form, nested
//! transactions, leases, compactions, nonsense revisions, raw protobuf
//! bytes) never panic, and replicas that apply the same entries in
//! different batch splits reach the same answers and the same HashKV.
//!
//! Longer run: `PROPTEST_CASES=20000 cargo test --release -p keel-store --test apply_fuzz`.

use std::sync::Arc;

use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
};
use keel_proto::keelraft::{Command, CommandResult, command, command_result};
use keel_proto::mvccpb::KeyValue;
use keel_store::mvcc::KvStore;
use keel_store::mvcc::apply::BatchMeta;
use proptest::prelude::*;
use prost::Message;

fn meta() -> BatchMeta {
    BatchMeta {
        applied: serde_json::to_vec(&Option::<()>::None).unwrap(),
        membership: None,
        cluster_id: None,
    }
}

/// Keys that overlap as prefixes and ranges, plus the empty key and `\0`.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"a".to_vec()),
        Just(b"a/".to_vec()),
        Just(b"a/b".to_vec()),
        Just(b"b".to_vec()),
        Just(b"c".to_vec()),
        Just(vec![0xff]),
        proptest::collection::vec(any::<u8>(), 0..4),
    ]
}

fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), -3i64..40, Just(i64::MAX), Just(i64::MIN),]
}

fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 1i64..4, Just(-1i64), Just(i64::MAX)]
}

fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        proptest::collection::vec(any::<u8>(), 0..3),
        lease(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn range() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        key(),
        (-2i64..4),
        revision(),
        (any::<i32>(), any::<i32>()),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (revision(), revision(), revision(), revision()),
    )
        .prop_map(
            |(key, range_end, limit, revision, (so, st), (ser, ko, co), (a, b, c, d))| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: so % 4,
                    sort_target: st % 6,
                    serializable: ser,
                    keys_only: ko,
                    count_only: co,
                    min_mod_revision: a,
                    max_mod_revision: b,
                    min_create_revision: c,
                    max_create_revision: d,
                }
            },
        )
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), key(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    use compare::TargetUnion as U;
    (
        key(),
        key(),
        any::<i32>(),
        any::<i32>(),
        prop_oneof![
            (-2i64..6).prop_map(U::Version),
            revision().prop_map(U::CreateRevision),
            revision().prop_map(U::ModRevision),
            lease().prop_map(U::Lease),
            proptest::collection::vec(any::<u8>(), 0..3).prop_map(U::Value),
        ],
    )
        .prop_map(|(key, range_end, result, target, u)| Compare {
            key,
            range_end,
            result: result.rem_euclid(5),
            target: target.rem_euclid(6),
            target_union: Some(u),
        })
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        put().prop_map(request_op::Request::RequestPut),
        range().prop_map(request_op::Request::RequestRange),
        delete().prop_map(request_op::Request::RequestDeleteRange),
    ];
    let op = leaf.prop_recursive(3, 24, 4, |inner| {
        (
            proptest::collection::vec(compare(), 0..3),
            proptest::collection::vec(inner.clone(), 0..4),
            proptest::collection::vec(inner, 0..4),
        )
            .prop_map(|(c, s, f)| {
                request_op::Request::RequestTxn(TxnRequest {
                    compare: c,
                    success: s.into_iter().map(wrap).collect(),
                    failure: f.into_iter().map(wrap).collect(),
                })
            })
    });
    (
        proptest::collection::vec(compare(), 0..3),
        proptest::collection::vec(proptest::option::weighted(0.95, op.clone()), 0..5),
        proptest::collection::vec(proptest::option::weighted(0.95, op), 0..5),
    )
        .prop_map(|(compare, s, f)| TxnRequest {
            compare,
            success: s.into_iter().map(|r| RequestOp { request: r }).collect(),
            failure: f.into_iter().map(|r| RequestOp { request: r }).collect(),
        })
}

fn wrap(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn command() -> impl Strategy<Value = Command> {
    use command::Op;
    let op = prop_oneof![
        4 => put().prop_map(Op::Put),
        2 => delete().prop_map(Op::DeleteRange),
        4 => txn().prop_map(Op::Txn),
        1 => revision().prop_map(|revision| Op::Compact(CompactionRequest { revision, physical: false })),
        1 => (lease(), -5i64..100).prop_map(|(id, ttl)| Op::LeaseGrant(LeaseGrantRequest { id, ttl })),
        1 => lease().prop_map(|id| Op::LeaseRevoke(LeaseRevokeRequest { id })),
    ];
    prop_oneof![
        20 => op.prop_map(|op| Command { op: Some(op) }),
        1 => Just(Command { op: None }),
        // Whatever raw bytes happen to decode as a command.
        2 => proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| Command::decode(b.as_slice()).unwrap_or_default()),
    ]
}

/// Applies `cmds` split into batches of the given sizes.
fn apply_split(kv: &KvStore, cmds: &[Command], sizes: &[usize]) -> Vec<CommandResult> {
    let mut out = Vec::new();
    let mut rest = cmds;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let (now, later) = rest.split_at(n);
        rest = later;
        let refs: Vec<Option<&Command>> = now.iter().map(Some).collect();
        let res = kv.apply_batch(&refs, meta()).expect("storage works");
        out.extend(res.into_iter().map(|r| r.expect("a command has a result")));
    }
    out
}

fn replica() -> (tempfile::TempDir, Arc<KvStore>) {
    let d = tempfile::tempdir().unwrap();
    let kv = KvStore::open(d.path()).unwrap();
    (d, kv)
}

proptest! {
    // 128 cases in CI (each opens three sled stores); PROPTEST_CASES for more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_agree_on_arbitrary_commands(
        cmds in proptest::collection::vec(command(), 1..40),
        sizes in proptest::collection::vec(1usize..8, 1..4),
    ) {
        replicas_agree(&cmds, &sizes)?;
    }

    /// Puts and deletes of a few keys between compactions: the history a
    /// compaction must keep for the previous key-values that refer into it.
    #[test]
    fn replicas_agree_across_compactions(
        cmds in proptest::collection::vec(rewrite_or_compact(), 1..60),
        sizes in proptest::collection::vec(1usize..8, 1..4),
    ) {
        replicas_agree(&cmds, &sizes)?;
    }
}

/// A put or delete of one of three keys, or a compaction at a revision a
/// short run of them reaches.
fn rewrite_or_compact() -> impl Strategy<Value = Command> {
    use command::Op;
    let key = (0u8..3).prop_map(|i| vec![b'k', i]);
    prop_oneof![
        6 => (key.clone(), any::<u8>()).prop_map(|(key, v)| Op::Put(PutRequest {
            key,
            value: vec![v; 3],
            ..Default::default()
        })),
        2 => key.prop_map(|key| Op::DeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        })),
        2 => (1i64..40).prop_map(|revision| Op::Compact(CompactionRequest {
            revision,
            physical: false
        })),
    ]
    .prop_map(|op| Command { op: Some(op) })
}

/// Applies `cmds` one by one, in batches of `sizes` and as one batch on
/// three replicas, and checks that they answered and read the same.
fn replicas_agree(cmds: &[Command], sizes: &[usize]) -> Result<(), TestCaseError> {
    let (_a, one_by_one) = replica();
    let (_b, split) = replica();
    let (_c, whole) = replica();
    let r1 = apply_split(&one_by_one, cmds, &[1]);
    let r2 = apply_split(&split, cmds, sizes);
    let r3 = apply_split(&whole, cmds, &[cmds.len()]);
    for (i, r) in r1.iter().enumerate() {
        // A caught panic answers Internal: the fuzz must never reach one.
        if let Some(command_result::Result::Error(e)) = &r.result {
            prop_assert!(
                !e.message.contains("applying the request failed"),
                "command {i} panicked inside apply: {:?}: {}",
                cmds[i],
                e.message
            );
        }
    }
    prop_assert_eq!(
        &r1,
        &r2,
        "one-by-one and split batches answered differently"
    );
    prop_assert_eq!(&r1, &r3, "one-by-one and one batch answered differently");
    let h1 = one_by_one.hash_kv(0).unwrap();
    prop_assert_eq!(h1, split.hash_kv(0).unwrap());
    prop_assert_eq!(h1, whole.hash_kv(0).unwrap());
    prop_assert_eq!(one_by_one.revision(), whole.revision());
    prop_assert_eq!(one_by_one.compact_revision(), whole.compact_revision());
    // History, previous key-values and past revisions read the same
    // however the batches fell (each stores references differently and
    // keeps different records through a compaction), also reopened.
    let from = one_by_one.compact_revision().max(1);
    let (events, _) = one_by_one.events_between(from, None).unwrap();
    prop_assert_eq!(&events, &split.events_between(from, None).unwrap().0);
    prop_assert_eq!(&events, &whole.events_between(from, None).unwrap().0);
    drop(whole);
    let whole = KvStore::open(_c.path()).unwrap();
    prop_assert_eq!(&events, &whole.events_between(from, None).unwrap().0);
    for at in from..=one_by_one.revision() {
        let h = one_by_one.hash_kv(at).unwrap();
        prop_assert_eq!(h, split.hash_kv(at).unwrap(), "at {}", at);
        prop_assert_eq!(h, whole.hash_kv(at).unwrap(), "at {}", at);
    }
    // Each event's previous key-value is what the key's event before it
    // in the history left (a put's key-value, nothing after a delete).
    let mut last: std::collections::HashMap<Vec<u8>, Option<KeyValue>> = Default::default();
    for (rev, ev) in &events {
        let kv = ev.kv.clone().unwrap();
        if let Some(before) = last.get(&kv.key) {
            prop_assert_eq!(&ev.prev_kv, before, "event at {}", rev);
        }
        let is_put = ev.r#type == keel_proto::mvccpb::event::EventType::Put as i32;
        last.insert(kv.key.clone(), is_put.then_some(kv));
    }
    Ok(())
}
