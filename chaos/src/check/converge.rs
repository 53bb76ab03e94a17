//! Control-plane convergence after healing: every Deployment at its desired
//! replicas, updated and available, exactly that many live pods behind it,
//! no pod bound to a node that does not exist, and no pod name twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keel_proto::api::{Deployment, Node, Pod, ReplicaSet};
use keel_proto::client::{ApiClient, ClientError};

use crate::sim;

/// What is wrong with the cluster's state, empty when it has converged.
pub fn check(
    deployments: &[Deployment],
    replicasets: &[ReplicaSet],
    pods: &[Pod],
    nodes: &[Node],
) -> Vec<String> {
    let mut bad = Vec::new();
    let node_names: BTreeSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    for p in pods {
        let id = (p.metadata.namespace.as_str(), p.metadata.name.as_str());
        if !seen.insert(id) {
            bad.push(format!("pod {}/{} appears twice", id.0, id.1));
        }
        let n = p.spec.node_name.as_str();
        if !n.is_empty() && !node_names.contains(n) {
            bad.push(format!(
                "pod {}/{} is bound to missing node {n}",
                id.0, id.1
            ));
        }
    }
    // Live pods per owning ReplicaSet uid, ReplicaSets per owning Deployment uid.
    let mut pods_of: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !p.is_terminal())
    {
        if let Some(o) = p.metadata.controller() {
            *pods_of.entry(o.uid.as_str()).or_default() += 1;
        }
    }
    for d in deployments {
        let name = format!("{}/{}", d.metadata.namespace, d.metadata.name);
        let want = d.replicas();
        let s = &d.status;
        if s.observed_generation < d.metadata.generation {
            bad.push(format!(
                "deployment {name}: generation {} not observed (observed {})",
                d.metadata.generation, s.observed_generation
            ));
        }
        for (what, got) in [
            ("replicas", s.replicas),
            ("updatedReplicas", s.updated_replicas),
            ("availableReplicas", s.available_replicas),
        ] {
            if got != want {
                bad.push(format!("deployment {name}: {what} {got}, want {want}"));
            }
        }
        let live: usize = replicasets
            .iter()
            .filter(|rs| {
                rs.metadata
                    .controller()
                    .is_some_and(|o| o.uid == d.metadata.uid)
            })
            .map(|rs| pods_of.get(rs.metadata.uid.as_str()).copied().unwrap_or(0))
            .sum();
        if live as i64 != want {
            bad.push(format!("deployment {name}: {live} live pods, want {want}"));
        }
    }
    bad
}

/// After healing: waits up to `timeout` for the control plane to converge
/// (keeping the simulated kubelet going), returning what is still wrong.
pub async fn converged(c: &ApiClient, ns: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let _ = sim::mark_ready(c, ns).await;
        let state = async {
            Ok::<_, ClientError>((
                c.list::<Deployment>(ns, "").await?.items,
                c.list::<ReplicaSet>(ns, "").await?.items,
                c.list::<Pod>(ns, "").await?.items,
                c.list::<Node>("", "").await?.items,
            ))
        }
        .await;
        let bad = match state {
            Ok((d, rs, p, n)) => check(&d, &rs, &p, &n),
            Err(e) => vec![format!("the API did not answer: {e}")],
        };
        if bad.is_empty() || Instant::now() >= deadline {
            return bad;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::OwnerReference;

    fn owned<T: keel_proto::api::Resource>(mut o: T, owner_uid: &str) -> T {
        o.meta_mut().owner_references.push(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "X".into(),
            name: "x".into(),
            uid: owner_uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        });
        o
    }

    fn world(pods: usize, want: i64) -> (Vec<Deployment>, Vec<ReplicaSet>, Vec<Pod>, Vec<Node>) {
        let mut d = Deployment::new("ns", "web");
        d.metadata.uid = "d1".into();
        d.metadata.generation = 2;
        d.spec.replicas = Some(want);
        d.status.observed_generation = 2;
        d.status.replicas = want;
        d.status.updated_replicas = want;
        d.status.available_replicas = want;
        let mut rs = owned(ReplicaSet::new("ns", "web-abc"), "d1");
        rs.metadata.uid = "rs1".into();
        let ps = (0..pods)
            .map(|i| {
                let mut p = owned(Pod::new("ns", &format!("web-abc-{i}")), "rs1");
                p.spec.node_name = "n1".into();
                p
            })
            .collect();
        (vec![d], vec![rs], ps, vec![Node::new("", "n1")])
    }

    #[test]
    fn converged_state_passes() {
        let (d, rs, p, n) = world(3, 3);
        assert_eq!(check(&d, &rs, &p, &n), Vec::<String>::new());
    }

    #[test]
    fn each_kind_of_divergence_is_named() {
        let (d, rs, p, n) = world(2, 3);
        assert!(
            check(&d, &rs, &p, &n)
                .iter()
                .any(|v| v.contains("2 live pods, want 3"))
        );
        let (mut d, rs, p, n) = world(3, 3);
        d[0].status.available_replicas = 1;
        d[0].status.observed_generation = 1;
        let v = check(&d, &rs, &p, &n);
        assert!(v.iter().any(|v| v.contains("availableReplicas 1")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("not observed")), "{v:?}");
        let (d, rs, mut p, _) = world(3, 3);
        p.push(p[0].clone());
        let v = check(&d, &rs, &p, &[]);
        assert!(v.iter().any(|v| v.contains("appears twice")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("missing node n1")), "{v:?}");
    }
}
