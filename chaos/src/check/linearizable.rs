//! Linearizability of register histories (read, write, compare-and-swap per
//! key), checked with a Wing–Gong style search: histories are split per key
//! (a history is linearizable iff each key's is), each key's operations are
//! tried in every order the real-time order allows, and states already seen
//! (which operations are done, and the register's value) are not tried
//! again. A step budget bounds the search; running out gives `Unknown`, not
//! a verdict. A violation names the smallest window the search could not get
//! past: the operations that were candidates there, and their time span.

use std::collections::{BTreeMap, HashSet};

pub use crate::workload::register::{Op, Operation, Outcome};

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable: the first key found and the smallest window.
    Violation(Violation),
    /// The step budget ran out on some key before a verdict.
    Unknown {
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// Time span of the window: earliest call to latest return among `ops`.
    pub from: u64,
    pub to: u64,
    /// The operations that could not be placed, each with everything the
    /// search had placed before them.
    pub ops: Vec<Operation>,
}

/// Checks a whole history, key by key, with at most `budget` search steps per key.
pub fn check(history: &[Operation], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for o in history.iter().filter(|o| o.outcome != Outcome::Failed) {
        by_key.entry(o.key.as_str()).or_default().push(o.clone());
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match check_key(ops, budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Violation(v) => return Verdict::Violation(v),
            KeyVerdict::Unknown => unknown = unknown.or(Some(key.to_string())),
        }
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Linearizable,
    }
}

enum KeyVerdict {
    Ok,
    Violation(Violation),
    Unknown,
}

/// The register model: the value after `op` from `state`, if `outcome` is
/// possible there.
fn step(state: Option<i64>, op: &Op, outcome: &Outcome) -> Option<Option<i64>> {
    match (op, outcome) {
        (Op::Read, Outcome::Read(v)) => (*v == state).then_some(state),
        (Op::Read, Outcome::Unknown) => Some(state),
        (Op::Write(v), Outcome::Written | Outcome::Unknown) => Some(Some(*v)),
        (Op::Cas(from, to), Outcome::Swapped(true)) => (state == Some(*from)).then_some(Some(*to)),
        (Op::Cas(from, _), Outcome::Swapped(false)) => (state != Some(*from)).then_some(state),
        (Op::Cas(from, to), Outcome::Unknown) => Some(if state == Some(*from) {
            Some(*to)
        } else {
            state
        }),
        _ => None,
    }
}

fn check_key(mut ops: Vec<Operation>, budget: u64) -> KeyVerdict {
    ops.sort_by_key(|o| o.call);
    let key = ops.first().map(|o| o.key.clone()).unwrap_or_default();
    let n = ops.len();
    let ret = |o: &Operation| {
        if o.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            o.ret
        }
    };
    // Operations that must be placed (unknown ones may never take effect).
    let must: usize = ops.iter().filter(|o| o.outcome != Outcome::Unknown).count();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    // Depth-first over (done set, register value).
    let mut stack = vec![(vec![0u64; words], None::<i64>)];
    let mut steps = 0u64;
    let mut deepest: (usize, Vec<u64>) = (0, vec![0u64; words]);
    let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;
    while let Some((done, state)) = stack.pop() {
        steps += 1;
        if steps > budget {
            return KeyVerdict::Unknown;
        }
        let placed_must = (0..n)
            .filter(|i| is_done(&done, *i) && ops[*i].outcome != Outcome::Unknown)
            .count();
        if placed_must == must {
            return KeyVerdict::Ok;
        }
        if placed_must >= deepest.0 {
            deepest = (placed_must, done.clone());
        }
        // An operation may go next if no pending operation returned before it was called.
        let horizon = (0..n)
            .filter(|i| !is_done(&done, *i))
            .map(|i| ret(&ops[i]))
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).filter(|i| !is_done(&done, *i) && ops[*i].call <= horizon) {
            if let Some(next) = step(state, &ops[i].op, &ops[i].outcome) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                if seen.insert((d.clone(), next)) {
                    stack.push((d, next));
                }
            }
        }
    }
    // No order works: report the candidates at the deepest frontier.
    let done = deepest.1;
    let horizon = (0..n)
        .filter(|i| !is_done(&done, *i))
        .map(|i| ret(&ops[i]))
        .min()
        .unwrap_or(u64::MAX);
    let window: Vec<Operation> = (0..n)
        .filter(|i| !is_done(&done, *i) && ops[*i].call <= horizon)
        .map(|i| ops[i].clone())
        .collect();
    let from = window.iter().map(|o| o.call).min().unwrap_or(0);
    let to = window
        .iter()
        .map(ret)
        .filter(|r| *r != u64::MAX)
        .max()
        .unwrap_or(from);
    KeyVerdict::Violation(Violation {
        key,
        from,
        to,
        ops: window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, op: Op, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "x".into(),
            op,
            call,
            ret,
            outcome,
        }
    }

    const B: u64 = 100_000;

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        let h = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(2, Op::Read, 20, 30, Outcome::Read(Some(1))),
        ];
        assert_eq!(check(&h, B), Verdict::Linearizable);
        // A read overlapping a write may see the old or the new value.
        for seen in [None, Some(1)] {
            let h = vec![
                op(1, Op::Write(1), 0, 100, Outcome::Written),
                op(2, Op::Read, 10, 20, Outcome::Read(seen)),
            ];
            assert_eq!(check(&h, B), Verdict::Linearizable, "read {seen:?}");
        }
    }

    #[test]
    fn stale_read_is_a_violation_naming_the_read() {
        let h = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(2, Op::Read, 20, 30, Outcome::Read(None)),
        ];
        match check(&h, B) {
            Verdict::Violation(v) => {
                assert_eq!(v.key, "x");
                assert!(v.ops.iter().any(|o| o.op == Op::Read), "{v:?}");
                assert_eq!((v.from, v.to), (20, 30));
            }
            other => panic!("stale read passed: {other:?}"),
        }
    }

    #[test]
    fn lost_write_and_never_written_value_are_violations() {
        let lost = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(1, Op::Write(2), 20, 30, Outcome::Written),
            op(2, Op::Read, 40, 50, Outcome::Read(Some(1))),
        ];
        assert!(matches!(check(&lost, B), Verdict::Violation(_)));
        let invented = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(2, Op::Read, 5, 50, Outcome::Read(Some(7))),
        ];
        assert!(matches!(check(&invented, B), Verdict::Violation(_)));
    }

    #[test]
    fn cas_follows_the_register() {
        let ok = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(2, Op::Cas(1, 2), 20, 30, Outcome::Swapped(true)),
            op(3, Op::Cas(1, 3), 40, 50, Outcome::Swapped(false)),
            op(1, Op::Read, 60, 70, Outcome::Read(Some(2))),
        ];
        assert_eq!(check(&ok, B), Verdict::Linearizable);
        let bad = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(2, Op::Cas(5, 2), 20, 30, Outcome::Swapped(true)),
        ];
        assert!(matches!(check(&bad, B), Verdict::Violation(_)));
    }

    #[test]
    fn unknown_and_failed_operations() {
        // An unknown write may have applied, or not.
        for seen in [None, Some(1)] {
            let h = vec![
                op(1, Op::Write(1), 0, 0, Outcome::Unknown),
                op(2, Op::Read, 20, 30, Outcome::Read(seen)),
            ];
            assert_eq!(check(&h, B), Verdict::Linearizable);
        }
        // A failed write never applied.
        let h = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Failed),
            op(2, Op::Read, 20, 30, Outcome::Read(Some(1))),
        ];
        assert!(matches!(check(&h, B), Verdict::Violation(_)));
    }

    #[test]
    fn keys_are_checked_independently_and_budget_gives_unknown() {
        let mut h = vec![
            op(1, Op::Write(1), 0, 10, Outcome::Written),
            op(2, Op::Read, 20, 30, Outcome::Read(Some(1))),
        ];
        h.push(Operation {
            key: "y".into(),
            ..op(3, Op::Read, 20, 30, Outcome::Read(Some(1)))
        });
        match check(&h, B) {
            Verdict::Violation(v) => assert_eq!(v.key, "y"),
            other => panic!("{other:?}"),
        }
        // Many concurrent writes and a read of a value nobody wrote: the
        // search runs out of budget before it can prove the violation.
        let mut wide: Vec<Operation> = (0..20)
            .map(|i| op(i, Op::Write(i as i64), 0, 1000, Outcome::Written))
            .collect();
        wide.push(op(99, Op::Read, 2000, 2010, Outcome::Read(Some(-1))));
        assert_eq!(check(&wide, 50), Verdict::Unknown { key: "x".into() });
    }
}
