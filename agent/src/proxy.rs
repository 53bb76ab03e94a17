//! The service proxy (kube-proxy in userspace mode): for every Service with
//! a clusterIP, listen on clusterIP:port and forward each TCP connection to
//! the Service's ready endpoints, round-robin, trying the next endpoint when
//! one refuses. Services and Endpoints are watched, so a change reaches the
//! listeners as soon as the watch event does. With no ready endpoint a
//! connection is reset at once (never left hanging). Listeners use
//! SO_REUSEPORT, so several agents on one machine can all serve the same
//! cluster IP and any of them answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_proto::api::core::ServicePort;
use keel_proto::api::{Endpoints, Service};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::Ctx;
use crate::watcher::{self, Event};

/// A service port's ready endpoints and its round-robin cursor.
#[derive(Debug, Default)]
pub struct Backends {
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
}

impl Backends {
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.write().expect("backends lock") = Arc::new(addrs);
    }

    pub fn get(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.read().expect("backends lock").clone()
    }

    /// The endpoints in the order one connection should try them: the next
    /// one in round-robin order first, then the rest.
    pub fn order(&self) -> Vec<SocketAddr> {
        let a = self.get();
        rotation(&a, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// `addrs` rotated to start at `start % len`.
pub fn rotation(addrs: &[SocketAddr], start: usize) -> Vec<SocketAddr> {
    if addrs.is_empty() {
        return Vec::new();
    }
    let s = start % addrs.len();
    addrs[s..].iter().chain(&addrs[..s]).copied().collect()
}

/// The ready endpoints of service port `sp` (of a service with `n_ports` ports).
pub fn endpoints_for(sp: &ServicePort, n_ports: usize, ep: &Endpoints) -> Vec<SocketAddr> {
    let mut out = BTreeSet::new();
    for s in &ep.subsets {
        let port = s
            .ports
            .iter()
            .find(|p| p.name == sp.name)
            .or_else(|| (s.ports.len() == 1 && n_ports == 1).then(|| &s.ports[0]));
        let Some(port) = port.and_then(|p| u16::try_from(p.port).ok()) else {
            continue;
        };
        for a in &s.addresses {
            if let Ok(ip) = a.ip.parse::<Ipv4Addr>() {
                out.insert(SocketAddr::from((ip, port)));
            }
        }
    }
    out.into_iter().collect()
}

struct Listener {
    service: String,
    port: ServicePort,
    n_ports: usize,
    backends: Arc<Backends>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Runs the proxy forever.
pub async fn run(ctx: Arc<Ctx>) {
    let (stx, mut srx) = mpsc::channel(256);
    let (etx, mut erx) = mpsc::channel(256);
    tokio::spawn(watcher::run::<Service>(
        ctx.client.clone(),
        "/api/v1/services".into(),
        stx,
    ));
    tokio::spawn(watcher::run::<Endpoints>(
        ctx.client.clone(),
        "/api/v1/endpoints".into(),
        etx,
    ));
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, Endpoints> = BTreeMap::new();
    let mut listeners: BTreeMap<SocketAddr, Listener> = BTreeMap::new();
    loop {
        tokio::select! {
            Some(ev) = srx.recv() => {
                apply(&mut services, ev, |s: &Service| key(&s.metadata.namespace, &s.metadata.name));
                *ctx.services.write().expect("services lock") = services.values().cloned().collect();
                ctx.services_synced.send_replace(true);
            }
            Some(ev) = erx.recv() => {
                apply(&mut endpoints, ev, |e: &Endpoints| key(&e.metadata.namespace, &e.metadata.name));
            }
            else => return,
        }
        reconcile(&services, &endpoints, &mut listeners);
    }
}

fn apply<T>(m: &mut BTreeMap<String, T>, ev: Event<T>, k: impl Fn(&T) -> String) {
    match ev {
        Event::Reset(items) => {
            m.clear();
            for i in items {
                m.insert(k(&i), i);
            }
        }
        Event::Apply(i) => {
            m.insert(k(&i), i);
        }
        Event::Delete(i) => {
            m.remove(&k(&i));
        }
    }
}

fn reconcile(
    services: &BTreeMap<String, Service>,
    endpoints: &BTreeMap<String, Endpoints>,
    listeners: &mut BTreeMap<SocketAddr, Listener>,
) {
    let mut want: BTreeMap<SocketAddr, (String, ServicePort, usize)> = BTreeMap::new();
    for (k, s) in services {
        let Ok(ip) = s.spec.cluster_ip.parse::<Ipv4Addr>() else {
            continue;
        };
        for p in &s.spec.ports {
            if !matches!(p.protocol.as_str(), "" | "TCP") {
                continue;
            }
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            want.insert(
                SocketAddr::from((ip, port)),
                (k.clone(), p.clone(), s.spec.ports.len()),
            );
        }
    }
    listeners.retain(|addr, l| {
        want.get(addr)
            .is_some_and(|(k, p, n)| *k == l.service && *p == l.port && *n == l.n_ports)
    });
    for (addr, (k, p, n)) in want {
        let l = listeners.entry(addr).or_insert_with(|| {
            tracing::info!(service = %k, %addr, "proxying service");
            let backends = Arc::new(Backends::default());
            Listener {
                task: tokio::spawn(listen(addr, backends.clone())),
                service: k.clone(),
                port: p.clone(),
                n_ports: n,
                backends,
            }
        });
        let new = endpoints
            .get(&k)
            .map(|e| endpoints_for(&p, n, e))
            .unwrap_or_default();
        if *l.backends.get() != new {
            tracing::info!(service = %k, %addr, endpoints = ?new, "service endpoints changed");
            l.backends.set(new);
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

async fn listen(addr: SocketAddr, backends: Arc<Backends>) {
    let listener = loop {
        match bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen on the service address; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(forward(conn, backends.order()));
    }
}

async fn forward(mut conn: TcpStream, order: Vec<SocketAddr>) {
    let _ = conn.set_nodelay(true);
    for b in order {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(b)).await {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(backend = %b, error = %e, "endpoint refused"),
            Err(_) => tracing::debug!(backend = %b, "endpoint connect timed out"),
        }
    }
    // No ready endpoint (or none answered): reset the connection at once.
    let _ = conn.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::core::{EndpointAddress, EndpointPort, EndpointSubset};

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let b = Backends::default();
        assert!(b.order().is_empty());
        let a: Vec<SocketAddr> = (1..=3)
            .map(|i| SocketAddr::from(([127, 9, 0, i], 80)))
            .collect();
        b.set(a.clone());
        let firsts: Vec<SocketAddr> = (0..6).map(|_| b.order()[0]).collect();
        assert_eq!(firsts[..3], firsts[3..]);
        let mut seen = firsts[..3].to_vec();
        seen.sort();
        assert_eq!(seen, a);
        assert_eq!(rotation(&a, 4), vec![a[1], a[2], a[0]]);
    }

    #[test]
    fn endpoints_match_ports_by_name_or_alone() {
        let ep = Endpoints {
            subsets: vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: "127.9.0.2".into(),
                    ..Default::default()
                }],
                not_ready_addresses: vec![EndpointAddress {
                    ip: "127.9.0.3".into(),
                    ..Default::default()
                }],
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8000,
                    ..Default::default()
                }],
            }],
            ..Default::default()
        };
        let sp = |name: &str| ServicePort {
            name: name.into(),
            port: 80,
            ..Default::default()
        };
        let want = vec![SocketAddr::from(([127, 9, 0, 2], 8000))];
        assert_eq!(endpoints_for(&sp("http"), 2, &ep), want);
        assert_eq!(endpoints_for(&sp(""), 1, &ep), want);
        assert!(endpoints_for(&sp("metrics"), 2, &ep).is_empty());
    }
}
