//! The node lifecycle decision over plain values: which nodes to mark
//! unreachable or reachable again and whose pods to evict, given how long
//! ago each node's Lease last moved, and when to halt eviction because too
//! many nodes look down at once; plus the eviction rate limiter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the controller knows of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub name: String,
    pub zone: String,
    /// Time since this leader saw the node's Lease change (or since it
    /// became leader); `None` when the node has no Lease.
    pub lease_age: Option<Duration>,
    /// The Ready condition's status ("" when absent) and reason.
    pub ready: String,
    pub ready_reason: String,
    pub tainted: bool,
    /// Live pods bound to the node.
    pub pods: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub grace: Duration,
    pub eviction_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ready=Unknown and the unreachable taint.
    MarkUnreachable(String),
    /// Ready=True and no unreachable taint.
    MarkReachable(String),
    /// Delete the node's pods.
    Evict(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Why eviction is stopped, when it is.
    pub halted: Option<String>,
}

/// Decides over every node at once; `budget` is how many nodes may be
/// evicted now (the rate limiter's tokens).
pub fn reconcile(nodes: &[Observed], t: &Timing, budget: usize) -> Decision {
    let mut d = Decision::default();
    let watched: Vec<&Observed> = nodes.iter().filter(|n| n.lease_age.is_some()).collect();
    let is_down = |n: &Observed| n.lease_age.is_some_and(|a| a > t.grace);
    for n in &watched {
        if is_down(n) {
            if n.ready != "Unknown" || n.ready_reason != "NodeStatusUnknown" || !n.tainted {
                d.actions.push(Action::MarkUnreachable(n.name.clone()));
            }
        } else if n.tainted || n.ready_reason == "NodeStatusUnknown" {
            d.actions.push(Action::MarkReachable(n.name.clone()));
        }
    }
    let down = watched.iter().filter(|n| is_down(n)).count();
    let mut zones: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for n in &watched {
        let z = zones.entry(n.zone.as_str()).or_default();
        z.0 += 1;
        if is_down(n) {
            z.1 += 1;
        }
    }
    if down * 2 > watched.len() {
        d.halted = Some(format!(
            "{down} of {} nodes look down: more likely a control-plane or network fault than node failures; not evicting pods",
            watched.len()
        ));
    } else if let Some((z, (n, _))) = zones
        .iter()
        .find(|(_, (total, down))| *total > 1 && down == total)
    {
        d.halted = Some(format!(
            "all {n} nodes of zone {z:?} look down: more likely a network fault than node failures; not evicting pods"
        ));
    }
    if d.halted.is_some() {
        return d;
    }
    let evict_after = t.grace + t.eviction_timeout;
    let mut due: Vec<&&Observed> = watched
        .iter()
        .filter(|n| n.pods > 0 && n.lease_age.is_some_and(|a| a >= evict_after))
        .collect();
    due.sort_by(|a, b| b.lease_age.cmp(&a.lease_age).then(a.name.cmp(&b.name)));
    for n in due.into_iter().take(budget) {
        d.actions.push(Action::Evict(n.name.clone()));
    }
    d
}

/// A token bucket: `rate` tokens a second, at most one banked.
pub struct Limiter {
    pub rate: f64,
    pub tokens: f64,
    pub at: Instant,
}

impl Limiter {
    /// Whole tokens available now.
    pub fn available(&mut self) -> usize {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(1.0);
        self.at = now;
        self.tokens.floor() as usize
    }
    pub fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        grace: Duration::from_secs(10),
        eviction_timeout: Duration::from_secs(20),
    };

    fn node(name: &str, zone: &str, age: Option<u64>, pods: usize) -> Observed {
        Observed {
            name: name.into(),
            zone: zone.into(),
            lease_age: age.map(Duration::from_secs),
            ready: "True".into(),
            ready_reason: "KubeletReady".into(),
            tainted: false,
            pods,
        }
    }

    fn down(mut o: Observed) -> Observed {
        o.ready = "Unknown".into();
        o.ready_reason = "NodeStatusUnknown".into();
        o.tainted = true;
        o
    }

    #[test]
    fn a_fresh_lease_keeps_a_node_ready() {
        let d = reconcile(&[node("a", "z1", Some(9), 3)], &T, 1);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn an_expired_lease_marks_the_node_unreachable() {
        let d = reconcile(
            &[
                node("a", "z1", Some(11), 3),
                node("b", "z2", Some(1), 1),
                node("c", "z3", Some(1), 1),
            ],
            &T,
            1,
        );
        assert_eq!(d.actions, vec![Action::MarkUnreachable("a".into())]);
        // Already marked: nothing more until the eviction timeout.
        let d = reconcile(
            &[
                down(node("a", "z1", Some(25), 3)),
                node("b", "z2", Some(1), 1),
                node("c", "z3", Some(1), 1),
            ],
            &T,
            1,
        );
        assert!(d.actions.is_empty());
    }

    #[test]
    fn pods_are_evicted_after_the_timeout_within_the_budget() {
        let nodes = [
            down(node("a", "z1", Some(31), 3)),
            down(node("b", "z2", Some(40), 2)),
            down(node("e", "z3", Some(31), 0)),
            node("c", "z3", Some(1), 1),
            node("d", "z3", Some(1), 1),
            node("f", "z1", Some(1), 1),
        ];
        let d = reconcile(&nodes, &T, 1);
        assert_eq!(
            d.actions,
            vec![Action::Evict("b".into())],
            "longest down first, one per token"
        );
        let d = reconcile(&nodes, &T, 5);
        assert_eq!(
            d.actions,
            vec![Action::Evict("b".into()), Action::Evict("a".into())],
            "empty nodes need no eviction"
        );
        assert!(
            reconcile(&nodes, &T, 0).actions.is_empty(),
            "no tokens, no eviction"
        );
    }

    #[test]
    fn eviction_stops_when_most_nodes_look_down() {
        let nodes = [
            down(node("a", "z1", Some(31), 3)),
            down(node("b", "z2", Some(31), 3)),
            node("c", "z3", Some(1), 3),
        ];
        let d = reconcile(&nodes, &T, 5);
        assert!(d.actions.is_empty());
        assert!(d.halted.unwrap().contains("2 of 3 nodes"));
    }

    #[test]
    fn eviction_stops_when_a_whole_zone_looks_down() {
        let nodes = [
            down(node("a1", "z1", Some(31), 3)),
            down(node("a2", "z1", Some(31), 3)),
            node("b1", "z2", Some(1), 3),
            node("b2", "z2", Some(1), 3),
            node("c1", "z3", Some(1), 3),
        ];
        let d = reconcile(&nodes, &T, 5);
        assert!(d.actions.is_empty());
        assert!(d.halted.unwrap().contains("zone \"z1\""));
        // One node of a multi-node zone is just a node failure.
        let nodes = [
            down(node("a1", "z1", Some(31), 3)),
            node("a2", "z1", Some(1), 3),
            node("b1", "z2", Some(1), 3),
        ];
        assert_eq!(
            reconcile(&nodes, &T, 5).actions,
            vec![Action::Evict("a1".into())]
        );
    }

    #[test]
    fn a_single_node_zone_going_down_is_a_node_failure() {
        let nodes = [
            down(node("a", "z1", Some(31), 2)),
            node("b", "z2", Some(1), 2),
            node("c", "z3", Some(1), 2),
        ];
        let d = reconcile(&nodes, &T, 1);
        assert_eq!(d.halted, None);
        assert_eq!(d.actions, vec![Action::Evict("a".into())]);
    }

    #[test]
    fn a_node_that_comes_back_is_ready_again() {
        let d = reconcile(&[down(node("a", "z1", Some(1), 0))], &T, 1);
        assert_eq!(d.actions, vec![Action::MarkReachable("a".into())]);
    }

    #[test]
    fn nodes_without_a_lease_are_left_alone() {
        let mut n = node("sim", "z1", None, 5);
        n.ready = "False".into();
        let d = reconcile(&[n, down(node("x", "z2", Some(100), 0))], &T, 1);
        assert_eq!(
            d.actions,
            vec![],
            "the leaseless node is not touched, nor counted"
        );
        assert!(d.halted.is_some(), "1 of 1 watched nodes is down");
    }

    #[test]
    fn the_rate_limiter_refills() {
        let mut l = Limiter {
            rate: 10.0,
            tokens: 1.0,
            at: Instant::now(),
        };
        assert_eq!(l.available(), 1);
        l.take();
        assert_eq!(l.available(), 0);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(l.available(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(l.available(), 1, "at most one banked");
    }
}
