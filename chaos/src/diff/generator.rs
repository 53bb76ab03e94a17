//! The seeded generator of etcd v3 request sequences: KV requests with
//! every range form over a small key space (keys that are prefixes of each
//! other, `\0` and `\xff` ends, reversed ranges), Txns with nested
//! compares and sub-transactions, leases, compactions aimed at valid,
//! future and already-compacted revisions, and watches. The same seed gives
//! the same sequence, given the same answers fed back through `observe`.

pub use super::avoid::{Avoid, GenOptions};
use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, compare, request_op,
};
use keel_proto::prefix_end;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// Keys requests write: short, several prefixes of others, one with a NUL
/// byte, two of `\xff` bytes (whose prefix end is `\0`, "to the end").
/// All sort after `/`, so no write ever touches Keel's `/registry/` keys.
pub const KEYS: [&[u8]; 13] = [
    b"a",
    b"a\0",
    b"ab",
    b"abc",
    b"b",
    b"ba",
    b"bb",
    b"c",
    b"foo",
    b"foo/",
    b"foo/bar",
    b"\xff",
    b"\xff\xff",
];

/// Extra range starts and ends for reads only: the empty key (refused as a
/// key, "everything" as a start with end `\0`), `\0` (the first key) and
/// `/` (Keel's and the mirrored `/registry/` keys).
const READ_ONLY_KEYS: [&[u8]; 3] = [b"", b"\0", b"/"];

const VALUES: [&[u8]; 5] = [b"", b"1", b"2", b"v", b"value-that-is-longer"];

/// Lease IDs requests name explicitly. Granting one that exists fails as
/// in etcd; naming one that was never granted exercises "not found".
pub const LEASE_IDS: [i64; 5] = [1, 2, 3, 0x7fff_ffff_ffff_fff0, 42];

/// Lease IDs at or above this stand for the lease the `k`-th grant with
/// ID 0 created (`AUTO_LEASE_BASE + k`): each cluster picks its own ID for
/// those, and the runner maps both to this placeholder.
pub const AUTO_LEASE_BASE: i64 = 7_000_000_000_000;

/// etcd's `MaxLeaseTTL`.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One step of a sequence: a request to send to both clusters.
#[derive(Debug, Clone)]
pub enum Step {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseKeepAlive(LeaseKeepAliveRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases(LeaseLeasesRequest),
    /// Open a watch, make `writes` (each compared as a step of its own),
    /// then compare the events both watches delivered.
    Watch {
        create: WatchCreateRequest,
        writes: Vec<Step>,
    },
}

impl Step {
    /// A short name for counts in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Range(_) => "range",
            Step::Put(_) => "put",
            Step::DeleteRange(_) => "delete",
            Step::Txn(_) => "txn",
            Step::Compact(_) => "compact",
            Step::LeaseGrant(_) => "lease-grant",
            Step::LeaseRevoke(_) => "lease-revoke",
            Step::LeaseKeepAlive(_) => "lease-keepalive",
            Step::LeaseTimeToLive(_) => "lease-timetolive",
            Step::LeaseLeases(_) => "lease-leases",
            Step::Watch { .. } => "watch",
        }
    }

    /// Whether the step may change the store (so it goes through Raft).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Step::Range(_) | Step::LeaseTimeToLive(_) | Step::LeaseLeases(_) | Step::Watch { .. }
        )
    }
}

/// The seeded generator; `observe` feeds back the store's revisions.
pub struct Generator {
    rng: StdRng,
    opts: GenOptions,
    /// The current revision as the last answer reported it.
    rev: i64,
    /// The revision of the last successful compaction (0: none).
    compacted: i64,
    /// The revision the sequence started at.
    base: i64,
    /// Grants with ID 0 made so far.
    autos: i64,
}

/// Where a generated request is used: writes never name reversed ranges
/// unless allowed, and never write outside `KEYS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Read,
    Write,
}

impl Generator {
    pub fn new(seed: u64, opts: GenOptions, start_rev: i64) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            opts,
            rev: start_rev,
            compacted: 0,
            base: start_rev,
            autos: 0,
        }
    }

    /// Notes the revision an answer reported.
    pub fn observe_revision(&mut self, rev: i64) {
        self.rev = self.rev.max(rev);
    }

    /// Notes a successful compaction at `rev`.
    pub fn observe_compaction(&mut self, rev: i64) {
        self.compacted = self.compacted.max(rev);
    }

    /// Notes that a grant with ID 0 succeeded.
    pub fn observe_auto_grant(&mut self) {
        self.autos += 1;
    }

    /// A member index in `0..members`.
    pub fn member(&mut self, members: usize) -> usize {
        self.rng.random_range(0..members)
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        let p = self.rng.random_range(0..100);
        match p {
            0..21 => Step::Range(self.range(Ctx::Read)),
            21..40 => Step::Put(self.standalone_put()),
            40..46 => Step::DeleteRange(self.delete()),
            46..73 => Step::Txn(self.top_txn()),
            73..75 => Step::Compact(self.compact()),
            75..80 => Step::LeaseGrant(self.grant()),
            80..83 => Step::LeaseRevoke(LeaseRevokeRequest {
                id: self.lease_id(),
            }),
            83..86 => Step::LeaseKeepAlive(LeaseKeepAliveRequest {
                id: self.lease_id(),
            }),
            86..90 => Step::LeaseTimeToLive(LeaseTimeToLiveRequest {
                id: self.lease_id(),
                keys: self.rng.random_bool(0.7),
            }),
            90..92 => Step::LeaseLeases(LeaseLeasesRequest {}),
            _ => self.watch(),
        }
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        *xs.choose(&mut self.rng).expect("non-empty choice")
    }

    fn key(&mut self, ctx: Ctx) -> Vec<u8> {
        if ctx == Ctx::Read && self.rng.random_bool(0.15) {
            return self.pick(&READ_ONLY_KEYS).to_vec();
        }
        self.pick(&KEYS).to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        self.pick(&VALUES).to_vec()
    }

    /// A (key, range_end) pair in one of etcd's range forms: keys from
    /// the read-only set too when `read`; an explicit end sorting before
    /// the key only when `reversed`.
    fn range_form(&mut self, read: bool, reversed: bool) -> (Vec<u8>, Vec<u8>) {
        let ctx = if read { Ctx::Read } else { Ctx::Write };
        let key = self.key(ctx);
        let end = match self.rng.random_range(0..10) {
            // Single key.
            0..3 => Vec::new(),
            // Prefix.
            3..5 => prefix_end(&key),
            // From the key to the end.
            5..7 => vec![0],
            // An explicit end, which may sort before the key (reversed) or
            // equal it (empty).
            _ => {
                let end = self.key(ctx);
                if !reversed && !end.is_empty() && end < key {
                    return (end, key);
                }
                end
            }
        };
        (key, end)
    }

    fn revision(&mut self) -> i64 {
        match self.rng.random_range(0..20) {
            0..10 => 0,
            10..14 => self.rng.random_range(self.base.max(1)..=self.rev.max(1)),
            14 => self.compacted,
            15 => self.compacted - 1,
            16 => self.rev,
            17 => self.rev + 1,
            18 => self.rev + self.rng.random_range(2..10),
            _ => -1,
        }
    }

    fn range(&mut self, ctx: Ctx) -> RangeRequest {
        let reversed = ctx == Ctx::Read || self.opts.allows(Avoid::ReversedInWrites);
        let (key, range_end) = self.range_form(true, reversed);
        let mut r = RangeRequest {
            key,
            range_end,
            ..Default::default()
        };
        if self.rng.random_bool(0.3) {
            r.limit = self.pick(&[1, 2, 3, 5, -1]);
        }
        if self.rng.random_bool(0.35) {
            r.revision = self.revision();
            // In a Txn, only revisions that can be read: etcd 3.4 applies
            // the writes before a compacted or future range in the same
            // branch and then fails the Txn; Keel refuses the whole Txn (a
            // deliberate difference, README).
            // A negative one is "compacted" in etcd's Txn and the current
            // revision in Keel's (a known difference, being fixed).
            if ctx == Ctx::Write && (r.revision > self.rev || r.revision < self.compacted.max(1)) {
                r.revision = 0;
            }
        }
        if self.rng.random_bool(0.25) {
            r.sort_order = self.rng.random_range(0..3);
            r.sort_target = self.rng.random_range(0..5);
        }
        if ctx == Ctx::Read && self.opts.allows(Avoid::Serializable) && self.rng.random_bool(0.1) {
            r.serializable = true;
        }
        r.keys_only = self.rng.random_bool(0.1);
        r.count_only = self.rng.random_bool(0.1);
        if r.count_only && !self.opts.allows(Avoid::CountOnlyWithLimit) {
            r.limit = 0;
        }
        if self.rng.random_bool(0.1) {
            let lo = self.rng.random_range(0..=self.rev.max(1));
            let hi = self.rng.random_range(0..=self.rev.max(1) + 1);
            match self.rng.random_range(0..4) {
                0 => r.min_mod_revision = lo,
                1 => r.max_mod_revision = hi,
                2 => r.min_create_revision = lo,
                _ => r.max_create_revision = hi,
            }
        }
        r
    }

    fn put(&mut self) -> PutRequest {
        let mut p = PutRequest {
            key: if self.rng.random_bool(0.02) {
                Vec::new()
            } else {
                self.key(Ctx::Write)
            },
            value: self.value(),
            prev_kv: self.rng.random_bool(0.3),
            ..Default::default()
        };
        if self.rng.random_bool(0.2) {
            p.lease = self.lease_id();
        }
        if self.rng.random_bool(0.05) {
            p.ignore_value = true;
            if self.rng.random_bool(0.7) {
                p.value.clear();
            }
        }
        if self.rng.random_bool(0.05) {
            p.ignore_lease = true;
            if self.rng.random_bool(0.7) {
                p.lease = 0;
            }
        }
        p
    }

    /// A put outside a Txn.
    fn standalone_put(&mut self) -> PutRequest {
        let mut p = self.put();
        if p.ignore_value && !self.opts.allows(Avoid::PutIgnoreValueWithLease) {
            p.lease = 0;
        }
        p
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let (key, range_end) = if self.rng.random_bool(0.02) {
            (Vec::new(), Vec::new())
        } else {
            self.range_form(false, self.opts.allows(Avoid::ReversedInWrites))
        };
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.rng.random_bool(0.4),
        }
    }

    fn compare(&mut self) -> Compare {
        let single = self.rng.random_bool(0.7);
        let (key, range_end) = if single || !self.opts.allows(Avoid::RangeCompare) {
            (self.key(Ctx::Read), Vec::new())
        } else {
            self.range_form(true, self.opts.allows(Avoid::ReversedInWrites))
        };
        let target = self.rng.random_range(0..5);
        let rev_near = |g: &mut Self| match g.rng.random_range(0..5) {
            0 => 0,
            1 => g.rev,
            2 => g.rev + 1,
            _ => g.rng.random_range(0..=g.rev.max(1)),
        };
        // Always the union that matches the target: Keel refuses a
        // mismatch, etcd compares with the zero value (a deliberate
        // difference, README).
        let union_of = target;
        let union = match union_of {
            0 => compare::TargetUnion::Version(self.rng.random_range(0..4)),
            1 => compare::TargetUnion::CreateRevision(rev_near(self)),
            2 => compare::TargetUnion::ModRevision(rev_near(self)),
            3 => compare::TargetUnion::Value(self.value()),
            _ => compare::TargetUnion::Lease(if self.rng.random_bool(0.4) {
                0
            } else {
                self.lease_id()
            }),
        };
        Compare {
            result: self.rng.random_range(0..4),
            target,
            key,
            range_end,
            target_union: Some(union),
        }
    }

    fn op(&mut self, depth: u32) -> RequestOp {
        let writes = depth == 0 || self.opts.allows(Avoid::NestedTxnWrites);
        let r = match self.rng.random_range(0..10) {
            3..9 if !writes => request_op::Request::RequestRange(self.range(Ctx::Write)),
            0..3 => request_op::Request::RequestRange(self.range(Ctx::Write)),
            3..7 => request_op::Request::RequestPut(self.put()),
            7..9 => request_op::Request::RequestDeleteRange(self.delete()),
            _ if depth < 2 => request_op::Request::RequestTxn(self.txn(depth + 1)),
            _ => request_op::Request::RequestRange(self.range(Ctx::Write)),
        };
        RequestOp { request: Some(r) }
    }

    fn txn(&mut self, depth: u32) -> TxnRequest {
        let compares = self.rng.random_range(0..4);
        let success = self.rng.random_range(0..4);
        let failure = self.rng.random_range(0..3);
        TxnRequest {
            compare: (0..compares).map(|_| self.compare()).collect(),
            success: (0..success).map(|_| self.op(depth)).collect(),
            failure: (0..failure).map(|_| self.op(depth)).collect(),
        }
    }

    /// A Txn as sent (not nested). When it holds a put anywhere, no delete
    /// in it ends at `\0`: etcd's duplicate-key check treats such a
    /// delete as an empty interval, so it lets a put and a delete of the
    /// same key through where Keel refuses them (a deliberate difference,
    /// README); those deletes end at their prefix end instead, at any
    /// depth.
    fn top_txn(&mut self) -> TxnRequest {
        let mut t = self.txn(0);
        if !self.opts.allows(Avoid::NestedTxnWrites) {
            no_writes_beside_nested_txns(&mut t);
        }
        if has_put(&t) {
            no_delete_to_the_end(&mut t);
        }
        t
    }

    fn compact(&mut self) -> CompactionRequest {
        let revision = match self.rng.random_range(0..10) {
            // Valid: between the last compaction and now, leaving history.
            0..5 => {
                let lo = (self.compacted + 1).max(self.base);
                let hi = self.rev.max(lo);
                self.rng.random_range(lo..=hi.min(lo + (hi - lo) / 2 + 1))
            }
            5 => self.rev,
            // Already compacted (revision 0 before any compaction is a
            // deliberate difference, README).
            6 if self.compacted > 0 => self.compacted,
            6 | 7 => self.compacted - 1,
            8 => self.rev + 1,
            _ => self.rev + self.rng.random_range(2..100),
        };
        CompactionRequest {
            revision,
            physical: self.rng.random_bool(0.5),
        }
    }

    fn lease_id(&mut self) -> i64 {
        if self.autos > 0 && self.rng.random_bool(0.3) {
            AUTO_LEASE_BASE + self.rng.random_range(0..self.autos)
        } else {
            self.pick(&LEASE_IDS)
        }
    }

    fn grant(&mut self) -> LeaseGrantRequest {
        // Long TTLs: no lease expires during a run (expiry times differ
        // between two clusters, so expiry is not compared).
        let ttl = match self.rng.random_range(0..20) {
            0 => MAX_LEASE_TTL + 1,
            1 => MAX_LEASE_TTL,
            _ => self.rng.random_range(3_600..86_400),
        };
        let id = if self.rng.random_bool(0.2) {
            0
        } else {
            self.pick(&LEASE_IDS)
        };
        LeaseGrantRequest { ttl, id }
    }

    fn watch(&mut self) -> Step {
        let (key, range_end) = self.range_form(true, true);
        let mut create = WatchCreateRequest {
            key,
            range_end,
            prev_kv: self.rng.random_bool(0.4),
            ..Default::default()
        };
        create.start_revision = match self.rng.random_range(0..6) {
            0 | 1 => 0,
            2 => self.rng.random_range(self.base.max(1)..=self.rev.max(1)),
            // Just above the compaction (at it, etcd has dropped the
            // tombstones of deletes made at that revision and Keel has
            // not: a deliberate difference, README), and below it.
            3 => self.compacted + 1,
            4 => (self.compacted - 1).max(1),
            _ => self.rev + 1,
        };
        if self.rng.random_bool(0.25) {
            create.filters = vec![self.rng.random_range(0..2)];
        }
        let n = self.rng.random_range(0..5);
        let writes = (0..n)
            .map(|_| match self.rng.random_range(0..4) {
                0 => Step::DeleteRange(self.delete()),
                1 => Step::Txn(self.top_txn()),
                _ => Step::Put(self.standalone_put()),
            })
            .collect();
        Step::Watch { create, writes }
    }
}

/// A branch that holds a nested Txn gets no put or delete of its own
/// (each becomes a range of its key).
fn no_writes_beside_nested_txns(t: &mut TxnRequest) {
    for ops in [&mut t.success, &mut t.failure] {
        let nested = ops
            .iter()
            .any(|op| matches!(op.request, Some(request_op::Request::RequestTxn(_))));
        for op in ops.iter_mut() {
            let key = match &mut op.request {
                Some(request_op::Request::RequestPut(p)) if nested => p.key.clone(),
                Some(request_op::Request::RequestDeleteRange(d)) if nested => d.key.clone(),
                Some(request_op::Request::RequestTxn(inner)) => {
                    no_writes_beside_nested_txns(inner);
                    continue;
                }
                _ => continue,
            };
            op.request = Some(request_op::Request::RequestRange(RangeRequest {
                key,
                ..Default::default()
            }));
        }
    }
}

fn has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => has_put(inner),
            _ => false,
        })
}

fn no_delete_to_the_end(t: &mut TxnRequest) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match &mut op.request {
            Some(request_op::Request::RequestDeleteRange(d)) if d.range_end == [0] => {
                // The prefix end of a key of `\xff` bytes is `\0` again:
                // such a delete takes just its key.
                d.range_end = prefix_end(&d.key);
                if d.range_end == [0] {
                    d.range_end.clear();
                }
            }
            Some(request_op::Request::RequestTxn(inner)) => no_delete_to_the_end(inner),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(seed: u64) -> Vec<String> {
        let mut g = Generator::new(seed, GenOptions::default(), 10);
        (0..300)
            .map(|i| {
                g.observe_revision(10 + i / 2);
                format!("{:?}", g.next_step())
            })
            .collect()
    }

    #[test]
    fn a_seed_replays_the_same_sequence_and_another_seed_does_not() {
        assert_eq!(sequence(7), sequence(7));
        assert_ne!(sequence(7), sequence(8));
    }

    fn reversed(k: &[u8], e: &[u8]) -> bool {
        !e.is_empty() && e != b"\0" && e < k
    }

    fn txn_has_reversed(t: &TxnRequest) -> bool {
        t.compare.iter().any(|c| reversed(&c.key, &c.range_end))
            || t.success
                .iter()
                .chain(&t.failure)
                .any(|op| match &op.request {
                    Some(request_op::Request::RequestRange(r)) => reversed(&r.key, &r.range_end),
                    Some(request_op::Request::RequestDeleteRange(d)) => {
                        reversed(&d.key, &d.range_end)
                    }
                    Some(request_op::Request::RequestTxn(t)) => txn_has_reversed(t),
                    _ => false,
                })
    }

    fn step_has_reversed_write(s: &Step) -> bool {
        match s {
            Step::Txn(t) => txn_has_reversed(t),
            Step::DeleteRange(d) => reversed(&d.key, &d.range_end),
            Step::Watch { writes, .. } => writes.iter().any(step_has_reversed_write),
            _ => false,
        }
    }

    #[test]
    fn reversed_ranges_in_writes_come_only_when_allowed() {
        let count = |avoid: &[Avoid]| {
            let opts = GenOptions {
                avoid: avoid.iter().copied().collect(),
            };
            let mut g = Generator::new(3, opts, 5);
            (0..3000)
                .filter(|_| step_has_reversed_write(&g.next_step()))
                .count()
        };
        assert!(
            count(&[]) > 10,
            "the generator must produce reversed ranges"
        );
        assert_eq!(count(&[Avoid::ReversedInWrites]), 0);
    }

    #[test]
    fn avoided_shapes_parse_by_name_and_unknown_ones_are_refused() {
        for a in Avoid::ALL {
            assert_eq!(Avoid::parse(a.name()), Ok(a));
        }
        assert!(
            Avoid::parse("everything")
                .unwrap_err()
                .contains("reversed-in-writes")
        );
    }

    #[test]
    fn writes_never_touch_keys_before_the_key_space() {
        let mut g = Generator::new(5, GenOptions::default(), 5);
        for _ in 0..3000 {
            if let Step::Put(p) = g.next_step() {
                assert!(p.key.is_empty() || p.key.as_slice() >= KEYS[0], "{p:?}");
            }
        }
    }
}
