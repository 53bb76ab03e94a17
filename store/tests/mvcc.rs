//! The etcd-shaped key space: revisions, ranges, transactions, compaction,
//! leases, events, snapshots and persistence, driven through
//! `KvStore::apply_batch` with plain etcd requests, as the Raft state machine
//! drives it.

use std::sync::Arc;

use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse, compare, request_op, response_op,
};
use keel_proto::keelraft::{Command, CommandError, command, command_result};
use keel_proto::mvccpb::{KeyValue, event};
use keel_store::EtcdError;
use keel_store::mvcc::KvStore;
use keel_store::mvcc::apply::{BatchMeta, validate_txn};
use keel_store::mvcc::keys::{self, prefix_end};
use keel_store::mvcc::snapshot;
use tempfile::TempDir;
use tokio::sync::broadcast::error::TryRecvError;

use command::Op;
use command_result::Result as R;
use compare::{CompareResult, CompareTarget, TargetUnion};

// ---------------------------------------------------------------- helpers

fn open() -> (TempDir, Arc<KvStore>) {
    let dir = tempfile::tempdir().unwrap();
    let kv = KvStore::open(dir.path()).unwrap();
    (dir, kv)
}

fn meta() -> BatchMeta {
    BatchMeta {
        applied: serde_json::to_vec(&Option::<()>::None).unwrap(),
        membership: None,
        cluster_id: None,
    }
}

fn cmd(op: Op) -> Command {
    Command { op: Some(op) }
}

/// Applies one command as a batch of its own and returns its result.
fn exec(kv: &KvStore, op: Op) -> R {
    let c = cmd(op);
    let mut res = kv.apply_batch(&[Some(&c)], meta()).unwrap();
    assert_eq!(res.len(), 1);
    res.remove(0)
        .expect("a command has a result")
        .result
        .expect("a result is set")
}

/// Applies several commands as one batch.
fn exec_batch(kv: &KvStore, ops: Vec<Op>) -> Vec<R> {
    let cmds: Vec<Command> = ops.into_iter().map(cmd).collect();
    let refs: Vec<Option<&Command>> = cmds.iter().map(Some).collect();
    kv.apply_batch(&refs, meta())
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().result.unwrap())
        .collect()
}

fn expect_error(r: R) -> CommandError {
    match r {
        R::Error(e) => e,
        other => panic!("expected an error result, got {other:?}"),
    }
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn put_op(k: &str, v: &str) -> Op {
    Op::Put(put_req(k, v))
}

fn put(kv: &KvStore, k: &str, v: &str) -> PutResponse {
    match exec(kv, put_op(k, v)) {
        R::Put(p) => p,
        other => panic!("put {k}: {other:?}"),
    }
}

fn put_with_lease(kv: &KvStore, k: &str, v: &str, lease: i64) -> R {
    exec(
        kv,
        Op::Put(PutRequest {
            lease,
            ..put_req(k, v)
        }),
    )
}

fn del_req(k: &str, end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: k.as_bytes().to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn delete(kv: &KvStore, k: &str, end: &[u8]) -> DeleteRangeResponse {
    match exec(kv, Op::DeleteRange(del_req(k, end))) {
        R::DeleteRange(d) => d,
        other => panic!("delete {k}: {other:?}"),
    }
}

fn txn(kv: &KvStore, t: TxnRequest) -> TxnResponse {
    match exec(kv, Op::Txn(t)) {
        R::Txn(t) => t,
        other => panic!("txn: {other:?}"),
    }
}

fn range_req(k: &str, end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: k.as_bytes().to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn range(kv: &KvStore, req: RangeRequest) -> RangeResponse {
    kv.range(&req).unwrap()
}

fn get(kv: &KvStore, k: &str) -> Option<KeyValue> {
    let mut r = range(kv, range_req(k, b""));
    assert!(r.kvs.len() <= 1);
    r.kvs.pop()
}

fn get_at(kv: &KvStore, k: &str, rev: i64) -> Option<KeyValue> {
    let mut r = range(
        kv,
        RangeRequest {
            revision: rev,
            ..range_req(k, b"")
        },
    );
    assert!(r.kvs.len() <= 1);
    r.kvs.pop()
}

fn value(kv: &KeyValue) -> &str {
    std::str::from_utf8(&kv.value).unwrap()
}

fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put_req(k, v))),
    }
}

fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn op_del(k: &str, end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(del_req(k, end))),
    }
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget, u: TargetUnion) -> Compare {
    Compare {
        key: k.as_bytes().to_vec(),
        result: result as i32,
        target: target as i32,
        target_union: Some(u),
        ..Default::default()
    }
}

fn cmp_value(k: &str, result: CompareResult, v: &str) -> Compare {
    cmp(
        k,
        result,
        CompareTarget::Value,
        TargetUnion::Value(v.as_bytes().to_vec()),
    )
}

fn cmp_version(k: &str, result: CompareResult, v: i64) -> Compare {
    cmp(k, result, CompareTarget::Version, TargetUnion::Version(v))
}

fn cmp_create(k: &str, result: CompareResult, v: i64) -> Compare {
    cmp(
        k,
        result,
        CompareTarget::Create,
        TargetUnion::CreateRevision(v),
    )
}

fn cmp_mod(k: &str, result: CompareResult, v: i64) -> Compare {
    cmp(k, result, CompareTarget::Mod, TargetUnion::ModRevision(v))
}

/// Runs a txn whose only job is to report whether `c` holds.
fn holds(kv: &KvStore, c: Compare) -> bool {
    let before = kv.revision();
    let t = txn(
        kv,
        TxnRequest {
            compare: vec![c],
            ..Default::default()
        },
    );
    assert_eq!(
        kv.revision(),
        before,
        "a read-only txn must not bump the revision"
    );
    t.succeeded
}

fn grant(kv: &KvStore, id: i64, ttl: i64) {
    match exec(kv, Op::LeaseGrant(LeaseGrantRequest { ttl, id })) {
        R::LeaseGrant(g) => {
            assert_eq!(g.id, id);
            assert_eq!(g.ttl, ttl);
        }
        other => panic!("lease grant: {other:?}"),
    }
}

fn compact(kv: &KvStore, rev: i64) -> R {
    exec(
        kv,
        Op::Compact(CompactionRequest {
            revision: rev,
            physical: false,
        }),
    )
}

// ---------------------------------------------------------------- revisions

#[test]
fn fresh_store_is_at_revision_one() {
    let (_d, kv) = open();
    assert_eq!(kv.revision(), 1);
    assert_eq!(kv.compact_revision(), 0);
    let r = range(&kv, range_req("\0", b"\0"));
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 0);
    assert_eq!(r.header.unwrap().revision, 1);
}

#[test]
fn each_put_bumps_the_revision_by_one() {
    let (_d, kv) = open();
    for (i, k) in ["a", "b", "a", "c"].iter().enumerate() {
        let resp = put(&kv, k, "v");
        let expect = 2 + i as i64;
        assert_eq!(kv.revision(), expect);
        assert_eq!(resp.header.unwrap().revision, expect);
    }
}

#[test]
fn per_key_revisions_and_versions_follow_etcd() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // rev 2
    let a = get(&kv, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 2, 1));

    put(&kv, "other", "x"); // rev 3
    put(&kv, "a", "2"); // rev 4
    let a = get(&kv, "a").unwrap();
    assert_eq!(value(&a), "2");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 4, 2));

    put(&kv, "a", "3"); // rev 5
    let a = get(&kv, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 5, 3));

    // The other key is untouched.
    let o = get(&kv, "other").unwrap();
    assert_eq!((o.create_revision, o.mod_revision, o.version), (3, 3, 1));

    // Delete, then re-create: a new life of the key.
    let d = delete(&kv, "a", b""); // rev 6
    assert_eq!(d.deleted, 1);
    assert_eq!(d.header.unwrap().revision, 6);
    assert!(get(&kv, "a").is_none());
    put(&kv, "a", "again"); // rev 7
    let a = get(&kv, "a").unwrap();
    assert_eq!(value(&a), "again");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (7, 7, 1));
    assert_eq!(kv.revision(), 7);
}

#[test]
fn a_batch_of_commands_takes_one_revision_per_writing_command() {
    let (_d, kv) = open();
    let a = cmd(put_op("a", "1"));
    let b = cmd(put_op("b", "1"));
    let miss = cmd(Op::DeleteRange(del_req("missing", b"")));
    let res = kv
        .apply_batch(&[Some(&a), None, Some(&miss), Some(&b)], meta())
        .unwrap();
    assert_eq!(res.len(), 4);
    assert!(res[1].is_none(), "a blank entry has no result");
    match res[0].clone().unwrap().result.unwrap() {
        R::Put(p) => assert_eq!(p.header.unwrap().revision, 2),
        other => panic!("{other:?}"),
    }
    match res[2].clone().unwrap().result.unwrap() {
        R::DeleteRange(d) => {
            assert_eq!(d.deleted, 0);
            assert_eq!(d.header.unwrap().revision, 2);
        }
        other => panic!("{other:?}"),
    }
    match res[3].clone().unwrap().result.unwrap() {
        R::Put(p) => assert_eq!(p.header.unwrap().revision, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.revision(), 3);
    assert_eq!(get(&kv, "b").unwrap().mod_revision, 3);

    // Blank entries alone change nothing.
    kv.apply_batch(&[None, None], meta()).unwrap();
    assert_eq!(kv.revision(), 3);
}

// ---------------------------------------------------------------- put / delete

#[test]
fn put_with_prev_kv_returns_the_previous_value() {
    let (_d, kv) = open();
    let first = match exec(
        &kv,
        Op::Put(PutRequest {
            prev_kv: true,
            ..put_req("k", "v1")
        }),
    ) {
        R::Put(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(first.prev_kv.is_none(), "no previous value on create");

    let second = match exec(
        &kv,
        Op::Put(PutRequest {
            prev_kv: true,
            ..put_req("k", "v2")
        }),
    ) {
        R::Put(p) => p,
        other => panic!("{other:?}"),
    };
    let prev = second.prev_kv.expect("previous value");
    assert_eq!(value(&prev), "v1");
    assert_eq!(prev.mod_revision, 2);
    assert_eq!(prev.version, 1);

    // Without prev_kv nothing is returned.
    assert!(put(&kv, "k", "v3").prev_kv.is_none());
}

#[test]
fn put_ignore_value_keeps_the_value_and_needs_an_existing_key() {
    let (_d, kv) = open();
    let e = expect_error(exec(
        &kv,
        Op::Put(PutRequest {
            ignore_value: true,
            ..put_req("k", "")
        }),
    ));
    assert_eq!(e.message, EtcdError::KeyNotFound.to_string());
    assert_eq!(kv.revision(), 1);

    put(&kv, "k", "keep");
    exec(
        &kv,
        Op::Put(PutRequest {
            ignore_value: true,
            ..put_req("k", "")
        }),
    );
    let k = get(&kv, "k").unwrap();
    assert_eq!(value(&k), "keep");
    assert_eq!(k.version, 2);
}

#[test]
fn put_with_empty_key_is_rejected() {
    let (_d, kv) = open();
    let e = expect_error(exec(&kv, put_op("", "v")));
    assert_eq!(e.message, EtcdError::EmptyKey.to_string());
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert_eq!(kv.revision(), 1);
}

#[test]
fn delete_prefix_deletes_the_right_keys_in_one_revision() {
    let (_d, kv) = open();
    for k in ["app/a", "app/b", "app/c", "apq", "ap", "other"] {
        put(&kv, k, "v");
    }
    assert_eq!(kv.revision(), 7);
    let resp = match exec(
        &kv,
        Op::DeleteRange(DeleteRangeRequest {
            prev_kv: true,
            ..del_req("app/", &prefix_end(b"app/"))
        }),
    ) {
        R::DeleteRange(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(resp.deleted, 3);
    assert_eq!(keys_of(&resp.prev_kvs), ["app/a", "app/b", "app/c"]);
    assert_eq!(resp.header.unwrap().revision, 8);
    assert_eq!(kv.revision(), 8, "one delete_range is one revision");
    let left = range(&kv, range_req("\0", b"\0"));
    assert_eq!(keys_of(&left.kvs), ["ap", "apq", "other"]);

    // The three delete events share revision 8.
    let (events, cur) = kv.events_between(8, None).unwrap();
    assert_eq!(cur, 8);
    assert_eq!(events.len(), 3);
    for (rev, ev) in &events {
        assert_eq!(*rev, 8);
        assert_eq!(ev.r#type, event::EventType::Delete as i32);
        assert_eq!(ev.kv.as_ref().unwrap().mod_revision, 8);
    }
}

#[test]
fn deleting_nothing_does_not_bump_the_revision() {
    let (_d, kv) = open();
    put(&kv, "a", "1");
    let d = delete(&kv, "nothing", b"");
    assert_eq!(d.deleted, 0);
    assert_eq!(d.header.unwrap().revision, 2);
    let d = delete(&kv, "x/", &prefix_end(b"x/"));
    assert_eq!(d.deleted, 0);
    assert_eq!(kv.revision(), 2);
    assert!(kv.events_between(3, None).unwrap().0.is_empty());
}

#[test]
fn delete_from_key_to_the_end() {
    let (_d, kv) = open();
    for k in ["a", "b", "c", "d"] {
        put(&kv, k, "v");
    }
    let d = delete(&kv, "b", b"\0");
    assert_eq!(d.deleted, 3);
    assert_eq!(keys_of(&range(&kv, range_req("\0", b"\0")).kvs), ["a"]);
    assert_eq!(kv.revision(), 6);
}

// ---------------------------------------------------------------- range

fn seed_range(kv: &KvStore) {
    // revisions 2..=6
    for (k, v) in [
        ("pods/a", "1"),
        ("pods/b", "2"),
        ("pods/c", "3"),
        ("svc/a", "4"),
        ("zz", "5"),
    ] {
        put(kv, k, v);
    }
}

#[test]
fn range_single_key_and_prefix() {
    let (_d, kv) = open();
    seed_range(&kv);
    let r = range(&kv, range_req("pods/b", b""));
    assert_eq!(keys_of(&r.kvs), ["pods/b"]);
    assert_eq!(value(&r.kvs[0]), "2");
    assert_eq!(r.count, 1);
    assert!(!r.more);
    assert_eq!(r.header.unwrap().revision, 6);

    // A single key does not match its extensions.
    assert!(range(&kv, range_req("pods/", b"")).kvs.is_empty());
    assert!(range(&kv, range_req("pods/bb", b"")).kvs.is_empty());

    let r = range(&kv, range_req("pods/", &prefix_end(b"pods/")));
    assert_eq!(keys_of(&r.kvs), ["pods/a", "pods/b", "pods/c"]);
    assert_eq!(r.count, 3);
}

#[test]
fn range_end_nul_means_every_key_from_key_on() {
    let (_d, kv) = open();
    seed_range(&kv);
    let r = range(&kv, range_req("pods/c", b"\0"));
    assert_eq!(keys_of(&r.kvs), ["pods/c", "svc/a", "zz"]);
    let r = range(&kv, range_req("\0", b"\0"));
    assert_eq!(r.count, 5);
}

#[test]
fn range_limit_sets_more_and_count_is_the_total() {
    let (_d, kv) = open();
    seed_range(&kv);
    let r = range(
        &kv,
        RangeRequest {
            limit: 2,
            ..range_req("pods/", &prefix_end(b"pods/"))
        },
    );
    assert_eq!(keys_of(&r.kvs), ["pods/a", "pods/b"]);
    assert!(r.more);
    assert_eq!(r.count, 3);

    let r = range(
        &kv,
        RangeRequest {
            limit: 3,
            ..range_req("pods/", &prefix_end(b"pods/"))
        },
    );
    assert_eq!(r.kvs.len(), 3);
    assert!(!r.more, "limit equal to the count is not `more`");
}

#[test]
fn range_count_only_and_keys_only() {
    let (_d, kv) = open();
    seed_range(&kv);
    let r = range(
        &kv,
        RangeRequest {
            count_only: true,
            ..range_req("pods/", &prefix_end(b"pods/"))
        },
    );
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);

    let r = range(
        &kv,
        RangeRequest {
            keys_only: true,
            ..range_req("pods/", &prefix_end(b"pods/"))
        },
    );
    assert_eq!(keys_of(&r.kvs), ["pods/a", "pods/b", "pods/c"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    // Metadata is still there.
    assert_eq!(r.kvs[1].mod_revision, 3);
    assert_eq!(r.kvs[1].version, 1);
}

#[test]
fn range_sorts_filters_and_then_limits() {
    use keel_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    let (_d, kv) = open();
    put(&kv, "c", "1"); // 2
    put(&kv, "a", "3"); // 3
    put(&kv, "b", "2"); // 4
    put(&kv, "c", "4"); // 5
    let all = || range_req("\0", b"\0");

    let r = range(
        &kv,
        RangeRequest {
            sort_order: SortOrder::Descend as i32,
            ..all()
        },
    );
    assert_eq!(keys_of(&r.kvs), ["c", "b", "a"]);

    // A sort target without an order sorts ascending.
    let r = range(
        &kv,
        RangeRequest {
            sort_target: SortTarget::Mod as i32,
            ..all()
        },
    );
    assert_eq!(keys_of(&r.kvs), ["a", "b", "c"]);
    let r = range(
        &kv,
        RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 2,
            ..all()
        },
    );
    assert_eq!(keys_of(&r.kvs), ["c", "a"], "limit applies after sorting");
    assert!(r.more);
    assert_eq!(r.count, 3);

    // etcd 3.4 quirk: a sort target without an order keeps the limit when
    // reading, so it fetches the first limit + 1 keys in key order, sorts
    // those and cuts to the limit ("a"=3, "b"=2 → b, then a; "c" never read).
    put(&kv, "d", "0"); // 6
    let r = range(
        &kv,
        RangeRequest {
            sort_target: SortTarget::Value as i32,
            limit: 1,
            ..all()
        },
    );
    assert_eq!(keys_of(&r.kvs), ["b"]);
    assert!(r.more);
    assert_eq!(r.count, 4);

    let r = range(
        &kv,
        RangeRequest {
            min_mod_revision: 4,
            ..all()
        },
    );
    assert_eq!(keys_of(&r.kvs), ["b", "c", "d"]);
    let r = range(
        &kv,
        RangeRequest {
            max_create_revision: 3,
            ..all()
        },
    );
    assert_eq!(keys_of(&r.kvs), ["a", "c"]);
}

#[test]
fn range_empty_key_and_future_revision_are_errors() {
    let (_d, kv) = open();
    seed_range(&kv);
    assert_eq!(
        kv.range(&range_req("", b"")).unwrap_err(),
        EtcdError::EmptyKey
    );
    assert_eq!(
        kv.range(&RangeRequest {
            revision: 7,
            ..range_req("zz", b"")
        })
        .unwrap_err(),
        EtcdError::FutureRevision
    );
    // The current revision itself is fine.
    assert!(get_at(&kv, "zz", 6).is_some());
}

#[test]
fn historic_reads_see_the_key_space_as_it_was() {
    let (_d, kv) = open();
    put(&kv, "k", "v1"); // 2
    put(&kv, "k", "v2"); // 3
    put(&kv, "late", "x"); // 4
    put(&kv, "k", "v3"); // 5
    delete(&kv, "k", b""); // 6
    put(&kv, "after", "y"); // 7

    // Value as of an old revision, with its metadata of then.
    let k2 = get_at(&kv, "k", 2).unwrap();
    assert_eq!((value(&k2), k2.version, k2.mod_revision), ("v1", 1, 2));
    let k4 = get_at(&kv, "k", 4).unwrap();
    assert_eq!((value(&k4), k4.version, k4.mod_revision), ("v2", 2, 3));
    assert_eq!(value(&get_at(&kv, "k", 5).unwrap()), "v3");

    // Absent before its creation.
    assert!(get_at(&kv, "late", 3).is_none());
    assert!(get_at(&kv, "late", 1).is_none());
    assert!(get_at(&kv, "late", 4).is_some());

    // Deleted now, visible at an old revision; gone at the deletion revision.
    assert!(get(&kv, "k").is_none());
    assert!(get_at(&kv, "k", 6).is_none());
    assert!(get_at(&kv, "k", 7).is_none());

    // A historic prefix read.
    let r = range(
        &kv,
        RangeRequest {
            revision: 4,
            ..range_req("\0", b"\0")
        },
    );
    assert_eq!(keys_of(&r.kvs), ["k", "late"]);
    assert_eq!(r.count, 2);
    // The header reports the current revision, as etcd does.
    assert_eq!(r.header.unwrap().revision, 7);
}

// ---------------------------------------------------------------- txn

#[test]
fn txn_compares_on_value() {
    let (_d, kv) = open();
    put(&kv, "k", "m");
    use CompareResult::*;
    assert!(holds(&kv, cmp_value("k", Equal, "m")));
    assert!(!holds(&kv, cmp_value("k", Equal, "n")));
    assert!(holds(&kv, cmp_value("k", Greater, "a")));
    assert!(!holds(&kv, cmp_value("k", Greater, "m")));
    assert!(!holds(&kv, cmp_value("k", Greater, "z")));
    assert!(holds(&kv, cmp_value("k", Less, "z")));
    assert!(!holds(&kv, cmp_value("k", Less, "m")));
    assert!(holds(&kv, cmp_value("k", NotEqual, "x")));
    assert!(!holds(&kv, cmp_value("k", NotEqual, "m")));
}

#[test]
fn txn_compares_on_version_create_and_mod_revision() {
    let (_d, kv) = open();
    put(&kv, "x", "0"); // 2
    put(&kv, "k", "1"); // 3: create
    put(&kv, "k", "2"); // 4: mod, version 2
    use CompareResult::*;
    assert!(holds(&kv, cmp_version("k", Equal, 2)));
    assert!(!holds(&kv, cmp_version("k", Equal, 1)));
    assert!(holds(&kv, cmp_version("k", Greater, 1)));
    assert!(!holds(&kv, cmp_version("k", Greater, 2)));
    assert!(holds(&kv, cmp_version("k", Less, 3)));
    assert!(!holds(&kv, cmp_version("k", Less, 2)));
    assert!(holds(&kv, cmp_version("k", NotEqual, 5)));
    assert!(!holds(&kv, cmp_version("k", NotEqual, 2)));

    assert!(holds(&kv, cmp_create("k", Equal, 3)));
    assert!(!holds(&kv, cmp_create("k", Equal, 4)));
    assert!(holds(&kv, cmp_create("k", Greater, 2)));
    assert!(holds(&kv, cmp_create("k", Less, 4)));
    assert!(!holds(&kv, cmp_create("k", NotEqual, 3)));

    assert!(holds(&kv, cmp_mod("k", Equal, 4)));
    assert!(!holds(&kv, cmp_mod("k", Equal, 3)));
    assert!(holds(&kv, cmp_mod("k", Greater, 3)));
    assert!(!holds(&kv, cmp_mod("k", Greater, 4)));
    assert!(holds(&kv, cmp_mod("k", Less, 5)));
    assert!(holds(&kv, cmp_mod("k", NotEqual, 3)));
}

#[test]
fn txn_compares_on_a_missing_key() {
    let (_d, kv) = open();
    put(&kv, "present", "v");
    use CompareResult::*;
    // A value compare on a missing key is false whatever the operator.
    assert!(!holds(&kv, cmp_value("missing", Equal, "")));
    assert!(!holds(&kv, cmp_value("missing", NotEqual, "v")));
    assert!(!holds(&kv, cmp_value("missing", Less, "zzz")));
    // A missing key has version, create and mod revision 0 (create-if-absent idiom).
    assert!(holds(&kv, cmp_version("missing", Equal, 0)));
    assert!(holds(&kv, cmp_create("missing", Equal, 0)));
    assert!(holds(&kv, cmp_mod("missing", Less, 1)));
    assert!(!holds(&kv, cmp_version("present", Equal, 0)));
}

#[test]
fn txn_compare_over_a_range_must_hold_for_every_key() {
    let (_d, kv) = open();
    put(&kv, "p/a", "1");
    put(&kv, "p/b", "1");
    put(&kv, "p/c", "2");
    let mut c = cmp_value("p/", CompareResult::Equal, "1");
    c.range_end = b"p/c".to_vec();
    assert!(holds(&kv, c.clone()));
    c.range_end = prefix_end(b"p/");
    assert!(!holds(&kv, c));
}

#[test]
fn txn_runs_the_success_or_the_failure_branch() {
    let (_d, kv) = open();
    put(&kv, "lock", "free"); // 2

    let t = txn(
        &kv,
        TxnRequest {
            compare: vec![cmp_value("lock", CompareResult::Equal, "free")],
            success: vec![op_put("lock", "taken"), op_range(range_req("lock", b""))],
            failure: vec![op_put("loser", "1")],
        },
    );
    assert!(t.succeeded);
    assert_eq!(t.responses.len(), 2);
    assert_eq!(t.header.unwrap().revision, 3);
    match &t.responses[1].response {
        Some(response_op::Response::ResponseRange(r)) => {
            // A range after a put in the same txn sees the put.
            assert_eq!(value(&r.kvs[0]), "taken");
        }
        other => panic!("{other:?}"),
    }
    assert!(get(&kv, "loser").is_none());

    let t = txn(
        &kv,
        TxnRequest {
            compare: vec![cmp_value("lock", CompareResult::Equal, "free")],
            success: vec![op_put("lock", "taken-again")],
            failure: vec![op_put("loser", "1"), op_range(range_req("lock", b""))],
        },
    );
    assert!(!t.succeeded);
    assert_eq!(t.responses.len(), 2);
    match &t.responses[0].response {
        Some(response_op::Response::ResponsePut(p)) => {
            assert_eq!(p.header.as_ref().unwrap().revision, 4)
        }
        other => panic!("{other:?}"),
    }
    match &t.responses[1].response {
        Some(response_op::Response::ResponseRange(r)) => assert_eq!(value(&r.kvs[0]), "taken"),
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&get(&kv, "lock").unwrap()), "taken");
    assert_eq!(value(&get(&kv, "loser").unwrap()), "1");
    assert_eq!(kv.revision(), 4);
}

#[test]
fn txn_writes_share_one_revision() {
    let (_d, kv) = open();
    put(&kv, "old", "x"); // 2
    let t = txn(
        &kv,
        TxnRequest {
            compare: vec![],
            success: vec![
                op_put("a", "1"),
                op_put("b", "2"),
                op_del("old", b""),
                op_put("c", "3"),
            ],
            failure: vec![],
        },
    );
    assert!(t.succeeded, "no compares: success");
    assert_eq!(kv.revision(), 3, "a whole txn is one revision");
    assert_eq!(t.header.unwrap().revision, 3);
    for k in ["a", "b", "c"] {
        let v = get(&kv, k).unwrap();
        assert_eq!((v.create_revision, v.mod_revision), (3, 3), "key {k}");
    }
    assert!(get(&kv, "old").is_none());
    let (events, _) = kv.events_between(3, None).unwrap();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|(r, _)| *r == 3));
}

#[test]
fn read_only_txn_does_not_bump_the_revision() {
    let (_d, kv) = open();
    put(&kv, "a", "1");
    let t = txn(
        &kv,
        TxnRequest {
            compare: vec![cmp_version("a", CompareResult::Equal, 1)],
            success: vec![op_range(range_req("a", b""))],
            failure: vec![],
        },
    );
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, 2);
    assert_eq!(kv.revision(), 2);
}

#[test]
fn txn_with_an_invalid_op_applies_nothing() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // 2
    // The second op refers to a lease that does not exist.
    let bad = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            lease: 99,
            ..put_req("b", "1")
        })),
    };
    let e = expect_error(exec(
        &kv,
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op_put("a", "2"), bad.clone()],
            failure: vec![],
        }),
    ));
    assert_eq!(e.message, "etcdserver: requested lease not found");
    assert_eq!(kv.revision(), 2);
    assert_eq!(value(&get(&kv, "a").unwrap()), "1");

    // Nested: the inner txn's bad op comes after the outer put (its
    // compare, like etcd's, sees the state before the txn); everything is
    // rolled back.
    let inner = TxnRequest {
        compare: vec![cmp_value("a", CompareResult::Equal, "1")],
        success: vec![bad],
        failure: vec![],
    };
    let e = expect_error(exec(
        &kv,
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                op_put("a", "2"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner)),
                },
            ],
            failure: vec![],
        }),
    ));
    assert_eq!(e.message, "etcdserver: requested lease not found");
    assert_eq!(kv.revision(), 2);
    assert_eq!(value(&get(&kv, "a").unwrap()), "1");
    assert!(kv.events_between(3, None).unwrap().0.is_empty());
}

#[test]
fn txn_historic_read_after_a_write_reads_the_pre_txn_revision() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // 2
    let t = txn(
        &kv,
        TxnRequest {
            compare: vec![],
            success: vec![
                op_put("a", "2"),
                op_range(RangeRequest {
                    revision: 2,
                    ..range_req("a", b"")
                }),
            ],
            failure: vec![],
        },
    );
    match &t.responses[1].response {
        Some(response_op::Response::ResponseRange(r)) => {
            assert_eq!(r.kvs.len(), 1);
            assert_eq!(value(&r.kvs[0]), "1");
        }
        other => panic!("{other:?}"),
    }
}

/// The same commands must give the same answers whether openraft hands them
/// to the state machine one by one or in one batch (members batch differently).
#[test]
fn txn_historic_read_is_the_same_whether_batched_or_not() {
    let historic_txn = || {
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                op_put("b", "x"),
                op_range(RangeRequest {
                    revision: 2,
                    ..range_req("a", b"")
                }),
            ],
            failure: vec![],
        })
    };
    let range_of = |r: &R| -> Vec<KeyValue> {
        match r {
            R::Txn(t) => match &t.responses[1].response {
                Some(response_op::Response::ResponseRange(r)) => r.kvs.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };

    // One by one.
    let (_d1, one) = open();
    put(&one, "a", "1"); // 2
    let separate = exec(&one, historic_txn());
    let separate = range_of(&separate);
    assert_eq!(separate.len(), 1);
    assert_eq!(value(&separate[0]), "1");

    // In one batch.
    let (_d2, two) = open();
    let res = exec_batch(&two, vec![put_op("a", "1"), historic_txn()]);
    assert_eq!(two.revision(), one.revision());
    let batched = range_of(&res[1]);
    assert_eq!(
        batched, separate,
        "a range at revision 2 inside a txn returned different results when the \
         txn was applied in the same batch as the put that created revision 2"
    );
}

/// Compaction must drop the same history whether the events below the
/// compaction revision were applied in earlier batches or earlier in the same
/// batch: members batch differently, and their key spaces must not diverge.
#[test]
fn compaction_is_the_same_whether_batched_or_not() {
    let ops = || {
        vec![
            put_op("a", "1"), // 2
            put_op("a", "2"), // 3
            Op::Compact(CompactionRequest {
                revision: 3,
                physical: false,
            }),
        ]
    };
    let (_d1, one) = open();
    for op in ops() {
        exec(&one, op);
    }
    let (_d2, two) = open();
    let res = exec_batch(&two, ops());
    assert!(matches!(res[2], R::Compact(_)), "{res:?}");

    assert_eq!(one.revision(), two.revision());
    assert_eq!(one.compact_revision(), two.compact_revision());
    assert_eq!(one.hash_kv(0).unwrap(), two.hash_kv(0).unwrap());
    // The same answers: the event at the compaction revision with its
    // previous key-value, and the key space as it was there.
    assert_eq!(
        one.events_between(3, None).unwrap(),
        two.events_between(3, None).unwrap()
    );
    let prev = one.events_between(3, None).unwrap().0[0].1.prev_kv.clone();
    assert_eq!(
        prev.map(|kv| (kv.value, kv.mod_revision)),
        Some((b"1".to_vec(), 2))
    );
    assert_eq!(one.hash_kv(3).unwrap(), two.hash_kv(3).unwrap());
    // History below the compaction revision is gone, but for the record
    // holding revision 2 where the event at 3 refers to it rather than
    // holding its previous key-value (applied one at a time, the put at 3
    // was stored before the compaction).
    let below = |kv: &KvStore| -> Vec<i64> {
        snapshot::parse(&kv.dump().0)
            .unwrap()
            .into_iter()
            .filter_map(|(k, _)| keys::history_rev(k))
            .filter(|r| *r < 3)
            .collect()
    };
    assert_eq!(below(&one), [2]);
    assert!(
        below(&two).is_empty(),
        "history below the compaction revision survived a compaction applied \
         in the same batch: {:?}",
        below(&two)
    );
    // Once the event referring to it is compacted, it goes too.
    for kv in [&one, &two] {
        exec(kv, put_op("a", "3")); // 4
        exec(
            kv,
            Op::Compact(CompactionRequest {
                revision: 4,
                physical: false,
            }),
        );
        assert!(below(kv).is_empty(), "{:?}", below(kv));
        let (events, _) = kv.events_between(4, None).unwrap();
        let prev = events[0].1.prev_kv.clone().unwrap();
        assert_eq!((prev.value, prev.mod_revision), (b"2".to_vec(), 3));
    }
}

// ---------------------------------------------------------------- validate_txn

#[test]
fn validate_txn_rejects_malformed_compares() {
    let bad = Compare {
        key: b"k".to_vec(),
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        target_union: Some(TargetUnion::Version(1)),
        ..Default::default()
    };
    let t = TxnRequest {
        compare: vec![bad],
        ..Default::default()
    };
    assert!(matches!(
        validate_txn(&t, 128),
        Err(EtcdError::InvalidCompare(_))
    ));

    let missing_union = Compare {
        key: b"k".to_vec(),
        target: CompareTarget::Mod as i32,
        ..Default::default()
    };
    let t = TxnRequest {
        compare: vec![missing_union],
        ..Default::default()
    };
    assert!(matches!(
        validate_txn(&t, 128),
        Err(EtcdError::InvalidCompare(_))
    ));

    let unknown_result = Compare {
        result: 42,
        ..cmp_value("k", CompareResult::Equal, "v")
    };
    let t = TxnRequest {
        compare: vec![unknown_result],
        ..Default::default()
    };
    assert!(matches!(
        validate_txn(&t, 128),
        Err(EtcdError::InvalidCompare(_))
    ));

    let t = TxnRequest {
        compare: vec![cmp_value("", CompareResult::Equal, "v")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::EmptyKey));
}

#[test]
fn validate_txn_accepts_well_formed_txns() {
    let t = TxnRequest {
        compare: vec![
            cmp_value("a", CompareResult::Equal, "v"),
            cmp_version("a", CompareResult::Greater, 0),
            cmp_create("b", CompareResult::Less, 5),
            cmp_mod("c", CompareResult::NotEqual, 3),
        ],
        success: vec![op_put("a", "1"), op_put("b", "2"), op_del("z", b"")],
        failure: vec![op_put("a", "3"), op_range(range_req("a", b""))],
    };
    assert_eq!(validate_txn(&t, 128), Ok(()));
}

#[test]
fn validate_txn_rejects_duplicate_writes() {
    let t = TxnRequest {
        success: vec![op_put("a", "1"), op_put("b", "1"), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::DuplicateKey));

    let t = TxnRequest {
        failure: vec![op_put("a", "1"), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::DuplicateKey));

    // A put inside a range deleted by the same branch, in either order.
    let t = TxnRequest {
        success: vec![op_del("p/", &prefix_end(b"p/")), op_put("p/x", "1")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::DuplicateKey));
    let t = TxnRequest {
        success: vec![op_put("p/x", "1"), op_del("p/", &prefix_end(b"p/"))],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::DuplicateKey));

    // The same key in the two branches is fine: only one runs.
    let t = TxnRequest {
        success: vec![op_put("a", "1")],
        failure: vec![op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Ok(()));
}

#[test]
fn validate_txn_rejects_empty_keys_and_too_many_ops() {
    let t = TxnRequest {
        success: vec![op_put("", "1")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::EmptyKey));
    let t = TxnRequest {
        success: vec![op_del("", b"")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::EmptyKey));
    let t = TxnRequest {
        failure: vec![op_range(range_req("", b""))],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::EmptyKey));

    let t = TxnRequest {
        success: (0..5).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 4), Err(EtcdError::TooManyOps));
    assert_eq!(validate_txn(&t, 5), Ok(()));

    // Nested txns are validated too.
    let t = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![op_put("a", "1"), op_put("a", "2")],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::DuplicateKey));
}

fn op_txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            success,
            failure,
            ..Default::default()
        })),
    }
}

/// etcd's `checkIntervals` looks across nested Txns: a put meets the puts
/// and deletes of its branch at every depth, with etcd's exact asymmetries.
#[test]
fn validate_txn_checks_writes_across_nested_txns_as_etcd_does() {
    let check = |success: Vec<RequestOp>| {
        validate_txn(
            &TxnRequest {
                success,
                ..Default::default()
            },
            128,
        )
    };
    let dup = Err(EtcdError::DuplicateKey);
    // A put beside a nested Txn that puts the same key, from either branch.
    assert_eq!(
        check(vec![
            op_put("a", "1"),
            op_txn(vec![op_put("a", "2")], vec![])
        ]),
        dup
    );
    assert_eq!(
        check(vec![
            op_txn(vec![], vec![op_put("a", "2")]),
            op_put("a", "1")
        ]),
        dup
    );
    // Two nested Txns putting the same key.
    assert_eq!(
        check(vec![
            op_txn(vec![op_put("a", "1")], vec![]),
            op_txn(vec![op_put("a", "2")], vec![])
        ]),
        dup
    );
    // A nested put inside a range this level deletes, and a put of this
    // level inside a range a nested Txn deletes.
    assert_eq!(
        check(vec![
            op_del("p/", &prefix_end(b"p/")),
            op_txn(vec![op_put("p/x", "1")], vec![])
        ]),
        dup
    );
    assert_eq!(
        check(vec![
            op_put("a", "1"),
            op_txn(vec![op_del("a", b"")], vec![])
        ]),
        dup
    );
    // A nested put meets the deletes of the nested Txns before it...
    assert_eq!(
        check(vec![
            op_txn(vec![op_del("a", b"")], vec![]),
            op_txn(vec![op_put("a", "1")], vec![])
        ]),
        dup
    );
    // ...but not of those after it (etcd checks in that order only).
    assert_eq!(
        check(vec![
            op_txn(vec![op_put("a", "1")], vec![]),
            op_txn(vec![op_del("a", b"")], vec![])
        ]),
        Ok(())
    );
    // The two branches of one nested Txn may put the same key.
    assert_eq!(
        check(vec![op_txn(vec![op_put("a", "1")], vec![op_put("a", "2")])]),
        Ok(())
    );
    // Deletes never clash with deletes.
    assert_eq!(
        check(vec![
            op_del("a", b""),
            op_txn(vec![op_del("a", b"")], vec![op_del("a", b"")])
        ]),
        Ok(())
    );
    // Every op is checked on its own before any write is compared with
    // another: an empty key deep in the tree wins over a duplicate.
    assert_eq!(
        check(vec![
            op_put("a", "1"),
            op_put("a", "2"),
            op_txn(vec![op_put("", "x")], vec![])
        ]),
        Err(EtcdError::EmptyKey)
    );
    // An empty op is "key not found", as in etcd.
    assert_eq!(
        check(vec![RequestOp { request: None }]),
        Err(EtcdError::KeyNotFound)
    );
    // A nested Txn may use what the longest list of its parent left.
    let parent = |nested: usize| TxnRequest {
        compare: (0..3)
            .map(|i| cmp_version(&format!("c{i}"), CompareResult::Greater, 0))
            .collect(),
        success: vec![op_txn(
            (0..nested).map(|i| op_put(&format!("n{i}"), "v")).collect(),
            vec![],
        )],
        ..Default::default()
    };
    assert_eq!(validate_txn(&parent(2), 5), Ok(()));
    assert_eq!(validate_txn(&parent(3), 5), Err(EtcdError::TooManyOps));
}

// ---------------------------------------------------------------- compaction

#[test]
fn compaction_drops_history_below_the_revision() {
    let (_d, kv) = open();
    put(&kv, "k", "v1"); // 2
    put(&kv, "k", "v2"); // 3
    put(&kv, "k", "v3"); // 4
    put(&kv, "gone", "x"); // 5
    delete(&kv, "gone", b""); // 6
    put(&kv, "k", "v4"); // 7

    match compact(&kv, 4) {
        R::Compact(c) => assert_eq!(c.header.unwrap().revision, 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.compact_revision(), 4);
    assert_eq!(kv.revision(), 7, "compaction does not bump the revision");

    for rev in [1, 2, 3] {
        let err = kv
            .range(&RangeRequest {
                revision: rev,
                ..range_req("k", b"")
            })
            .unwrap_err();
        assert_eq!(err, EtcdError::Compacted, "revision {rev}");
    }
    // At the compaction revision and later, history is intact.
    assert_eq!(value(&get_at(&kv, "k", 4).unwrap()), "v3");
    assert_eq!(value(&get_at(&kv, "gone", 5).unwrap()), "x");
    assert!(get_at(&kv, "gone", 6).is_none());
    assert_eq!(value(&get_at(&kv, "k", 6).unwrap()), "v3");
    assert_eq!(value(&get(&kv, "k").unwrap()), "v4");

    // Current keys keep their metadata.
    let k = get(&kv, "k").unwrap();
    assert_eq!((k.create_revision, k.mod_revision, k.version), (2, 7, 4));

    // Events: from below the compaction fails; from it works.
    assert_eq!(
        kv.events_between(3, None).unwrap_err(),
        EtcdError::Compacted
    );
    assert_eq!(
        kv.events_between(1, None).unwrap_err(),
        EtcdError::Compacted
    );
    let (events, cur) = kv.events_between(4, None).unwrap();
    assert_eq!(cur, 7);
    let revs: Vec<i64> = events.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, [4, 5, 6, 7]);

    // hash_kv follows the same rule.
    assert_eq!(kv.hash_kv(3).unwrap_err(), EtcdError::Compacted);
    assert!(kv.hash_kv(4).is_ok());
}

#[test]
fn compacting_to_a_future_or_old_revision_changes_nothing() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // 2
    put(&kv, "a", "2"); // 3
    let hash = kv.hash_kv(0).unwrap();

    let e = expect_error(compact(&kv, 10));
    assert_eq!(e.message, EtcdError::FutureRevision.to_string());
    assert_eq!(e.code, tonic::Code::OutOfRange as i32);
    assert_eq!(kv.compact_revision(), 0);
    assert_eq!(kv.revision(), 3);
    assert_eq!(kv.hash_kv(0).unwrap(), hash);
    assert_eq!(value(&get_at(&kv, "a", 2).unwrap()), "1");
    assert_eq!(kv.events_between(2, None).unwrap().0.len(), 2);

    // Compacting to the current revision is allowed...
    assert!(matches!(compact(&kv, 3), R::Compact(_)));
    assert_eq!(kv.compact_revision(), 3);
    // ...and again to the same or a lower revision is "compacted".
    let e = expect_error(compact(&kv, 3));
    assert_eq!(e.message, EtcdError::Compacted.to_string());
    let e = expect_error(compact(&kv, 2));
    assert_eq!(e.message, EtcdError::Compacted.to_string());
    assert_eq!(kv.compact_revision(), 3);
}

// ---------------------------------------------------------------- leases

#[test]
fn put_with_a_lease_attaches_the_key() {
    let (_d, kv) = open();
    grant(&kv, 7, 30);
    assert_eq!(
        kv.revision(),
        1,
        "granting a lease is not a key-space revision"
    );
    assert!(matches!(put_with_lease(&kv, "a", "1", 7), R::Put(_)));
    assert!(matches!(put_with_lease(&kv, "b", "1", 7), R::Put(_)));
    put(&kv, "c", "free");
    assert_eq!(get(&kv, "a").unwrap().lease, 7);
    assert_eq!(get(&kv, "c").unwrap().lease, 0);

    let (ttl, mut attached) = kv.lease(7).expect("lease exists");
    attached.sort();
    assert_eq!(ttl, 30);
    assert_eq!(attached, [b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(kv.leases(), [(7, 30)]);
    assert!(kv.lease(8).is_none());

    // Re-putting without the lease detaches the key.
    put(&kv, "b", "2");
    assert_eq!(kv.lease(7).unwrap().1, [b"a".to_vec()]);
    assert_eq!(get(&kv, "b").unwrap().lease, 0);

    // Deleting a key detaches it.
    delete(&kv, "a", b"");
    assert!(kv.lease(7).unwrap().1.is_empty());
}

#[test]
fn put_with_an_unknown_lease_is_rejected() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // 2
    let e = expect_error(put_with_lease(&kv, "a", "2", 12345));
    assert_eq!(e.message, "etcdserver: requested lease not found");
    assert_eq!(e.code, tonic::Code::NotFound as i32);
    assert_eq!(kv.revision(), 2);
    let a = get(&kv, "a").unwrap();
    assert_eq!((value(&a), a.lease, a.version), ("1", 0, 1));
    let e = expect_error(put_with_lease(&kv, "new", "2", 12345));
    assert_eq!(e.message, "etcdserver: requested lease not found");
    assert!(get(&kv, "new").is_none());
    assert_eq!(kv.revision(), 2);
}

#[test]
fn lease_grant_rejects_zero_and_existing_ids() {
    let (_d, kv) = open();
    let e = expect_error(exec(
        &kv,
        Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 0 }),
    ));
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(kv.leases().is_empty());
    grant(&kv, 1, 5);
    let e = expect_error(exec(
        &kv,
        Op::LeaseGrant(LeaseGrantRequest { ttl: 9, id: 1 }),
    ));
    assert_eq!(e.message, EtcdError::LeaseExists.to_string());
    assert_eq!(kv.lease(1).unwrap().0, 5, "the first grant stands");
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let (_d, kv) = open();
    grant(&kv, 7, 30);
    grant(&kv, 8, 30);
    put_with_lease(&kv, "s/a", "1", 7); // 2
    put_with_lease(&kv, "s/b", "1", 7); // 3
    put_with_lease(&kv, "s/c", "1", 7); // 4
    put_with_lease(&kv, "other", "1", 8); // 5
    put(&kv, "plain", "1"); // 6

    let mut rx = kv.subscribe();
    match exec(&kv, Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })) {
        R::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.revision(), 7, "revoke is one revision");
    assert!(kv.lease(7).is_none());
    assert_eq!(kv.leases(), [(8, 30)]);
    let left = range(&kv, range_req("\0", b"\0"));
    assert_eq!(keys_of(&left.kvs), ["other", "plain"]);

    let batch = rx.try_recv().unwrap();
    assert_eq!(batch.events.len(), 3);
    for (rev, ev) in &batch.events {
        assert_eq!(*rev, 7);
        assert_eq!(ev.r#type, event::EventType::Delete as i32);
        assert_eq!(ev.prev_kv.as_ref().unwrap().lease, 7);
    }

    let e = expect_error(exec(&kv, Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })));
    assert_eq!(e.message, "etcdserver: requested lease not found");
    assert_eq!(kv.revision(), 7);

    // Revoking a lease without keys does not bump the revision.
    grant(&kv, 9, 1);
    exec(&kv, Op::LeaseRevoke(LeaseRevokeRequest { id: 9 }));
    assert_eq!(kv.revision(), 7);
    assert!(kv.lease(9).is_none());
}

#[test]
fn lease_grant_attach_and_revoke_in_one_batch() {
    let (_d, kv) = open();
    let res = exec_batch(
        &kv,
        vec![
            Op::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 3 }),
            Op::Put(PutRequest {
                lease: 3,
                ..put_req("a", "1")
            }),
            Op::Put(PutRequest {
                lease: 3,
                ..put_req("b", "1")
            }),
            Op::LeaseRevoke(LeaseRevokeRequest { id: 3 }),
        ],
    );
    assert!(res.iter().all(|r| !matches!(r, R::Error(_))), "{res:?}");
    assert_eq!(kv.revision(), 4);
    assert!(range(&kv, range_req("\0", b"\0")).kvs.is_empty());
    assert!(kv.lease(3).is_none());
}

// ---------------------------------------------------------------- events

#[test]
fn subscribers_get_each_batch_in_revision_order() {
    let (_d, kv) = open();
    put(&kv, "a", "0"); // 2, before subscribing
    let mut rx = kv.subscribe();
    let res = exec_batch(
        &kv,
        vec![
            put_op("a", "1"), // 3
            put_op("b", "1"), // 4
            Op::Txn(TxnRequest {
                compare: vec![],
                success: vec![op_put("c", "1"), op_del("a", b"")],
                failure: vec![],
            }), // 5
        ],
    );
    assert_eq!(res.len(), 3);
    let batch = rx.try_recv().expect("one event batch");
    let revs: Vec<i64> = batch.events.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, [3, 4, 5, 5]);
    let kinds: Vec<(String, i32)> = batch
        .events
        .iter()
        .map(|(_, e)| {
            let k = e.kv.as_ref().unwrap();
            (String::from_utf8(k.key.clone()).unwrap(), e.r#type)
        })
        .collect();
    let put_t = event::EventType::Put as i32;
    let del_t = event::EventType::Delete as i32;
    assert_eq!(
        kinds,
        [
            ("a".to_string(), put_t),
            ("b".to_string(), put_t),
            ("c".to_string(), put_t),
            ("a".to_string(), del_t)
        ]
    );
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // Batches that change nothing publish nothing.
    delete(&kv, "nothing", b"");
    kv.apply_batch(&[None], meta()).unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    put(&kv, "d", "1");
    let batch = rx.try_recv().unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].0, 6);
}

#[test]
fn events_between_returns_history_with_prev_kv() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // 2
    put(&kv, "a", "2"); // 3
    put(&kv, "b", "1"); // 4
    delete(&kv, "a", b""); // 5

    let (all, cur) = kv.events_between(1, None).unwrap();
    assert_eq!(cur, 5);
    let revs: Vec<i64> = all.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, [2, 3, 4, 5]);

    let (rev, first) = &all[0];
    assert_eq!(*rev, 2);
    assert_eq!(first.r#type, event::EventType::Put as i32);
    assert!(first.prev_kv.is_none());
    assert_eq!(value(first.kv.as_ref().unwrap()), "1");

    let second = &all[1].1;
    let kv2 = second.kv.as_ref().unwrap();
    assert_eq!((value(kv2), kv2.version, kv2.mod_revision), ("2", 2, 3));
    let prev = second.prev_kv.as_ref().expect("prev_kv of an update");
    assert_eq!((value(prev), prev.version, prev.mod_revision), ("1", 1, 2));

    let del = &all[3].1;
    assert_eq!(del.r#type, event::EventType::Delete as i32);
    assert_eq!(del.kv.as_ref().unwrap().key, b"a");
    assert_eq!(del.kv.as_ref().unwrap().mod_revision, 5);
    assert_eq!(value(del.prev_kv.as_ref().unwrap()), "2");

    // Bounded windows.
    let (mid, _) = kv.events_between(3, Some(4)).unwrap();
    assert_eq!(mid.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [3, 4]);
    let (future, cur) = kv.events_between(6, None).unwrap();
    assert!(future.is_empty());
    assert_eq!(cur, 5);
    let (clamped, _) = kv.events_between(5, Some(100)).unwrap();
    assert_eq!(clamped.len(), 1);
}

// ---------------------------------------------------------------- snapshots

fn seed_rich(kv: &KvStore) {
    grant(kv, 42, 60);
    put(kv, "a", "1");
    put(kv, "a", "2");
    put_with_lease(kv, "leased", "x", 42);
    put(kv, "b", "1");
    delete(kv, "b", b"");
    put(kv, "c", "1");
    assert!(matches!(compact(kv, 3), R::Compact(_)));
    put(kv, "d", "1");
}

#[tokio::test]
async fn dump_and_install_reproduce_the_key_space() {
    let (_d1, src) = open();
    seed_rich(&src);
    let (data, applied, membership) = src.dump();
    assert!(applied.is_some());
    assert!(membership.is_none());

    let (_d2, dst) = open();
    put(&dst, "junk", "to be replaced");
    let mut rx = dst.subscribe();
    dst.install(&data, applied.unwrap(), b"null".to_vec())
        .await
        .unwrap();
    // Watchers are told that history was replaced.
    assert!(rx.try_recv().unwrap().events.is_empty());

    assert_eq!(dst.revision(), src.revision());
    assert_eq!(dst.compact_revision(), src.compact_revision());
    assert_eq!(dst.hash_kv(0).unwrap(), src.hash_kv(0).unwrap());
    assert_eq!(dst.hash_kv(5).unwrap(), src.hash_kv(5).unwrap());
    assert!(get(&dst, "junk").is_none());
    let all = |kv: &KvStore| range(kv, range_req("\0", b"\0")).kvs;
    assert_eq!(all(&dst), all(&src));
    assert_eq!(dst.leases(), src.leases());
    assert_eq!(dst.lease(42), src.lease(42));
    assert_eq!(dst.events_between(3, None), src.events_between(3, None));
    assert_eq!(
        dst.events_between(2, None).unwrap_err(),
        EtcdError::Compacted
    );

    // The installed store keeps working from the same revision.
    put(&dst, "e", "1");
    put(&src, "e", "1");
    assert_eq!(dst.revision(), src.revision());
    assert_eq!(dst.hash_kv(0).unwrap(), src.hash_kv(0).unwrap());
}

#[tokio::test]
async fn a_corrupt_dump_is_rejected_and_changes_nothing() {
    let (_d1, src) = open();
    seed_rich(&src);
    let (data, applied, _) = src.dump();
    let records = snapshot::parse(&data).expect("a full dump parses");
    assert!(!records.is_empty());

    for cut in [1, 2, 5] {
        assert!(
            snapshot::parse(&data[..data.len() - cut]).is_err(),
            "dump truncated by {cut} bytes must be rejected"
        );
    }
    // Cut inside a length field of the first record.
    assert!(snapshot::parse(&data[..12]).is_err());

    let mut bad = data.clone();
    bad[0] = b'X';
    assert!(snapshot::parse(&bad).is_err());
    assert!(snapshot::parse(b"").is_err());
    assert!(snapshot::parse(b"KEELSNAP2\n").is_err());

    let (_d2, dst) = open();
    put(&dst, "mine", "1");
    let before = dst.hash_kv(0).unwrap();
    assert!(
        dst.install(
            &data[..data.len() - 1],
            applied.clone().unwrap(),
            b"null".to_vec()
        )
        .await
        .is_err()
    );
    assert!(
        dst.install(&bad, applied.unwrap(), b"null".to_vec())
            .await
            .is_err()
    );
    assert_eq!(dst.hash_kv(0).unwrap(), before);
    assert_eq!(dst.revision(), 2);
}

// ---------------------------------------------------------------- persistence

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (rev, hash, compacted) = {
        let kv = KvStore::open(dir.path()).unwrap();
        seed_rich(&kv);
        kv.flush().await.unwrap();
        (kv.revision(), kv.hash_kv(0).unwrap(), kv.compact_revision())
    };
    assert_eq!(rev, 8);

    let kv = KvStore::open(dir.path()).unwrap();
    assert_eq!(kv.revision(), rev);
    assert_eq!(kv.compact_revision(), compacted);
    assert_eq!(kv.hash_kv(0).unwrap(), hash);
    assert_eq!(value(&get(&kv, "a").unwrap()), "2");
    assert_eq!(get(&kv, "a").unwrap().version, 2);
    assert!(get(&kv, "b").is_none());
    assert_eq!(kv.lease(42).unwrap().1, [b"leased".to_vec()]);
    assert_eq!(value(&get_at(&kv, "a", 3).unwrap()), "2");
    assert_eq!(
        kv.range(&RangeRequest {
            revision: 2,
            ..range_req("a", b"")
        })
        .unwrap_err(),
        EtcdError::Compacted
    );

    // And writes continue from the recovered revision.
    assert_eq!(put(&kv, "z", "1").header.unwrap().revision, rev + 1);
}

// ------------------------------------------------- hostile ranges (issue 12)

/// The request that took every member of a cluster down: a txn whose range
/// ends before its key. etcd answers it with an empty range; so must we.
#[test]
fn txn_with_a_reversed_range_answers_empty_and_still_writes() {
    let (_d, kv) = open();
    put(&kv, "a", "1"); // 2
    let t = txn(
        &kv,
        TxnRequest {
            success: vec![op_put("x", "1"), op_range(range_req("b", b"a"))],
            ..Default::default()
        },
    );
    assert!(t.succeeded);
    match &t.responses[1].response {
        Some(response_op::Response::ResponseRange(r)) => {
            assert!(r.kvs.is_empty(), "{r:?}");
            assert_eq!(r.count, 0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&get(&kv, "x").unwrap()), "1");
    assert_eq!(kv.revision(), 3);
}

#[test]
fn every_reversed_range_form_is_empty_and_changes_nothing() {
    let (_d, kv) = open();
    for k in ["a", "b", "c"] {
        put(&kv, k, "v");
    }
    let before = kv.revision();
    // Range outside a txn, at the current and at a past revision.
    for rev in [0, before - 1] {
        let r = range(
            &kv,
            RangeRequest {
                revision: rev,
                ..range_req("c", b"a")
            },
        );
        assert!(r.kvs.is_empty() && r.count == 0, "rev {rev}: {r:?}");
    }
    // A range whose end equals its key is empty too.
    assert!(range(&kv, range_req("b", b"b")).kvs.is_empty());
    // DeleteRange, alone and inside a txn, deletes nothing and keeps the revision.
    assert_eq!(delete(&kv, "c", b"a").deleted, 0);
    let t = txn(
        &kv,
        TxnRequest {
            success: vec![op_del("c", b"a"), op_range(range_req("c", b"a"))],
            ..Default::default()
        },
    );
    assert!(t.succeeded);
    assert_eq!(kv.revision(), before, "nothing was written");
    // A compare over an empty range compares against an absent key (etcd's
    // applyCompare): version 0 holds, a value compare never does.
    let mut c = cmp_version("c", CompareResult::Equal, 0);
    c.range_end = b"a".to_vec();
    assert!(holds(&kv, c));
    let mut c = cmp_value("c", CompareResult::NotEqual, "zzz");
    c.range_end = b"a".to_vec();
    assert!(!holds(&kv, c));
    // A compare over a real range with no keys in it behaves the same way.
    let mut c = cmp_version("m", CompareResult::Greater, 0);
    c.range_end = b"n".to_vec();
    assert!(!holds(&kv, c));
    assert_eq!(
        keys_of(&range(&kv, range_req("a", b"\0")).kvs),
        ["a", "b", "c"]
    );
}

/// etcd evaluates every compare of a transaction, nested ones included,
/// against the state before the transaction writes anything.
#[test]
fn nested_compares_see_the_state_before_the_txn() {
    let (_d, kv) = open();
    put(&kv, "k", "old");
    let inner = TxnRequest {
        compare: vec![cmp_value("k", CompareResult::Equal, "old")],
        success: vec![op_put("seen", "old")],
        failure: vec![op_put("seen", "new")],
    };
    let t = txn(
        &kv,
        TxnRequest {
            success: vec![
                op_put("k", "new"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner)),
                },
            ],
            ..Default::default()
        },
    );
    assert!(t.succeeded);
    assert_eq!(value(&get(&kv, "seen").unwrap()), "old");
}

/// A range inside a txn at the revision before the txn's own writes reads
/// that revision, not the writes.
#[test]
fn txn_range_at_the_current_revision_does_not_see_its_own_writes() {
    let (_d, kv) = open();
    put(&kv, "k", "old");
    let rev = kv.revision();
    let t = txn(
        &kv,
        TxnRequest {
            success: vec![
                op_put("k", "new"),
                op_range(RangeRequest {
                    revision: rev,
                    ..range_req("k", b"")
                }),
            ],
            ..Default::default()
        },
    );
    match &t.responses[1].response {
        Some(response_op::Response::ResponseRange(r)) => assert_eq!(value(&r.kvs[0]), "old"),
        other => panic!("{other:?}"),
    }
    // A revision past the current one is refused before anything is written.
    let r = exec(
        &kv,
        Op::Txn(TxnRequest {
            success: vec![
                op_put("k", "newer"),
                op_range(RangeRequest {
                    revision: kv.revision() + 1,
                    ..range_req("k", b"")
                }),
            ],
            ..Default::default()
        }),
    );
    assert_eq!(
        expect_error(r).message,
        EtcdError::FutureRevision.to_string()
    );
    assert_eq!(value(&get(&kv, "k").unwrap()), "new");
}

/// Requests etcd refuses before proposing them get etcd's errors here too.
#[test]
fn malformed_puts_and_ranges_are_refused_before_proposing() {
    use keel_store::mvcc::apply::{validate_put, validate_range};
    let p = PutRequest {
        ignore_value: true,
        ..put_req("k", "v")
    };
    assert_eq!(validate_put(&p), Err(EtcdError::ValueProvided));
    let p = PutRequest {
        ignore_lease: true,
        lease: 7,
        ..put_req("k", "")
    };
    assert_eq!(validate_put(&p), Err(EtcdError::LeaseProvided));
    assert_eq!(validate_put(&put_req("", "v")), Err(EtcdError::EmptyKey));
    assert!(validate_put(&put_req("k", "v")).is_ok());
    let r = RangeRequest {
        sort_order: 9,
        ..range_req("k", b"")
    };
    assert_eq!(validate_range(&r), Err(EtcdError::InvalidSortOption));
    assert_eq!(
        validate_range(&range_req("", b"")),
        Err(EtcdError::EmptyKey)
    );
    // The same checks run on every op of a transaction, nested ones too.
    let t = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                failure: vec![op_range(r)],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert_eq!(validate_txn(&t, 128), Err(EtcdError::InvalidSortOption));
    // 128 ops per branch at most (etcd's --max-txn-ops default).
    let many = TxnRequest {
        success: (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(validate_txn(&many, 128), Err(EtcdError::TooManyOps));
}

/// A watch from far back reads history a page of revisions at a time (never
/// the whole history at once), and still delivers every event once, in order.
#[tokio::test]
async fn feed_catch_up_is_paged_and_complete() {
    use keel_store::mvcc::feed::{CATCH_UP_REVISIONS, Feed};
    let (_d, kv) = open();
    let n = 3 * CATCH_UP_REVISIONS as usize + 7;
    let ops: Vec<Op> = (0..n)
        .map(|i| put_op(&format!("k{}", i % 10), "v"))
        .collect();
    exec_batch(&kv, ops);
    let (mut feed, cur) = Feed::open(kv.clone(), 2);
    assert_eq!(cur, n as i64 + 1);
    let mut seen = Vec::new();
    while seen.len() < n {
        let page = feed.next().await.unwrap();
        assert!(page.len() <= CATCH_UP_REVISIONS as usize, "{}", page.len());
        for (r, e) in &page {
            // Each put's previous key-value (stored as a reference to the
            // key's put ten revisions before, on this page or an earlier
            // one) comes whole.
            let prev = e.prev_kv.as_ref().map(|p| (p.key.clone(), p.mod_revision));
            let key = e.kv.as_ref().unwrap().key.clone();
            let want = (*r >= 12).then(|| (key, r - 10));
            assert_eq!(prev, want, "event at {r}");
        }
        seen.extend(page.into_iter().map(|(r, _)| r));
    }
    assert_eq!(seen, (2..=n as i64 + 1).collect::<Vec<_>>());
    // Without previous key-values: the same events, none of them.
    let (feed, _) = Feed::open(kv.clone(), 2);
    let mut feed = feed.without_prev();
    let mut bare = Vec::new();
    while bare.len() < n {
        let page = feed.next().await.unwrap();
        assert!(page.iter().all(|(_, e)| e.prev_kv.is_none()));
        bare.extend(page.into_iter().map(|(r, _)| r));
    }
    assert_eq!(bare, seen);
}

/// A feed limited to a key range delivers only those keys' events, from
/// stored history and from live batches, and moves past batches with none
/// of them (a later wanted event comes once, nothing comes twice).
#[tokio::test]
async fn feed_over_a_range_skips_other_keys() {
    use keel_store::mvcc::feed::Feed;
    let (_d, kv) = open();
    // Revisions 2..=5: a/1, b/1, a/2, b/2.
    exec_batch(
        &kv,
        vec![
            put_op("a/1", "v"),
            put_op("b/1", "v"),
            put_op("a/2", "v"),
            put_op("b/2", "v"),
        ],
    );
    let range = Some((b"a/".to_vec(), b"a0".to_vec()));
    let (mut feed, cur) = Feed::open_range(kv.clone(), 2, range);
    assert_eq!(cur, 5);
    let keys = |evs: Vec<(i64, keel_proto::mvccpb::Event)>| -> Vec<(i64, String)> {
        evs.into_iter()
            .map(|(r, e)| (r, String::from_utf8(e.kv.unwrap().key).unwrap()))
            .collect()
    };
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(keys(feed.next().await.unwrap()));
    }
    assert_eq!(seen, [(2, "a/1".to_string()), (4, "a/2".to_string())]);
    // Live: a batch of other keys only (6), then a wanted one (7).
    exec_batch(&kv, vec![put_op("b/3", "v")]);
    exec_batch(&kv, vec![put_op("a/3", "v")]);
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .expect("the wanted event")
        .unwrap();
    assert_eq!(keys(next), [(7, "a/3".to_string())]);
}
