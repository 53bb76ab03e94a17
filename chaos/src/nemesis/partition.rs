//! Network partitions through the per-link proxies: the shape (leader
//! isolated, minority/majority, bridge, ring) becomes a set of member pairs
//! whose links are cut in both directions for the hold, then restored.
//! Clients still reach every member directly, so a member on the wrong side
//! keeps answering them: exactly where stale reads would show.

use std::collections::BTreeSet;

use super::schedule::{Planned, Target};
use super::{Ctx, Injected, NemesisError, hold};

/// The unordered pairs of members to cut for a shape over `n` members
/// (`leader` resolves `IsolateLeader`).
pub fn cut_pairs(target: &Target, n: usize, leader: Option<usize>) -> BTreeSet<(usize, usize)> {
    let pair = |a: usize, b: usize| (a.min(b), a.max(b));
    let mut cut = BTreeSet::new();
    let mut split = |side: &[usize]| {
        for a in side {
            for b in (0..n).filter(|b| !side.contains(b)) {
                cut.insert(pair(*a, b));
            }
        }
    };
    match target {
        Target::IsolateLeader => {
            if let Some(l) = leader {
                split(&[l]);
            }
        }
        Target::Minority { members } => split(members),
        Target::Bridge { order } => {
            let h = order.len() / 2;
            for a in &order[..h] {
                for b in &order[h + 1..] {
                    cut.insert(pair(*a, *b));
                }
            }
        }
        Target::Ring { order } => {
            for a in 0..order.len() {
                for b in a + 1..order.len() {
                    let d = b - a;
                    if d != 1 && d != order.len() - 1 {
                        cut.insert(pair(order[a], order[b]));
                    }
                }
            }
        }
        Target::Leader | Target::Member { .. } => {}
    }
    cut
}

/// `{m1} | {m2,m3}` style description of the shape.
fn describe(ctx: &Ctx<'_>, target: &Target, leader: Option<usize>) -> String {
    let names = |v: &[usize]| v.iter().map(|i| ctx.name(*i)).collect::<Vec<_>>().join(",");
    let n = ctx.cluster.members.len();
    let minority = match target {
        Target::Bridge { order } => {
            let h = order.len() / 2;
            return format!(
                "bridge {{{}}} - {} - {{{}}}",
                names(&order[..h]),
                ctx.name(order[h]),
                names(&order[h + 1..])
            );
        }
        Target::Ring { order } => return format!("ring {}", names(order)),
        Target::IsolateLeader => leader.into_iter().collect(),
        Target::Minority { members } => members.clone(),
        Target::Leader | Target::Member { .. } => Vec::new(),
    };
    let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
    format!("{{{}}} | {{{}}}", names(&minority), names(&majority))
}

pub async fn run(ctx: &mut Ctx<'_>, p: &Planned) -> Injected {
    let n = ctx.cluster.members.len();
    let leader = match p.target {
        Target::IsolateLeader => Some(ctx.current_leader().await.ok_or(NemesisError::NoLeader)?),
        _ => ctx.current_leader().await,
    };
    let cut = cut_pairs(&p.target, n, leader);
    let mut target = describe(ctx, &p.target, leader);
    if let Some(l) = leader {
        target.push_str(&format!(" (leader {})", ctx.name(l)));
    }
    for (a, b) in &cut {
        ctx.mesh.cut(*a, *b);
    }
    tracing::info!(%target, "nemesis: partition");
    hold(p.hold_ms).await;
    ctx.mesh.heal();
    let minority = match &p.target {
        Target::IsolateLeader => leader.into_iter().collect(),
        Target::Minority { members } => members.clone(),
        _ => Vec::new(),
    };
    Ok((target, minority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cut_the_right_links() {
        let iso = cut_pairs(&Target::IsolateLeader, 3, Some(1));
        assert_eq!(iso, BTreeSet::from([(0, 1), (1, 2)]));
        let min = cut_pairs(
            &Target::Minority {
                members: vec![0, 3],
            },
            5,
            None,
        );
        assert_eq!(min.len(), 6);
        assert!(!min.contains(&(0, 3)) && min.contains(&(0, 1)));
        // Bridge 0,1 - 2 - 3,4: only the halves are cut from each other.
        let bridge = cut_pairs(
            &Target::Bridge {
                order: vec![0, 1, 2, 3, 4],
            },
            5,
            None,
        );
        assert_eq!(bridge, BTreeSet::from([(0, 3), (0, 4), (1, 3), (1, 4)]));
        // Ring 0-1-2-3-4-0: each keeps its two neighbours.
        let ring = cut_pairs(
            &Target::Ring {
                order: vec![0, 1, 2, 3, 4],
            },
            5,
            None,
        );
        assert_eq!(
            ring,
            BTreeSet::from([(0, 2), (0, 3), (1, 3), (1, 4), (2, 4)])
        );
    }
}
