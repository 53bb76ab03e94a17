//! The layout of the key space inside the one sled tree: a one-byte prefix per
//! kind of record, so one atomic batch (`super::journal`) can change all of them.

/// `k` + user key → current `mvccpb::KeyValue`.
pub const KV: u8 = b'k';
/// History (events always carry `prev_kv`, whole or as a reference to an
/// earlier put's event (`super::prev`), so history can be undone for reads
/// at a revision): `r` + revision (8 bytes BE) + a sub-index of at
/// least `GROUP_BASE` → a run of consecutive events, the key's revision
/// being the run's last (`super::history`); records written before
/// 2026-12-04 are `r` + revision + sub-index below `GROUP_BASE` → one
/// `mvccpb::Event`.
pub const REV: u8 = b'r';
/// The sub-index of the last (often only) run of events ending at a revision.
pub const GROUP: u32 = u32::MAX;
/// The lowest sub-index of a run of events: runs ending at the same
/// revision count down from `GROUP`, the earliest lowest.
pub const GROUP_BASE: u32 = 1 << 31;
/// `l` + lease id (8 bytes BE) → `LeaseGrantRequest` (id, ttl).
pub const LEASE: u8 = b'l';
/// `a` + lease id (8 bytes BE) + user key → empty: keys attached to a lease.
pub const ATTACH: u8 = b'a';
/// `m` + name → metadata (revision, compaction, applied log id, membership).
pub const META: u8 = b'm';

pub const META_REVISION: &[u8] = b"mrevision";
pub const META_COMPACT: &[u8] = b"mcompact";
pub const META_APPLIED: &[u8] = b"mapplied";
pub const META_MEMBERSHIP: &[u8] = b"mmembership";
pub const META_CLUSTER_ID: &[u8] = b"mcluster_id";
/// Mixed into the cluster id of a cluster restored from a backup (the source
/// cluster's id), so the restored cluster never shares the source's id.
pub const META_CLUSTER_SALT: &[u8] = b"mcluster_salt";
/// Present while a backup is being restored into the tree: written first and
/// removed last, so a data dir a crash left half restored refuses to open.
pub const META_RESTORING: &[u8] = b"mrestoring";

pub fn kv_key(user: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1);
    k.push(KV);
    k.extend_from_slice(user);
    k
}

pub fn rev_key(rev: i64, sub: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(REV);
    k.extend_from_slice(&(rev as u64).to_be_bytes());
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// The key of the last history run whose last event has `last_rev`.
pub fn group_key(last_rev: i64) -> Vec<u8> {
    rev_key(last_rev, GROUP)
}

/// True for a history record holding a run of events (not just one).
pub fn is_group(key: &[u8]) -> bool {
    key.len() == 13 && u32::from_be_bytes(key[9..13].try_into().expect("4 bytes")) >= GROUP_BASE
}

/// The revision of a history record's key; None for any other key (or one
/// too short to hold a revision).
pub fn history_rev(key: &[u8]) -> Option<i64> {
    (key.len() >= 9 && key[0] == REV).then(|| rev_of(key))
}

pub fn rev_of(key: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..9]);
    u64::from_be_bytes(b) as i64
}

pub fn lease_key(id: i64) -> Vec<u8> {
    let mut k = vec![LEASE];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn attach_prefix(id: i64) -> Vec<u8> {
    let mut k = vec![ATTACH];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn attach_key(id: i64, user: &[u8]) -> Vec<u8> {
    let mut k = attach_prefix(id);
    k.extend_from_slice(user);
    k
}

/// The sled key bounds `[start, end)` for an etcd user-key range. An empty
/// `range_end` means the single key; `"\0"` means every key from `key` on. A
/// `range_end` at or below `key` is an empty range (etcd answers it with no
/// keys, never an error), so `end` is never below `start`: every caller may
/// pass the bounds to `BTreeMap::range` or `sled::Tree::range` as they are.
pub fn kv_bounds(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = kv_key(key);
    let end = if range_end.is_empty() {
        let mut end = start.clone();
        end.push(0);
        end
    } else if range_end == [0] {
        vec![KV + 1]
    } else {
        kv_key(range_end)
    };
    if end < start {
        return (start.clone(), start);
    }
    (start, end)
}

/// True when `user` lies in the etcd range `[key, range_end)`.
pub fn in_range(user: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        user == key
    } else if range_end == [0] {
        user >= key
    } else {
        user >= key && user < range_end
    }
}

/// The end of the range of every key starting with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`); one definition for the whole project.
pub use keel_proto::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd_rules() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"ab", b"a", b"b"));
        assert!(!in_range(b"b", b"a", b"b"));
        assert!(in_range(b"zzz", b"a", b"\0"));
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn reversed_and_empty_ranges_have_ordered_bounds() {
        for (key, end) in [
            (&b"b"[..], &b"a"[..]),
            (b"b", b"b"),
            (b"\xff", b"\x01"),
            (b"a", b""),
            (b"a", b"\0"),
            (b"\0", b"\0"),
        ] {
            let (s, e) = kv_bounds(key, end);
            assert!(s <= e, "{key:?}..{end:?}");
            // No user key is inside a reversed range either way.
            if !end.is_empty() && end != b"\0" && end <= key {
                assert_eq!(s, e);
                assert!(!in_range(key, key, end));
            }
        }
    }

    #[test]
    fn rev_keys_sort_by_revision() {
        assert!(rev_key(2, 0) < rev_key(10, 0));
        assert!(rev_key(2, 1) < rev_key(3, 0));
        assert_eq!(rev_of(&rev_key(77, 3)), 77);
    }
}
