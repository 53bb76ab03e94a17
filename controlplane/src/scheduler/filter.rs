//! The scheduler's filters: whether a pod may run on a node at all (Ready,
//! not cordoned, node selector, taints it does not tolerate, free CPU,
//! memory and pod slots), and the "0/N nodes are available: ..." message a
//! pod that fits nowhere gets.

use std::collections::BTreeMap;

use keel_proto::api::core::{Taint, Toleration};
use keel_proto::api::meta::condition;
use keel_proto::api::{Node, Pod, quantity};

/// The label naming a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Amounts of the resources the scheduler accounts: CPU in millicores,
/// memory in bytes, and pod slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu = self.cpu.saturating_add(o.cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.pods = self.pods.saturating_add(o.pods);
    }
    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
}

/// What the scheduler knows of a node, parsed once per node change.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub zone: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    /// Allocatable (capacity when allocatable is absent). A resource the
    /// node does not report is not limited.
    pub allocatable: Resources,
}

impl NodeInfo {
    pub fn from_node(n: &Node) -> NodeInfo {
        let amount = |r: &str| {
            n.status
                .allocatable
                .get(r)
                .or_else(|| n.status.capacity.get(r))
                .and_then(|q| quantity::parse(r, q).ok())
                .unwrap_or(i64::MAX)
        };
        NodeInfo {
            name: n.metadata.name.clone(),
            zone: n
                .metadata
                .labels
                .get(ZONE_LABEL)
                .cloned()
                .unwrap_or_default(),
            labels: n.metadata.labels.clone(),
            ready: condition(&n.status.conditions, "Ready").is_some_and(|c| c.status == "True"),
            unschedulable: n.spec.unschedulable,
            taints: n.spec.taints.clone(),
            allocatable: Resources {
                cpu: amount("cpu"),
                memory: amount("memory"),
                pods: amount("pods"),
            },
        }
    }
}

/// A pod's requests: the sum over its containers (a container's limit stands
/// in for a request it does not set, as in Kubernetes), plus one pod slot.
pub fn requests(pod: &Pod) -> Resources {
    let mut r = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in &pod.spec.containers {
        let Some(res) = &c.resources else { continue };
        let get = |name: &str| {
            res.requests
                .get(name)
                .or_else(|| res.limits.get(name))
                .and_then(|q| quantity::parse(name, q).ok())
                .unwrap_or(0)
        };
        r.cpu += get("cpu");
        r.memory += get("memory");
    }
    r
}

/// Why a node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unfit {
    NotReady,
    Unschedulable,
    Selector,
    Taint,
    Cpu,
    Memory,
    Pods,
}

impl Unfit {
    /// The phrase Kubernetes uses in its FailedScheduling messages.
    pub fn reason(self) -> &'static str {
        match self {
            Unfit::NotReady => "node(s) were not ready",
            Unfit::Unschedulable => "node(s) were unschedulable",
            Unfit::Selector => "node(s) didn't match node selector",
            Unfit::Taint => "node(s) had untolerated taint(s)",
            Unfit::Cpu => "Insufficient cpu",
            Unfit::Memory => "Insufficient memory",
            Unfit::Pods => "Too many pods",
        }
    }
}

/// Whether `t` tolerates `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    match t.operator.as_str() {
        // An empty key with Exists tolerates everything.
        "Exists" => t.key.is_empty() || t.key == taint.key,
        _ => t.key == taint.key && t.value == taint.value,
    }
}

/// The first filter `node` fails for a pod with `req`, given what is
/// already `used` there (bound pods and binds in flight).
pub fn check(node: &NodeInfo, used: &Resources, pod: &Pod, req: &Resources) -> Result<(), Unfit> {
    if !node.ready {
        return Err(Unfit::NotReady);
    }
    if node.unschedulable {
        return Err(Unfit::Unschedulable);
    }
    if !pod
        .spec
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return Err(Unfit::Selector);
    }
    if node.taints.iter().any(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !pod.spec.tolerations.iter().any(|t| tolerates(t, taint))
    }) {
        return Err(Unfit::Taint);
    }
    let fits = |alloc: i64, used: i64, want: i64| want == 0 || alloc.saturating_sub(used) >= want;
    if !fits(node.allocatable.cpu, used.cpu, req.cpu) {
        return Err(Unfit::Cpu);
    }
    if !fits(node.allocatable.memory, used.memory, req.memory) {
        return Err(Unfit::Memory);
    }
    if !fits(node.allocatable.pods, used.pods, req.pods) {
        return Err(Unfit::Pods);
    }
    Ok(())
}

/// "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) didn't match node selector."
pub fn unschedulable_message(nodes: usize, unfit: &BTreeMap<Unfit, usize>) -> String {
    if nodes == 0 {
        return "0/0 nodes are available: no nodes registered.".into();
    }
    let mut parts: Vec<(usize, Unfit)> = unfit.iter().map(|(u, n)| (*n, *u)).collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let reasons: Vec<String> = parts
        .iter()
        .map(|(n, u)| format!("{n} {}", u.reason()))
        .collect();
    format!("0/{nodes} nodes are available: {}.", reasons.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use keel_proto::api::core::{Container, ResourceRequirements};
    use keel_proto::api::meta::Condition;

    pub fn node(name: &str, zone: &str, cpu: &str, mem: &str) -> Node {
        let mut n = Node::new("", name);
        n.metadata.labels.insert(ZONE_LABEL.into(), zone.into());
        n.status.allocatable.insert("cpu".into(), cpu.into());
        n.status.allocatable.insert("memory".into(), mem.into());
        n.status.allocatable.insert("pods".into(), "110".into());
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        });
        n
    }

    pub fn pod(cpu: &str, mem: &str) -> Pod {
        let mut p = Pod::new("default", "p");
        let mut r = ResourceRequirements::default();
        r.requests.insert("cpu".into(), cpu.into());
        r.requests.insert("memory".into(), mem.into());
        p.spec.containers.push(Container {
            name: "c".into(),
            resources: Some(r),
            ..Default::default()
        });
        p
    }

    #[test]
    fn requests_sum_containers_and_fall_back_to_limits() {
        let mut p = pod("250m", "64Mi");
        let mut r = ResourceRequirements::default();
        r.limits.insert("cpu".into(), "1".into());
        p.spec.containers.push(Container {
            name: "d".into(),
            resources: Some(r),
            ..Default::default()
        });
        assert_eq!(
            requests(&p),
            Resources {
                cpu: 1250,
                memory: 64 << 20,
                pods: 1
            }
        );
    }

    #[test]
    fn filters_resources_readiness_cordon_and_selector() {
        let n = NodeInfo::from_node(&node("a", "z1", "1", "1Gi"));
        let p = pod("600m", "100Mi");
        let req = requests(&p);
        assert_eq!(check(&n, &Resources::default(), &p, &req), Ok(()));
        let used = Resources {
            cpu: 500,
            memory: 0,
            pods: 1,
        };
        assert_eq!(check(&n, &used, &p, &req), Err(Unfit::Cpu));
        let used = Resources {
            cpu: 0,
            memory: 1000 << 20,
            pods: 1,
        };
        assert_eq!(check(&n, &used, &p, &req), Err(Unfit::Memory));
        let used = Resources {
            cpu: 0,
            memory: 0,
            pods: 110,
        };
        assert_eq!(check(&n, &used, &p, &req), Err(Unfit::Pods));

        let mut down = node("b", "z1", "1", "1Gi");
        down.status.conditions[0].status = "Unknown".into();
        let down = NodeInfo::from_node(&down);
        assert_eq!(
            check(&down, &Resources::default(), &p, &req),
            Err(Unfit::NotReady)
        );

        let mut cordoned = node("c", "z1", "1", "1Gi");
        cordoned.spec.unschedulable = true;
        let cordoned = NodeInfo::from_node(&cordoned);
        assert_eq!(
            check(&cordoned, &Resources::default(), &p, &req),
            Err(Unfit::Unschedulable)
        );

        let mut sel = p.clone();
        sel.spec.node_selector.insert("disk".into(), "ssd".into());
        assert_eq!(
            check(&n, &Resources::default(), &sel, &req),
            Err(Unfit::Selector)
        );
        let mut ssd = node("d", "z1", "1", "1Gi");
        ssd.metadata.labels.insert("disk".into(), "ssd".into());
        let ssd = NodeInfo::from_node(&ssd);
        assert_eq!(check(&ssd, &Resources::default(), &sel, &req), Ok(()));
    }

    #[test]
    fn a_node_without_allocatable_is_not_limited() {
        let mut n = Node::new("", "bare");
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        });
        let n = NodeInfo::from_node(&n);
        let p = pod("64", "1Ti");
        assert_eq!(check(&n, &Resources::default(), &p, &requests(&p)), Ok(()));
    }

    #[test]
    fn taints_need_tolerations() {
        let mut n = node("a", "z1", "1", "1Gi");
        n.spec.taints.push(Taint {
            key: "node.kubernetes.io/unreachable".into(),
            value: String::new(),
            effect: "NoExecute".into(),
        });
        n.spec.taints.push(Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
        });
        n.spec.taints.push(Taint {
            key: "soft".into(),
            value: String::new(),
            effect: "PreferNoSchedule".into(),
        });
        let n = NodeInfo::from_node(&n);
        let mut p = pod("100m", "1Mi");
        let req = requests(&p);
        assert_eq!(
            check(&n, &Resources::default(), &p, &req),
            Err(Unfit::Taint)
        );
        p.spec.tolerations.push(Toleration {
            key: "node.kubernetes.io/unreachable".into(),
            operator: "Exists".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        });
        assert_eq!(
            check(&n, &Resources::default(), &p, &req),
            Err(Unfit::Taint)
        );
        p.spec.tolerations.push(Toleration {
            key: "dedicated".into(),
            value: "web".into(),
            ..Default::default()
        });
        assert_eq!(
            check(&n, &Resources::default(), &p, &req),
            Err(Unfit::Taint),
            "wrong value"
        );
        p.spec.tolerations[1].value = "db".into();
        assert_eq!(check(&n, &Resources::default(), &p, &req), Ok(()));
        // An empty key with Exists tolerates every taint.
        let mut all = pod("100m", "1Mi");
        all.spec.tolerations.push(Toleration {
            operator: "Exists".into(),
            ..Default::default()
        });
        assert_eq!(check(&n, &Resources::default(), &all, &req), Ok(()));
    }

    #[test]
    fn message_counts_reasons() {
        let mut m = BTreeMap::new();
        m.insert(Unfit::Selector, 1);
        m.insert(Unfit::Cpu, 2);
        assert_eq!(
            unschedulable_message(3, &m),
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) didn't match node selector."
        );
        assert_eq!(
            unschedulable_message(0, &BTreeMap::new()),
            "0/0 nodes are available: no nodes registered."
        );
    }
}
