//! What is taken out of answers before they are compared, and nothing
//! else: the cluster and member IDs and Raft term of every header, the IDs
//! each cluster picked for leases granted with ID 0, the order of lists
//! etcd builds from Go maps (lease lists, a lease's keys), remaining lease
//! TTLs within a tolerance (they depend on when each cluster answered),
//! the revision of a watch's creation answer and of lease keep-alive and
//! time-to-live answers (a follower's may lag),
//! and the order among equal elements of a range sorted on a field other
//! than the key (etcd's sort is not stable).

use keel_proto::etcdserverpb::{
    RangeRequest, RangeResponse, ResponseHeader, TxnResponse, response_op,
};
use keel_proto::mvccpb::KeyValue;

use super::exec::Answer;
use super::generator::AUTO_LEASE_BASE;

/// Seconds two remaining TTLs may differ by.
pub const TTL_TOLERANCE: i64 = 2;

fn header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// Maps a cluster's own ID for an auto-granted lease to its placeholder.
struct Leases<'a>(&'a [i64]);

impl Leases<'_> {
    fn id(&self, id: &mut i64) {
        if let Some(k) = self.0.iter().position(|a| a == id) {
            *id = AUTO_LEASE_BASE + k as i64;
        }
    }
    fn kv(&self, kv: &mut KeyValue) {
        self.id(&mut kv.lease);
    }
    fn kvs(&self, kvs: &mut [KeyValue]) {
        kvs.iter_mut().for_each(|kv| self.kv(kv));
    }
}

fn range(r: &mut RangeResponse, l: &Leases) {
    header(&mut r.header);
    l.kvs(&mut r.kvs);
}

fn txn(t: &mut TxnResponse, l: &Leases) {
    header(&mut t.header);
    for op in &mut t.responses {
        match &mut op.response {
            Some(response_op::Response::ResponseRange(r)) => range(r, l),
            Some(response_op::Response::ResponsePut(p)) => {
                header(&mut p.header);
                if let Some(kv) = &mut p.prev_kv {
                    l.kv(kv);
                }
            }
            Some(response_op::Response::ResponseDeleteRange(d)) => {
                header(&mut d.header);
                l.kvs(&mut d.prev_kvs);
            }
            Some(response_op::Response::ResponseTxn(t)) => txn(t, l),
            None => {}
        }
    }
}

/// Normalises one answer of a cluster whose auto-granted lease IDs are `autos`.
pub fn answer(a: &mut Answer, autos: &[i64]) {
    let l = Leases(autos);
    match a {
        Answer::Range(r) => range(r, &l),
        Answer::Put(p) => {
            header(&mut p.header);
            if let Some(kv) = &mut p.prev_kv {
                l.kv(kv);
            }
        }
        Answer::DeleteRange(d) => {
            header(&mut d.header);
            l.kvs(&mut d.prev_kvs);
        }
        Answer::Txn(t) => txn(t, &l),
        Answer::Compact(c) => header(&mut c.header),
        Answer::LeaseGrant(g) => {
            header(&mut g.header);
            l.id(&mut g.id);
        }
        Answer::LeaseRevoke(r) => header(&mut r.header),
        // Keep-alive and time-to-live answers are not reads of the store:
        // their header holds the serving member's applied revision, which
        // on a follower may lag the last write.
        Answer::LeaseKeepAlive(k) => {
            k.header = None;
            l.id(&mut k.id);
        }
        Answer::LeaseTimeToLive(t) => {
            t.header = None;
            l.id(&mut t.id);
            t.keys.sort();
        }
        Answer::LeaseLeases(s) => {
            header(&mut s.header);
            for x in &mut s.leases {
                l.id(&mut x.id);
            }
            s.leases.sort_by_key(|x| x.id);
        }
        Answer::Watch(w) => {
            // The creation answer's revision is the serving member's
            // applied revision, which on a follower may lag the last write.
            if let Some(c) = &mut w.created {
                c.header = None;
            }
            for e in &mut w.events {
                if let Some(kv) = &mut e.kv {
                    l.kv(kv);
                }
                if let Some(kv) = &mut e.prev_kv {
                    l.kv(kv);
                }
            }
        }
        Answer::Error { .. } => {}
    }
}

/// Lets two answers that differ only in remaining lease TTL (within
/// `TTL_TOLERANCE`) compare equal: `keel`'s TTL takes `etcd`'s.
pub fn ttl_tolerance(etcd: &Answer, keel: &mut Answer) {
    let close = |a: i64, b: i64| a >= 0 && b >= 0 && (a - b).abs() <= TTL_TOLERANCE;
    match (etcd, keel) {
        (Answer::LeaseTimeToLive(e), Answer::LeaseTimeToLive(k)) if close(e.ttl, k.ttl) => {
            k.ttl = e.ttl
        }
        (Answer::LeaseKeepAlive(e), Answer::LeaseKeepAlive(k)) if close(e.ttl, k.ttl) => {
            k.ttl = e.ttl
        }
        _ => {}
    }
}

/// The value a range sorts on, as bytes compare.
fn sort_value(kv: &KeyValue, target: i32) -> Vec<u8> {
    let n = |x: i64| x.to_be_bytes().to_vec();
    match target {
        1 => n(kv.version),
        2 => n(kv.create_revision),
        3 => n(kv.mod_revision),
        4 => kv.value.clone(),
        _ => kv.key.clone(),
    }
}

/// A range sorted on a field other than the key: equal elements may come
/// in any order (etcd sorts with Go's unstable sort), so both answers are
/// re-sorted by (value, key); and when a limit cut a run of equal
/// elements, which of them made it in is unspecified, so that last run is
/// reduced to its sort values.
pub fn unstable_sort(req: &RangeRequest, a: &mut Answer) {
    let Answer::Range(r) = a else { return };
    if req.sort_target == 0 || r.kvs.is_empty() {
        return;
    }
    let t = req.sort_target;
    r.kvs.sort_by(|x, y| {
        let o = sort_value(x, t).cmp(&sort_value(y, t));
        let o = if req.sort_order == 2 { o.reverse() } else { o };
        o.then_with(|| x.key.cmp(&y.key))
    });
    if (r.kvs.len() as i64) < r.count {
        let last = sort_value(r.kvs.last().expect("not empty"), t);
        for kv in r.kvs.iter_mut().rev() {
            if sort_value(kv, t) != last {
                break;
            }
            *kv = KeyValue {
                value: if t == 4 { kv.value.clone() } else { Vec::new() },
                version: if t == 1 { kv.version } else { 0 },
                create_revision: if t == 2 { kv.create_revision } else { 0 },
                mod_revision: if t == 3 { kv.mod_revision } else { 0 },
                ..Default::default()
            };
        }
    }
}

/// The first line where the pretty-printed answers differ, with a little
/// context: the field that differs.
pub fn first_difference(etcd: &str, keel: &str) -> String {
    let (e, k): (Vec<&str>, Vec<&str>) = (etcd.lines().collect(), keel.lines().collect());
    let i = e
        .iter()
        .zip(&k)
        .position(|(a, b)| a != b)
        .unwrap_or(e.len().min(k.len()));
    let from = i.saturating_sub(8);
    let ctx = |v: &[&str]| v[from.min(v.len())..(i + 1).min(v.len())].join("\n");
    format!(
        "at line {}:\n--- etcd ---\n{}\n--- keel ---\n{}",
        i + 1,
        ctx(&e),
        ctx(&k)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::LeaseTimeToLiveResponse;

    fn kv(key: &str, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            version,
            ..Default::default()
        }
    }

    #[test]
    fn headers_lose_only_their_ids_and_term() {
        let mut a = Answer::Range(RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            ..Default::default()
        });
        answer(&mut a, &[]);
        assert_eq!(a.revision(), Some(3));
        let Answer::Range(r) = a else { panic!() };
        assert_eq!(r.header.unwrap().member_id, 0);
    }

    #[test]
    fn auto_lease_ids_map_to_their_placeholder_and_others_stay() {
        let mut a = Answer::LeaseTimeToLive(LeaseTimeToLiveResponse {
            id: 555,
            keys: vec![b"b".to_vec(), b"a".to_vec()],
            ..Default::default()
        });
        answer(&mut a, &[9, 555]);
        let Answer::LeaseTimeToLive(t) = &a else {
            panic!()
        };
        assert_eq!(t.id, AUTO_LEASE_BASE + 1);
        assert_eq!(t.keys, vec![b"a".to_vec(), b"b".to_vec()]);
        let mut b = a.clone();
        answer(&mut b, &[1]);
        assert_eq!(a, b);
    }

    #[test]
    fn remaining_ttls_compare_within_the_tolerance_only() {
        let ttl = |t| {
            Answer::LeaseTimeToLive(LeaseTimeToLiveResponse {
                ttl: t,
                ..Default::default()
            })
        };
        let mut k = ttl(99);
        ttl_tolerance(&ttl(100), &mut k);
        assert_eq!(k, ttl(100));
        let mut k = ttl(90);
        ttl_tolerance(&ttl(100), &mut k);
        assert_eq!(k, ttl(90));
        let mut k = ttl(-1);
        ttl_tolerance(&ttl(1), &mut k);
        assert_eq!(k, ttl(-1));
    }

    #[test]
    fn ties_of_an_unstable_sort_are_ordered_and_a_cut_run_keeps_only_its_values() {
        let req = RangeRequest {
            sort_target: 1,
            sort_order: 1,
            limit: 2,
            ..Default::default()
        };
        let resp = |kvs| {
            Answer::Range(RangeResponse {
                kvs,
                count: 3,
                ..Default::default()
            })
        };
        let mut a = resp(vec![kv("x", 1), kv("b", 2)]);
        let mut b = resp(vec![kv("x", 1), kv("c", 2)]);
        unstable_sort(&req, &mut a);
        unstable_sort(&req, &mut b);
        assert_eq!(a, b);
        // A different value is still a difference.
        let mut c = resp(vec![kv("x", 1), kv("c", 3)]);
        unstable_sort(&req, &mut c);
        assert_ne!(a, c);
        // Uncut ties keep their keys.
        let full = |kvs| {
            Answer::Range(RangeResponse {
                kvs,
                count: 2,
                ..Default::default()
            })
        };
        let mut d = full(vec![kv("b", 1), kv("a", 1)]);
        let mut e = full(vec![kv("a", 1), kv("c", 1)]);
        unstable_sort(&req, &mut d);
        unstable_sort(&req, &mut e);
        assert_ne!(d, e);
    }

    #[test]
    fn the_first_difference_names_the_line() {
        let d = first_difference("a\nb\nc", "a\nB\nc");
        assert!(d.contains("line 2") && d.contains('B'), "{d}");
    }
}
