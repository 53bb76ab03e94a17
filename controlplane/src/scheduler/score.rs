//! The scheduler's scoring: among the nodes a pod fits, prefer the least
//! allocated one, and spread a workload's pods (same controlling owner, or
//! the same labels) across zones first and nodes second, so losing a zone or
//! a node takes as few of its replicas as possible.

use std::collections::HashMap;

use keel_proto::api::Pod;

use super::filter::{NodeInfo, Resources};

/// Weights of the score parts: spreading over zones matters most.
pub const ZONE_WEIGHT: i64 = 2;
pub const NODE_WEIGHT: i64 = 1;
pub const ALLOC_WEIGHT: i64 = 1;

/// The workload a pod belongs to for spreading: its controlling owner's uid,
/// else its namespace and labels; `None` (no spreading) for a bare unlabelled pod.
pub fn workload(pod: &Pod) -> Option<String> {
    if let Some(o) = pod.metadata.controller() {
        return Some(o.uid.clone());
    }
    if pod.metadata.labels.is_empty() {
        return None;
    }
    let labels: Vec<String> = pod
        .metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Some(format!("{}/{}", pod.metadata.namespace, labels.join(",")))
}

/// 0..=100: how much of the node's CPU and memory stays free once the pod is
/// on it (resources the node does not limit count as fully free).
pub fn least_allocated(node: &NodeInfo, used: &Resources, req: &Resources) -> i64 {
    let free = |alloc: i64, used: i64, want: i64| {
        if alloc == i64::MAX || alloc <= 0 {
            return 100;
        }
        let left = alloc.saturating_sub(used).saturating_sub(want).max(0);
        (left as i128 * 100 / alloc as i128) as i64
    };
    (free(node.allocatable.cpu, used.cpu, req.cpu)
        + free(node.allocatable.memory, used.memory, req.memory))
        / 2
}

/// One feasible node as the scorer sees it.
pub struct Candidate<'a> {
    pub node: &'a NodeInfo,
    pub used: Resources,
}

/// Scores every candidate; `per_node` counts the workload's pods on each node.
/// Returns the index of the best (ties broken by `tie`, e.g. a random number).
pub fn pick(
    cands: &[Candidate<'_>],
    req: &Resources,
    per_node: Option<&HashMap<String, u32>>,
    tie: usize,
) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    let count = |n: &str| per_node.and_then(|m| m.get(n)).copied().unwrap_or(0) as i64;
    // The workload's pods per zone, over the zones of the candidates.
    let mut zones: HashMap<&str, i64> = HashMap::new();
    if let Some(m) = per_node {
        for c in cands {
            zones.entry(c.node.zone.as_str()).or_insert(0);
        }
        // Count pods on every node of a candidate zone, feasible or not.
        let zone_of: HashMap<&str, &str> = cands
            .iter()
            .map(|c| (c.node.name.as_str(), c.node.zone.as_str()))
            .collect();
        for (n, k) in m {
            if let Some(z) = zone_of.get(n.as_str()) {
                *zones.entry(z).or_insert(0) += *k as i64;
            }
        }
    }
    let max_zone = zones.values().copied().max().unwrap_or(0);
    let max_node = cands.iter().map(|c| count(&c.node.name)).max().unwrap_or(0);
    let mut best: Option<(i64, usize)> = None;
    let mut ties = 0usize;
    for (i, c) in cands.iter().enumerate() {
        let spread = |max: i64, mine: i64| {
            if max == 0 {
                100
            } else {
                100 * (max - mine) / max
            }
        };
        let zone_score = spread(
            max_zone,
            zones.get(c.node.zone.as_str()).copied().unwrap_or(0),
        );
        let node_score = spread(max_node, count(&c.node.name));
        let s = ZONE_WEIGHT * zone_score
            + NODE_WEIGHT * node_score
            + ALLOC_WEIGHT * least_allocated(c.node, &c.used, req);
        match best {
            Some((b, _)) if s < b => {}
            Some((b, _)) if s == b => {
                ties += 1;
                // Reservoir choice among equal scores, driven by `tie`.
                if tie.wrapping_add(i) % (ties + 1) == 0 {
                    best = Some((s, i));
                }
            }
            _ => {
                best = Some((s, i));
                ties = 0;
            }
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::super::filter::tests::node;
    use super::*;

    fn info(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::from_node(&node(name, zone, "4", "8Gi"))
    }

    #[test]
    fn prefers_the_least_allocated_node() {
        let (a, b) = (info("a", "z1"), info("b", "z1"));
        let req = Resources {
            cpu: 500,
            memory: 1 << 30,
            pods: 1,
        };
        let busy = Resources {
            cpu: 3000,
            memory: 4 << 30,
            pods: 3,
        };
        let cands = [
            Candidate {
                node: &a,
                used: busy,
            },
            Candidate {
                node: &b,
                used: Resources::default(),
            },
        ];
        assert_eq!(pick(&cands, &req, None, 0), Some(1));
        assert!(
            least_allocated(&a, &busy, &req) < least_allocated(&b, &Resources::default(), &req)
        );
    }

    #[test]
    fn spreads_a_workload_over_zones_before_nodes() {
        // z1 has two nodes, z2 one; the workload already has a pod on a1.
        let (a1, a2, b1) = (info("a1", "z1"), info("a2", "z1"), info("b1", "z2"));
        let cands = [
            Candidate {
                node: &a1,
                used: Resources::default(),
            },
            Candidate {
                node: &a2,
                used: Resources::default(),
            },
            Candidate {
                node: &b1,
                used: Resources::default(),
            },
        ];
        let req = Resources::default();
        let mut per_node = HashMap::new();
        per_node.insert("a1".to_string(), 1);
        for tie in 0..5 {
            assert_eq!(
                pick(&cands, &req, Some(&per_node), tie),
                Some(2),
                "the empty zone wins"
            );
        }
        per_node.insert("b1".to_string(), 1);
        for tie in 0..5 {
            assert_eq!(
                pick(&cands, &req, Some(&per_node), tie),
                Some(1),
                "then the empty node"
            );
        }
    }

    #[test]
    fn workload_is_the_controller_or_the_labels() {
        let mut p = Pod::new("ns", "p");
        assert_eq!(workload(&p), None);
        p.metadata.labels.insert("app".into(), "web".into());
        assert_eq!(workload(&p).as_deref(), Some("ns/app=web"));
        p.metadata
            .owner_references
            .push(keel_proto::api::OwnerReference {
                uid: "u1".into(),
                controller: Some(true),
                ..Default::default()
            });
        assert_eq!(workload(&p).as_deref(), Some("u1"));
    }

    #[test]
    fn ties_are_broken_by_the_tie_breaker() {
        let (a, b) = (info("a", "z1"), info("b", "z2"));
        let cands = [
            Candidate {
                node: &a,
                used: Resources::default(),
            },
            Candidate {
                node: &b,
                used: Resources::default(),
            },
        ];
        let picks: std::collections::HashSet<usize> = (0..8)
            .filter_map(|t| pick(&cands, &Resources::default(), None, t))
            .collect();
        assert_eq!(picks.len(), 2);
    }
}
