//! The fault schedule, drawn from the seed alone before the run starts, so
//! the same seed always gives the same schedule: which fault, when, for how
//! long, and against which member or partition shape. Targets that depend
//! on the cluster's state (the current leader) are resolved when the fault
//! is injected, and the timeline records what they resolved to.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// A kind of fault the harness can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a member, restart it with its data after the hold.
    Kill,
    /// SIGKILL the current leader, restart it after the hold.
    LeaderKill,
    /// SIGSTOP a member (the leader half of the time), SIGCONT after the hold.
    Pause,
    /// Cut links between members through the proxies (any shape).
    Partition,
    /// Cut the current leader off from everyone else.
    PartitionLeader,
    /// A random minority against the majority.
    PartitionMajority,
    /// Two halves joined through one bridge member.
    PartitionBridge,
    /// Each member sees only its two ring neighbours (5 members; 3 fall back
    /// to a majority/minority split, where a ring is the full mesh).
    PartitionRing,
    /// Graceful stop (SIGTERM) and immediate restart on the same data.
    Restart,
    /// Remove a member, wipe its data, re-add it empty with --join.
    MemberReplace,
}

impl Nemesis {
    pub const ALL: [Nemesis; 10] = [
        Nemesis::Kill,
        Nemesis::LeaderKill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::PartitionLeader,
        Nemesis::PartitionMajority,
        Nemesis::PartitionBridge,
        Nemesis::PartitionRing,
        Nemesis::Restart,
        Nemesis::MemberReplace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::LeaderKill => "leader-kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::PartitionLeader => "partition-leader",
            Nemesis::PartitionMajority => "partition-majority",
            Nemesis::PartitionBridge => "partition-bridge",
            Nemesis::PartitionRing => "partition-ring",
            Nemesis::Restart => "restart",
            Nemesis::MemberReplace => "member-replace",
        }
    }

    /// Parses a comma-separated list (`kill,leader-kill,partition`).
    pub fn parse_list(s: &str) -> Result<Vec<Nemesis>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                Nemesis::ALL
                    .into_iter()
                    .find(|n| n.name() == p)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Nemesis::ALL.iter().map(|n| n.name()).collect();
                        format!("unknown nemesis {p:?}; known: {}", names.join(", "))
                    })
            })
            .collect()
    }
}

/// Against whom a fault is injected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Target {
    /// Whoever leads when the fault starts.
    Leader,
    /// Member by index.
    Member { index: usize },
    /// The current leader alone against the rest.
    IsolateLeader,
    /// These members cut off from the others.
    Minority { members: Vec<usize> },
    /// `order[..h]` and `order[h+1..]` cut from each other, `order[h]`
    /// (h = n/2) talking to both.
    Bridge { order: Vec<usize> },
    /// Each member linked only to its neighbours in `order` (a cycle).
    Ring { order: Vec<usize> },
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Offset from the start of the run, in milliseconds.
    pub at_ms: u64,
    pub nemesis: Nemesis,
    pub target: Target,
    /// How long the fault lasts before it is healed, in milliseconds.
    pub hold_ms: u64,
}

/// Timing of a schedule.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub duration: Duration,
    /// Quiet time before the first fault.
    pub warmup: Duration,
    /// Quiet time after the last fault is healed, before the run ends.
    pub cooldown: Duration,
    /// Range of how long a fault lasts.
    pub hold: (Duration, Duration),
    /// Range of the quiet gap after a fault is healed.
    pub gap: (Duration, Duration),
}

impl Timing {
    /// Defaults scaled to the run: short runs get shorter faults.
    pub fn for_duration(duration: Duration) -> Self {
        let s = duration.as_secs();
        let (hold, gap) = if s < 60 {
            ((2_000, 4_000), (1_500, 3_000))
        } else {
            ((3_000, 8_000), (3_000, 6_000))
        };
        Timing {
            duration,
            warmup: Duration::from_millis((s * 1000 / 10).clamp(1_500, 5_000)),
            cooldown: Duration::from_millis((s * 1000 / 10).clamp(2_000, 5_000)),
            hold: (Duration::from_millis(hold.0), Duration::from_millis(hold.1)),
            gap: (Duration::from_millis(gap.0), Duration::from_millis(gap.1)),
        }
    }
}

fn ms(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> u64 {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    }
}

fn permutation(rng: &mut StdRng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    v
}

/// Draws the target of one fault.
fn target(rng: &mut StdRng, nemesis: Nemesis, n: usize) -> Target {
    let shape = match nemesis {
        Nemesis::Partition => [
            Nemesis::PartitionLeader,
            Nemesis::PartitionMajority,
            Nemesis::PartitionBridge,
            Nemesis::PartitionRing,
        ][rng.random_range(0..4)],
        other => other,
    };
    match shape {
        Nemesis::LeaderKill => Target::Leader,
        Nemesis::Pause if rng.random_bool(0.5) => Target::Leader,
        Nemesis::PartitionLeader => Target::IsolateLeader,
        Nemesis::PartitionBridge => Target::Bridge {
            order: permutation(rng, n),
        },
        Nemesis::PartitionRing if n >= 5 => Target::Ring {
            order: permutation(rng, n),
        },
        Nemesis::PartitionMajority | Nemesis::PartitionRing => {
            let size = rng.random_range(1..=(n - 1) / 2);
            let mut members = permutation(rng, n)[..size].to_vec();
            members.sort();
            Target::Minority { members }
        }
        _ => Target::Member {
            index: rng.random_range(0..n),
        },
    }
}

/// The whole schedule for `n` members: faults one after another (each
/// healed before the next), kinds drawn uniformly from `kinds`.
pub fn plan(seed: u64, n: usize, kinds: &[Nemesis], t: Timing) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if kinds.is_empty() || n == 0 {
        return out;
    }
    let end = t.duration.saturating_sub(t.cooldown).as_millis() as u64;
    let mut at = t.warmup.as_millis() as u64;
    loop {
        let nemesis = kinds[rng.random_range(0..kinds.len())];
        let hold = match nemesis {
            // Replacing a member is a sequence of steps, not a held state.
            Nemesis::MemberReplace | Nemesis::Restart => 0,
            _ => ms(&mut rng, t.hold),
        };
        let target = target(&mut rng, nemesis, n);
        // Budget for the steps of a replacement or restart.
        let busy = if hold == 0 { 3_000 } else { hold };
        if at + busy > end {
            break;
        }
        out.push(Planned {
            at_ms: at,
            nemesis,
            target,
            hold_ms: hold,
        });
        at += busy + ms(&mut rng, t.gap);
    }
    out
}

/// Parses `90s`, `10m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 120s, 10m or 500ms"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("the duration must be positive".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let t = Timing::for_duration(Duration::from_secs(120));
        let kinds =
            Nemesis::parse_list("kill,leader-kill,pause,partition,restart,member-replace").unwrap();
        let a = plan(7, 5, &kinds, t);
        assert_eq!(a, plan(7, 5, &kinds, t));
        assert_ne!(a, plan(8, 5, &kinds, t));
        assert!(a.len() >= 8, "{a:?}");
        // Faults never overlap and all end before the cooldown.
        for w in a.windows(2) {
            assert!(w[0].at_ms + w[0].hold_ms.max(3_000) < w[1].at_ms);
        }
        let last = a.last().unwrap();
        assert!(last.at_ms + last.hold_ms.max(3_000) <= 115_000);
    }

    #[test]
    fn partitions_keep_a_majority_and_names_parse() {
        let kinds = [Nemesis::PartitionMajority];
        for seed in 0..50 {
            for p in plan(
                seed,
                5,
                &kinds,
                Timing::for_duration(Duration::from_secs(60)),
            ) {
                match p.target {
                    Target::Minority { members } => {
                        assert!(!members.is_empty() && members.len() <= 2)
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(Nemesis::parse_list("kill,nope").is_err());
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("3d").is_err());
    }
}
