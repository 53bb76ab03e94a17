//! The leader-only control plane against a real 3-member cluster, every
//! member running `leader::spawn` as `keel master` does, with Node objects
//! created through the registry (no agents): a Kubernetes test's fake
//! kubelet marks bound pods Running and Ready through the status
//! subresource, and renews node Leases where a test needs heartbeats.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_controlplane::leader::{self, ControllerConfig};
use keel_controlplane::{Registry, kinds};
use keel_proto::api::apps::{
    DeploymentStrategy, ROLLBACK_ANNOTATION, RollingUpdate, TEMPLATE_HASH_LABEL,
};
use keel_proto::api::coordination::NODE_LEASE_NAMESPACE;
use keel_proto::api::core::{Container, ResourceRequirements, ServicePort};
use keel_proto::api::meta::{Condition, IntOrString, condition, now_rfc3339, set_condition};
use keel_proto::api::{Deployment, Endpoints, Lease, Node, Pod, ReplicaSet, Service};
use keel_tests::{InProcessCluster, poll, typed};
use tokio_util::sync::CancellationToken;

const ZONE: &str = "topology.kubernetes.io/zone";

struct ControlPlane {
    cluster: InProcessCluster,
    regs: Vec<Registry>,
    /// Cancelled when that member is shut down.
    down: Vec<CancellationToken>,
    /// Stops the helper loops (fake kubelet, heartbeats).
    stop: CancellationToken,
}

impl ControlPlane {
    async fn start(cfg: ControllerConfig) -> ControlPlane {
        let cluster = InProcessCluster::start(3).await.unwrap();
        let regs: Vec<Registry> = cluster
            .nodes
            .iter()
            .map(|n| Registry::new(n.clone()))
            .collect();
        for r in &regs {
            leader::spawn(r.clone(), cfg.clone());
        }
        let r = regs[0].clone();
        poll(Duration::from_secs(20), "default namespaces", || {
            let r = r.clone();
            async move { r.ensure_namespaces().await.ok() }
        })
        .await;
        ControlPlane {
            cluster,
            down: regs.iter().map(|_| CancellationToken::new()).collect(),
            regs,
            stop: CancellationToken::new(),
        }
    }

    /// The registry of a member that is still running.
    fn reg(&self) -> Registry {
        up(&self.regs, &self.down).unwrap()
    }

    async fn kill_leader(&self) -> usize {
        let l = poll(Duration::from_secs(10), "a leader", || async {
            self.cluster.leader()
        })
        .await;
        self.down[l].cancel();
        self.cluster.nodes[l].shutdown().await;
        l
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        for (i, n) in self.cluster.nodes.iter().enumerate() {
            if !self.down[i].is_cancelled() {
                n.shutdown().await;
            }
        }
    }

    async fn create_node(&self, name: &str, zone: &str, cpu: &str) {
        let mut n = Node::new("", name);
        n.metadata.labels.insert(ZONE.into(), zone.into());
        for (k, v) in [("cpu", cpu), ("memory", "16Gi"), ("pods", "110")] {
            n.status.capacity.insert(k.into(), v.into());
            n.status.allocatable.insert(k.into(), v.into());
        }
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "KubeletReady".into(),
            ..Default::default()
        });
        self.reg().create_t(&n).await.unwrap();
    }

    /// A fake kubelet: every bound pod that is not Running yet becomes
    /// Running and Ready with a pod IP, through the status subresource.
    fn kubelet(&self) {
        let stop = self.stop.clone();
        let regs = self.regs.clone();
        let down = self.down.clone();
        tokio::spawn(async move {
            let mut ip = 1u32;
            loop {
                let Some(reg) = up(&regs, &down) else {
                    return;
                };
                if let Ok((pods, _)) = reg.list_t::<Pod>(Some("default")).await {
                    for p in pods {
                        if p.spec.node_name.is_empty() || p.is_ready() {
                            continue;
                        }
                        let mut s = p.clone();
                        s.status.phase = "Running".into();
                        s.status.pod_ip = format!("10.1.{}.{}", ip / 250, ip % 250 + 1);
                        ip += 1;
                        set_condition(
                            &mut s.status.conditions,
                            Condition {
                                type_: "Ready".into(),
                                status: "True".into(),
                                ..Default::default()
                            },
                            &now_rfc3339(),
                        );
                        let _ = typed::update_status(&reg, &s).await;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(30)) => {}
                }
            }
        });
    }

    /// Renews the Lease of each node every 100 ms until its token is cancelled.
    fn heartbeats(&self, nodes: Vec<(String, CancellationToken)>) {
        let stop = self.stop.clone();
        let regs = self.regs.clone();
        let down = self.down.clone();
        tokio::spawn(async move {
            loop {
                let Some(reg) = up(&regs, &down) else {
                    return;
                };
                for (name, dead) in &nodes {
                    if dead.is_cancelled() {
                        continue;
                    }
                    match reg.get_t::<Lease>(NODE_LEASE_NAMESPACE, name).await {
                        Ok(mut l) => {
                            l.spec.renew_time = Some(now_rfc3339());
                            l.spec.lease_transitions =
                                Some(l.spec.lease_transitions.unwrap_or(0) + 1);
                            let _ = typed::update(&reg, &l).await;
                        }
                        Err(_) => {
                            let mut l = Lease::new(NODE_LEASE_NAMESPACE, name);
                            l.spec.holder_identity = name.clone();
                            l.spec.renew_time = Some(now_rfc3339());
                            let _ = reg.create_t(&l).await;
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
    }

    async fn pods(&self) -> Vec<Pod> {
        self.reg().list_t::<Pod>(Some("default")).await.unwrap().0
    }

    /// Applies `f` to the Deployment, retrying on conflicts and elections.
    async fn edit_deployment(&self, name: &str, f: impl Fn(&mut Deployment)) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reg = self.reg();
            if let Ok(mut d) = reg.get_t::<Deployment>("default", name).await {
                f(&mut d);
                if typed::update(&reg, &d).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "could not update deployment {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the Deployment's rollout is complete with `replicas` ready pods.
    async fn rolled_out(&self, name: &str, replicas: i64) -> Deployment {
        poll(
            Duration::from_secs(25),
            "the rollout to complete",
            || async {
                let d = self.reg().get_t::<Deployment>("default", name).await.ok()?;
                let s = &d.status;
                (s.observed_generation == d.metadata.generation
                    && s.updated_replicas == replicas
                    && s.replicas == replicas
                    && s.available_replicas == replicas)
                    .then_some(d)
            },
        )
        .await
    }
}

/// The registry of the first member not shut down.
fn up(regs: &[Registry], down: &[CancellationToken]) -> Option<Registry> {
    (0..regs.len())
        .find(|i| !down[*i].is_cancelled())
        .map(|i| regs[i].clone())
}

fn deployment(name: &str, replicas: i64, image: &str) -> Deployment {
    let mut d = Deployment::new("default", name);
    d.spec.replicas = Some(replicas);
    d.spec
        .selector
        .match_labels
        .insert("app".into(), name.into());
    d.spec
        .template
        .metadata
        .labels
        .insert("app".into(), name.into());
    let mut r = ResourceRequirements::default();
    r.requests.insert("cpu".into(), "100m".into());
    r.requests.insert("memory".into(), "64Mi".into());
    d.spec.template.spec.containers.push(Container {
        name: "c".into(),
        image: image.into(),
        resources: Some(r),
        ..Default::default()
    });
    d
}

fn owned_by(p: &Pod, app: &str) -> bool {
    p.metadata.labels.get("app").map(String::as_str) == Some(app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_spreads_six_pods_over_three_zones_and_cascades_on_delete() {
    let t = Instant::now();
    let cp = ControlPlane::start(ControllerConfig::default()).await;
    for (n, z) in [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
        ("node-c", "zone-c"),
    ] {
        cp.create_node(n, z, "4").await;
    }
    cp.kubelet();
    let mut svc = Service::new("default", "web");
    svc.spec.selector.insert("app".into(), "web".into());
    svc.spec.ports.push(ServicePort {
        name: "http".into(),
        port: 80,
        target_port: Some(IntOrString::Int(8080)),
        protocol: "TCP".into(),
    });
    cp.reg().create_t(&svc).await.unwrap();
    cp.reg()
        .create_t(&deployment("web", 6, "v1"))
        .await
        .unwrap();

    let pods = poll(Duration::from_secs(20), "6 bound pods", || async {
        let pods: Vec<Pod> = cp
            .pods()
            .await
            .into_iter()
            .filter(|p| owned_by(p, "web") && !p.spec.node_name.is_empty())
            .collect();
        (pods.len() == 6).then_some(pods)
    })
    .await;
    let (rss, _) = cp
        .reg()
        .list_t::<ReplicaSet>(Some("default"))
        .await
        .unwrap();
    assert_eq!(rss.len(), 1, "one ReplicaSet");
    let rs = &rss[0];
    let hash = &rs.spec.template.metadata.labels[TEMPLATE_HASH_LABEL];
    assert_eq!(rs.metadata.name, format!("web-{hash}"));
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        assert_eq!(p.metadata.controller().unwrap().uid, rs.metadata.uid);
        assert_eq!(&p.metadata.labels[TEMPLATE_HASH_LABEL], hash);
        *per_node.entry(p.spec.node_name.clone()).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "2/2/2 across zones: {per_node:?}"
    );
    cp.rolled_out("web", 6).await;

    // The Service's Endpoints list the six ready pods on the target port.
    poll(Duration::from_secs(10), "6 ready endpoints", || async {
        let ep = cp.reg().get_t::<Endpoints>("default", "web").await.ok()?;
        let s = ep.subsets.first()?;
        (s.addresses.len() == 6 && s.ports[0].port == 8080).then_some(())
    })
    .await;

    // Deleting the Deployment takes its ReplicaSet and pods along (GC).
    let d = cp
        .reg()
        .get_t::<Deployment>("default", "web")
        .await
        .unwrap();
    typed::delete(&cp.reg(), &d).await.unwrap();
    poll(
        Duration::from_secs(15),
        "the ReplicaSet and pods collected",
        || async {
            let (rss, _) = cp.reg().list_t::<ReplicaSet>(Some("default")).await.ok()?;
            let pods = cp.pods().await;
            (rss.is_empty() && pods.is_empty()).then_some(())
        },
    )
    .await;
    cp.shutdown().await;
    eprintln!("spread + endpoints + gc took {:?}", t.elapsed());
}

/// Follows every pod change in revision order and keeps the worst figures
/// seen: the most pods of the app at once and the fewest ready.
struct Observer {
    max_pods: usize,
    min_ready: usize,
    rev: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_stays_within_bounds_and_rollback_restores_the_template() {
    let t = Instant::now();
    let cp = ControlPlane::start(ControllerConfig::default()).await;
    for (n, z) in [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
        ("node-c", "zone-c"),
    ] {
        cp.create_node(n, z, "4").await;
    }
    cp.kubelet();
    let mut d = deployment("web", 6, "v1");
    d.spec.strategy = Some(DeploymentStrategy {
        type_: "RollingUpdate".into(),
        rolling_update: Some(RollingUpdate {
            max_surge: Some(IntOrString::Int(2)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    });
    cp.reg().create_t(&d).await.unwrap();
    cp.rolled_out("web", 6).await;

    // Watch every pod change from here on, starting with 6 ready pods.
    let reg = cp.reg();
    let from = reg.revision().await.unwrap();
    let (pods, _) = reg.list_t::<Pod>(Some("default")).await.unwrap();
    assert_eq!(pods.iter().filter(|p| p.is_ready()).count(), 6);
    let obs = observe_from(reg.clone(), "web", from, &pods);

    cp.edit_deployment("web", |d| {
        d.spec.template.spec.containers[0].image = "v2".into()
    })
    .await;
    let d2 = cp.rolled_out("web", 6).await;
    assert_eq!(
        d2.metadata.annotations["deployment.kubernetes.io/revision"],
        "2"
    );
    let images = |pods: &[Pod]| -> HashSet<String> {
        pods.iter()
            .filter(|p| owned_by(p, "web"))
            .map(|p| p.spec.containers[0].image.clone())
            .collect()
    };
    poll(Duration::from_secs(10), "only v2 pods", || async {
        (images(&cp.pods().await) == HashSet::from(["v2".to_string()])).then_some(())
    })
    .await;
    // A pod of another app marks "now" in the pod history: once the
    // observer has seen it, it has seen every change of the rollout.
    let mut marker = Pod::new("default", "marker");
    marker.spec.containers.push(Container {
        name: "c".into(),
        image: "x".into(),
        ..Default::default()
    });
    let now = reg.create_t(&marker).await.unwrap().metadata.revision();
    poll(
        Duration::from_secs(10),
        "the observer to catch up",
        || async { (obs.lock().unwrap().rev >= now).then_some(()) },
    )
    .await;
    {
        let o = obs.lock().unwrap();
        eprintln!(
            "rolling update: at most {} pods, at least {} ready",
            o.max_pods, o.min_ready
        );
        assert!(
            o.max_pods <= 8,
            "never more than replicas+maxSurge: {}",
            o.max_pods
        );
        assert!(
            o.min_ready >= 5,
            "never fewer than replicas-maxUnavailable ready: {}",
            o.min_ready
        );
    }

    // rollout undo: back to v1, as revision 3.
    cp.edit_deployment("web", |d| {
        d.metadata
            .annotations
            .insert(ROLLBACK_ANNOTATION.into(), "0".into());
    })
    .await;
    poll(Duration::from_secs(20), "the v1 template back", || async {
        let d = cp.reg().get_t::<Deployment>("default", "web").await.ok()?;
        (d.spec.template.spec.containers[0].image == "v1"
            && !d.metadata.annotations.contains_key(ROLLBACK_ANNOTATION))
        .then_some(())
    })
    .await;
    let d3 = cp.rolled_out("web", 6).await;
    assert_eq!(
        d3.metadata.annotations["deployment.kubernetes.io/revision"],
        "3"
    );
    poll(Duration::from_secs(10), "only v1 pods", || async {
        (images(&cp.pods().await) == HashSet::from(["v1".to_string()])).then_some(())
    })
    .await;
    let (rss, _) = cp
        .reg()
        .list_t::<ReplicaSet>(Some("default"))
        .await
        .unwrap();
    assert_eq!(rss.len(), 2, "the v1 ReplicaSet was reused");
    cp.shutdown().await;
    eprintln!("rolling update + rollback took {:?}", t.elapsed());
}

/// Like `observe`, seeded with the pods as listed at `from`.
fn observe_from(
    reg: Registry,
    app: &'static str,
    from: i64,
    pods: &[Pod],
) -> Arc<std::sync::Mutex<Observer>> {
    let obs = Arc::new(std::sync::Mutex::new(Observer {
        max_pods: 0,
        min_ready: usize::MAX,
        rev: from,
    }));
    let mut live: HashMap<String, bool> = pods
        .iter()
        .filter(|p| owned_by(p, app))
        .map(|p| (p.metadata.name.clone(), p.is_ready()))
        .collect();
    let o = obs.clone();
    tokio::spawn(async move {
        let mut w = reg.watch(kinds::of::<Pod>(), Some("default"), from);
        loop {
            let c = match w.next().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("observer stopped: {e}");
                    return;
                }
            };
            let p: Pod = match serde_json::from_value(c.object) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("observer stopped: {e}");
                    return;
                }
            };
            if owned_by(&p, app) {
                if c.type_ == "DELETED" {
                    live.remove(&p.metadata.name);
                } else {
                    live.insert(p.metadata.name.clone(), p.is_ready());
                }
            }
            let mut o = o.lock().unwrap();
            o.max_pods = o.max_pods.max(live.len());
            o.min_ready = o.min_ready.min(live.values().filter(|r| **r).count());
            o.rev = c.revision;
        }
    });
    obs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_takes_effect_under_the_next_leader() {
    let t = Instant::now();
    let cp = ControlPlane::start(ControllerConfig::default()).await;
    for (n, z) in [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
        ("node-c", "zone-c"),
    ] {
        cp.create_node(n, z, "4").await;
    }
    cp.kubelet();
    cp.reg()
        .create_t(&deployment("web", 2, "v1"))
        .await
        .unwrap();
    cp.rolled_out("web", 2).await;

    let old = cp.kill_leader().await;
    let killed = Instant::now();
    cp.edit_deployment("web", |d| d.spec.replicas = Some(4))
        .await;
    poll(Duration::from_secs(20), "4 bound pods", || async {
        let n = cp
            .pods()
            .await
            .iter()
            .filter(|p| !p.spec.node_name.is_empty())
            .count();
        (n == 4).then_some(())
    })
    .await;
    let new = (0..3)
        .find(|i| *i != old && cp.cluster.nodes[*i].is_leader())
        .expect("a surviving member leads");
    assert_ne!(new, old);
    eprintln!(
        "scaled to 4 under the new leader {:?} after the old one stopped",
        killed.elapsed()
    );
    cp.rolled_out("web", 4).await;
    cp.shutdown().await;
    eprintln!("failover scale-up took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_stops_goes_not_ready_and_its_pods_move() {
    let t = Instant::now();
    let cfg = ControllerConfig {
        node_monitor_grace: Duration::from_secs(1),
        pod_eviction_timeout: Duration::from_secs(1),
        eviction_rate: 10.0,
    };
    let cp = ControlPlane::start(cfg).await;
    let mut beats = Vec::new();
    for (n, z) in [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
        ("node-c", "zone-c"),
    ] {
        cp.create_node(n, z, "4").await;
        beats.push((n.to_string(), CancellationToken::new()));
    }
    let a_heartbeat = beats[0].1.clone();
    cp.heartbeats(beats);
    cp.kubelet();
    cp.reg()
        .create_t(&deployment("web", 3, "v1"))
        .await
        .unwrap();
    cp.rolled_out("web", 3).await;
    let on_a = |pods: &[Pod]| pods.iter().filter(|p| p.spec.node_name == "node-a").count();
    assert_eq!(on_a(&cp.pods().await), 1);

    a_heartbeat.cancel();
    let stopped = Instant::now();
    let node = poll(Duration::from_secs(10), "node-a NotReady", || async {
        let n = cp.reg().get_t::<Node>("", "node-a").await.ok()?;
        let ready = condition(&n.status.conditions, "Ready")?;
        (ready.status == "Unknown" && ready.reason == "NodeStatusUnknown").then_some(n)
    })
    .await;
    assert!(
        node.spec
            .taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
    );
    eprintln!(
        "node-a NotReady {:?} after its last renewal",
        stopped.elapsed()
    );
    let pods = poll(
        Duration::from_secs(15),
        "pods replaced elsewhere",
        || async {
            let pods = cp.pods().await;
            let ok = on_a(&pods) == 0
                && pods.len() == 3
                && pods.iter().all(|p| !p.spec.node_name.is_empty());
            ok.then_some(pods)
        },
    )
    .await;
    assert!(pods.iter().all(|p| p.spec.node_name != "node-a"));
    // The other nodes stayed Ready.
    for n in ["node-b", "node-c"] {
        let n = cp.reg().get_t::<Node>("", n).await.unwrap();
        assert_eq!(
            condition(&n.status.conditions, "Ready").unwrap().status,
            "True"
        );
    }
    cp.shutdown().await;
    eprintln!("lease loss + eviction took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_fits_nowhere_is_unschedulable_until_a_node_fits() {
    let t = Instant::now();
    let cp = ControlPlane::start(ControllerConfig::default()).await;
    for (n, z) in [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
        ("node-c", "zone-c"),
    ] {
        cp.create_node(n, z, "4").await;
    }
    let mut big = Pod::new("default", "big");
    let mut r = ResourceRequirements::default();
    r.requests.insert("cpu".into(), "16".into());
    big.spec.containers.push(Container {
        name: "c".into(),
        image: "x".into(),
        resources: Some(r),
        ..Default::default()
    });
    cp.reg().create_t(&big).await.unwrap();
    let mut picky = Pod::new("default", "picky");
    picky.spec.node_selector.insert("disk".into(), "ssd".into());
    picky.spec.containers.push(Container {
        name: "c".into(),
        image: "x".into(),
        ..Default::default()
    });
    cp.reg().create_t(&picky).await.unwrap();

    let unschedulable = |name: &'static str, msg: &'static str| {
        let cp = &cp;
        async move {
            poll(Duration::from_secs(15), msg, || async {
                let p = cp.reg().get_t::<Pod>("default", name).await.ok()?;
                let c = condition(&p.status.conditions, "PodScheduled")?.clone();
                (c.status == "False" && c.reason == "Unschedulable" && c.message == msg)
                    .then_some(p)
            })
            .await
        }
    };
    let p = unschedulable("big", "0/3 nodes are available: 3 Insufficient cpu.").await;
    assert!(p.spec.node_name.is_empty());
    assert_eq!(p.status.phase, "Pending");
    unschedulable(
        "picky",
        "0/3 nodes are available: 3 node(s) didn't match node selector.",
    )
    .await;

    // A node that fits both arrives: both are retried and bound to it.
    let mut n = Node::new("", "node-big");
    n.metadata.labels.insert(ZONE.into(), "zone-a".into());
    n.metadata.labels.insert("disk".into(), "ssd".into());
    n.status.allocatable.insert("cpu".into(), "32".into());
    n.status.conditions.push(Condition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    });
    cp.reg().create_t(&n).await.unwrap();
    poll(
        Duration::from_secs(15),
        "both bound to node-big",
        || async {
            let pods = cp.pods().await;
            pods.iter()
                .all(|p| p.spec.node_name == "node-big")
                .then_some(())
        },
    )
    .await;
    cp.shutdown().await;
    eprintln!("unschedulable + retry took {:?}", t.elapsed());
}
