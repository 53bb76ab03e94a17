//! The Endpoints controller: for every Service with a selector, an Endpoints
//! object of the same name listing the IPs of the pods it selects (ready ones
//! in `addresses`, the others in `notReadyAddresses`) with the ports its
//! targetPorts resolve to (a number, or a container port's name). It writes
//! only when that list changed. The Endpoints object carries the Service as
//! its controlling owner, so the garbage collector removes it with the
//! Service, and Endpoints of selector-less Services (written by users) are
//! never touched.

use std::collections::BTreeMap;

use keel_proto::api::core::{EndpointAddress, EndpointPort, EndpointSubset};
use keel_proto::api::meta::IntOrString;
use keel_proto::api::{Endpoints, Pod, Service};

use super::driver::{Controller, Outcome, ReconcileResult, keys_of};
use super::{Ctx, controller_ref};
use crate::informer::{Delta, Key, key_of};
use crate::write;

/// What the Endpoints controller does.
// Actions are few and short-lived; boxing the objects would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(Endpoints),
    Update { old: Endpoints, new: Endpoints },
}

/// The port a service port reaches on `pod`, if the pod has it.
fn target_port(sp: &keel_proto::api::core::ServicePort, pod: &Pod) -> Option<i64> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::Str(name)) => match name.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .find(|p| &p.name == name)
                .map(|p| p.container_port),
        },
    }
}

/// The subsets `svc` should have over `pods` (any namespace; filtered here):
/// pods grouped by the ports they resolve to, addresses sorted by IP.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let mut groups: BTreeMap<Vec<(String, i64, String)>, EndpointSubset> = BTreeMap::new();
    for p in pods {
        if p.metadata.namespace != svc.metadata.namespace
            || p.status.pod_ip.is_empty()
            || p.metadata.deletion_timestamp.is_some()
            || p.is_terminal()
            || !svc
                .spec
                .selector
                .iter()
                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        {
            continue;
        }
        let ports: Vec<(String, i64, String)> = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| {
                target_port(sp, p).map(|n| {
                    let proto = if sp.protocol.is_empty() {
                        "TCP".to_string()
                    } else {
                        sp.protocol.clone()
                    };
                    (sp.name.clone(), n, proto)
                })
            })
            .collect();
        if ports.is_empty() && !svc.spec.ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip: p.status.pod_ip.clone(),
            node_name: p.spec.node_name.clone(),
            target_pod: p.metadata.name.clone(),
        };
        let g = groups
            .entry(ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports: ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: name.clone(),
                        port: *port,
                        protocol: protocol.clone(),
                    })
                    .collect(),
                ..Default::default()
            });
        if p.is_ready() {
            g.addresses.push(addr);
        } else {
            g.not_ready_addresses.push(addr);
        }
    }
    groups
        .into_values()
        .map(|mut s| {
            s.addresses.sort();
            s.not_ready_addresses.sort();
            s
        })
        .collect()
}

/// Decides what to do for `svc` given the pods and its current Endpoints.
pub fn reconcile(svc: &Service, pods: &[&Pod], current: Option<&Endpoints>) -> Vec<Action> {
    if svc.spec.selector.is_empty() || svc.metadata.deletion_timestamp.is_some() {
        return vec![];
    }
    let subsets = desired_subsets(svc, pods);
    match current {
        None => {
            let mut ep = Endpoints::new(&svc.metadata.namespace, &svc.metadata.name);
            ep.metadata.labels = svc.metadata.labels.clone();
            ep.metadata.owner_references = vec![controller_ref(svc)];
            ep.subsets = subsets;
            vec![Action::Create(ep)]
        }
        Some(ep) => {
            let ours = ep
                .metadata
                .controller()
                .is_some_and(|o| o.uid == svc.metadata.uid);
            if ep.subsets == subsets && ours {
                return vec![];
            }
            let mut new = ep.clone();
            new.subsets = subsets;
            if !ours {
                // Left over from an older Service of that name, or written by hand.
                new.metadata.owner_references = vec![controller_ref(svc)];
            }
            vec![Action::Update {
                old: ep.clone(),
                new,
            }]
        }
    }
}

/// The Services whose selector matches `p`.
fn services_of(inf: &super::Informers, p: &Pod) -> Vec<Key> {
    inf.services
        .filter(|s| {
            s.metadata.namespace == p.metadata.namespace
                && !s.spec.selector.is_empty()
                && s.spec
                    .selector
                    .iter()
                    .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        })
        .iter()
        .map(|s| key_of(&**s))
        .collect()
}

/// The driver: Service, Endpoints and pod changes queue Services.
pub async fn run(ctx: Ctx) {
    let inf = ctx.inf.clone();
    Controller::new("Endpoints", &ctx.cancel, keys_of(&ctx.inf.services))
        .watches(&ctx.inf.services, |d| match d {
            // A deleted Service's Endpoints go with it (GC).
            Delta::Added(o) | Delta::Modified { new: o, .. } => vec![key_of(&**o)],
            Delta::Deleted(_) | Delta::Resync => vec![],
        })
        // Endpoints changed or removed by someone else: put them back.
        .watches(&ctx.inf.endpoints, |d| match d {
            Delta::Modified { new: o, .. } | Delta::Deleted(o) => vec![key_of(&**o)],
            Delta::Added(_) | Delta::Resync => vec![],
        })
        .watches(&ctx.inf.pods, move |d| match d {
            Delta::Added(p) | Delta::Deleted(p) => services_of(&inf, p),
            Delta::Modified { old, new } => {
                if old.status.pod_ip != new.status.pod_ip
                    || old.is_ready() != new.is_ready()
                    || old.metadata.labels != new.metadata.labels
                    || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
                    || old.status.phase != new.status.phase
                {
                    let mut keys = services_of(&inf, old);
                    keys.extend(services_of(&inf, new));
                    keys
                } else {
                    vec![]
                }
            }
            Delta::Resync => vec![],
        })
        .workers(2)
        .run(move |k| {
            let ctx = ctx.clone();
            async move { sync(&ctx, k).await }
        })
        .await
}

async fn sync(ctx: &Ctx, k: Key) -> ReconcileResult {
    let Some(svc) = ctx.inf.services.get(&k.0, &k.1) else {
        return Ok(Outcome::Done);
    };
    let pods = ctx.inf.pods.filter(|p| p.metadata.namespace == k.0);
    let refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
    let current = ctx.inf.endpoints.get(&k.0, &k.1);
    for a in reconcile(&svc, &refs, current.as_deref()) {
        let done = match a {
            Action::Create(ep) => ctx.registry.create_t(&ep).await?,
            Action::Update { old, new } => write::replace(&ctx.registry, &old, &new).await?,
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            ctx.inf.endpoints.wait_for(done.metadata.revision()),
        )
        .await;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::core::{Container, ContainerPort, ServicePort};
    use keel_proto::api::meta::Condition;

    fn svc(ports: Vec<ServicePort>) -> Service {
        let mut s = Service::new("default", "web");
        s.metadata.uid = "svc-uid".into();
        s.spec.selector.insert("app".into(), "web".into());
        s.spec.ports = ports;
        s
    }

    fn sp(name: &str, port: i64, target: Option<IntOrString>) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            target_port: target,
            protocol: String::new(),
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, ports: &[(&str, i64)]) -> Pod {
        let mut p = Pod::new("default", name);
        p.metadata.labels.insert("app".into(), "web".into());
        p.spec.node_name = "n1".into();
        p.status.pod_ip = ip.into();
        p.status.phase = "Running".into();
        p.spec.containers.push(Container {
            name: "c".into(),
            ports: ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: n.to_string(),
                    container_port: *p,
                    protocol: String::new(),
                })
                .collect(),
            ..Default::default()
        });
        if ready {
            p.status.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            });
        }
        p
    }

    fn ips(a: &[EndpointAddress]) -> Vec<&str> {
        a.iter().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses_with_a_numeric_target_port() {
        let s = svc(vec![sp("http", 80, Some(IntOrString::Int(8080)))]);
        let ps = [
            pod("b", "10.0.0.2", true, &[]),
            pod("a", "10.0.0.1", true, &[]),
            pod("c", "10.0.0.3", false, &[]),
            pod("no-ip", "", true, &[]),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        let subsets = desired_subsets(&s, &refs);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), vec!["10.0.0.1", "10.0.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), vec!["10.0.0.3"]);
        assert_eq!(subsets[0].ports[0].port, 8080);
        assert_eq!(subsets[0].ports[0].protocol, "TCP");
        assert_eq!(subsets[0].addresses[0].target_pod, "a");
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let s = svc(vec![sp("http", 80, Some(IntOrString::Str("web".into())))]);
        let ps = [
            pod("a", "10.0.0.1", true, &[("web", 8080)]),
            pod("b", "10.0.0.2", true, &[("web", 9090)]),
            pod("c", "10.0.0.3", true, &[("other", 1)]),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        let subsets = desired_subsets(&s, &refs);
        let got: Vec<(i64, Vec<&str>)> = subsets
            .iter()
            .map(|s| (s.ports[0].port, ips(&s.addresses)))
            .collect();
        assert_eq!(
            got,
            vec![(8080, vec!["10.0.0.1"]), (9090, vec!["10.0.0.2"])]
        );
    }

    #[test]
    fn missing_target_port_means_the_service_port() {
        let s = svc(vec![sp("", 6379, None)]);
        let ps = [pod("a", "10.0.0.1", true, &[])];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(desired_subsets(&s, &refs)[0].ports[0].port, 6379);
    }

    #[test]
    fn creates_then_updates_only_on_change() {
        let s = svc(vec![sp("http", 80, None)]);
        let ps = [pod("a", "10.0.0.1", true, &[])];
        let refs: Vec<&Pod> = ps.iter().collect();
        let a = reconcile(&s, &refs, None);
        let Action::Create(ep) = &a[0] else { panic!() };
        assert_eq!(ep.metadata.controller().unwrap().uid, "svc-uid");
        assert!(reconcile(&s, &refs, Some(ep)).is_empty(), "unchanged");
        let more = [
            pod("a", "10.0.0.1", true, &[]),
            pod("b", "10.0.0.2", false, &[]),
        ];
        let refs: Vec<&Pod> = more.iter().collect();
        let a = reconcile(&s, &refs, Some(ep));
        assert!(
            matches!(&a[0], Action::Update { new, .. } if new.subsets[0].not_ready_addresses.len() == 1)
        );
    }

    #[test]
    fn other_pods_and_selectorless_services_are_ignored() {
        let mut other = pod("x", "10.0.0.9", true, &[]);
        other.metadata.labels.insert("app".into(), "db".into());
        let mut elsewhere = pod("y", "10.0.0.8", true, &[]);
        elsewhere.metadata.namespace = "other".into();
        let mut gone = pod("z", "10.0.0.7", true, &[]);
        gone.metadata.deletion_timestamp = Some("2020-01-01T00:00:00Z".into());
        let s = svc(vec![sp("http", 80, None)]);
        let refs = [&other, &elsewhere, &gone];
        assert!(desired_subsets(&s, &refs).is_empty());
        let mut manual = svc(vec![]);
        manual.spec.selector.clear();
        assert!(reconcile(&manual, &refs, None).is_empty());
    }
}
