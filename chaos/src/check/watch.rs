//! Watch completeness: each watcher, across all its reconnections, must see
//! every revision of the watched prefix exactly once and in increasing
//! order. The expected revisions are the `mod_revision`s of the keys in
//! the final state after healing (each key is written once), so writes with
//! unknown outcomes are judged by whether they happened.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::workload::watch::Received;

/// What went wrong for one watcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum WatchViolation {
    /// A revision arrived again, or after a later one.
    OutOfOrder {
        watcher: u64,
        revision: i64,
        after: i64,
    },
    /// Revisions in the final state the watcher never saw (first few, count).
    Missing {
        watcher: u64,
        count: usize,
        first: Vec<i64>,
    },
    /// A revision no key in the final state has.
    Phantom { watcher: u64, revision: i64 },
}

/// Checks every watcher's received events against the expected revisions.
pub fn check(
    watchers: u64,
    received: &[Received],
    expected: &BTreeSet<i64>,
) -> Vec<WatchViolation> {
    let mut out = Vec::new();
    for w in 0..watchers {
        let mut last = 0i64;
        let mut seen = BTreeSet::new();
        for r in received.iter().filter(|r| r.watcher == w) {
            if r.revision <= last {
                out.push(WatchViolation::OutOfOrder {
                    watcher: w,
                    revision: r.revision,
                    after: last,
                });
            }
            last = last.max(r.revision);
            if !expected.contains(&r.revision) {
                out.push(WatchViolation::Phantom {
                    watcher: w,
                    revision: r.revision,
                });
            }
            seen.insert(r.revision);
        }
        let missing: Vec<i64> = expected.difference(&seen).copied().collect();
        if !missing.is_empty() {
            out.push(WatchViolation::Missing {
                watcher: w,
                count: missing.len(),
                first: missing.into_iter().take(10).collect(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(watcher: u64, member: usize, revision: i64) -> Received {
        Received {
            watcher,
            member,
            revision,
            key: format!("watch/{revision}"),
            at: revision as u64,
        }
    }

    #[test]
    fn a_complete_stream_across_reconnects_passes() {
        let expected: BTreeSet<i64> = [3, 5, 6, 9].into();
        let got = vec![r(0, 0, 3), r(0, 0, 5), r(0, 2, 6), r(0, 1, 9), r(1, 1, 3)];
        let v = check(1, &got, &expected);
        assert_eq!(v, vec![]);
    }

    #[test]
    fn gaps_duplicates_reordering_and_phantoms_are_caught() {
        let expected: BTreeSet<i64> = [3, 5, 6, 9].into();
        // Watcher 0 replays 5 after a reconnect, and never sees 9.
        // Watcher 1 sees 6 before 5 and a revision nobody wrote.
        let got = vec![
            r(0, 0, 3),
            r(0, 0, 5),
            r(0, 1, 5),
            r(0, 1, 6),
            r(1, 0, 3),
            r(1, 0, 6),
            r(1, 0, 5),
            r(1, 0, 7),
            r(1, 0, 9),
        ];
        let v = check(2, &got, &expected);
        assert!(v.contains(&WatchViolation::OutOfOrder {
            watcher: 0,
            revision: 5,
            after: 5
        }));
        assert!(v.contains(&WatchViolation::Missing {
            watcher: 0,
            count: 1,
            first: vec![9]
        }));
        assert!(v.contains(&WatchViolation::OutOfOrder {
            watcher: 1,
            revision: 5,
            after: 6
        }));
        assert!(v.contains(&WatchViolation::Phantom {
            watcher: 1,
            revision: 7
        }));
    }
}
