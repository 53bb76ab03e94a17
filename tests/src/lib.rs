//! Shared helpers for Keel's in-process end-to-end tests: real members (real
//! sockets on 127.0.0.1, real redb and sled files in temp dirs) started as
//! `keel_store::Node`s inside the test process.

use std::sync::Arc;
use std::time::Duration;

pub use keel_chaos::{free_port, poll};
use keel_proto::pki::{self, Ca, Credentials, TlsBundle, Usage};
use keel_store::{Node, NodeConfig};

/// A member's TLS material, issued by its cluster's CA.
fn member_tls(ca: &Ca, name: &str) -> TlsBundle {
    let me = ca
        .issue(
            &format!("master:{name}"),
            Some(pki::ORG_MASTERS),
            &["127.0.0.1".into(), "localhost".into()],
            Usage::ServerAndClient,
        )
        .expect("member certificate");
    TlsBundle {
        ca_pem: ca.cert_pem.clone(),
        me: Some(me),
    }
}

/// Members running in this process, with their temp dir. Each cluster has
/// a CA of its own (members run mutual TLS as in production), so clusters
/// in one test process trust only their own members.
pub struct InProcessCluster {
    pub nodes: Vec<Arc<Node>>,
    pub dir: tempfile::TempDir,
    /// How a test dials this cluster: its CA and an admin certificate.
    pub credentials: Credentials,
}

impl InProcessCluster {
    /// Starts `n` members that bootstrap one cluster, waiting for a leader.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(n, |_| {}).await
    }

    /// Like `start`, with `tune` applied to every member's configuration.
    pub async fn start_with(n: usize, tune: impl Fn(&mut NodeConfig)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::generate("in-process")?;
        let admin = ca.issue("admin", Some(pki::ORG_ADMIN), &[], Usage::Client)?;
        let credentials = Credentials::tls(ca.cert_pem.clone(), Some(admin));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (format!("m{}", i + 1), format!("127.0.0.1:{p}")))
            .collect();
        let mut nodes = Vec::new();
        for (i, (p, c)) in ports.iter().enumerate() {
            let mut cfg = NodeConfig::new(
                &format!("m{}", i + 1),
                dir.path().join(format!("m{}", i + 1)),
                &format!("127.0.0.1:{p}"),
                &format!("127.0.0.1:{c}"),
            );
            cfg.initial_cluster = initial.clone();
            cfg.zone = format!("zone-{i}");
            cfg.tls = Some(member_tls(&ca, &format!("m{}", i + 1)));
            tune(&mut cfg);
            nodes.push(keel_store::start(cfg).await?);
        }
        let c = InProcessCluster {
            nodes,
            dir,
            credentials,
        };
        poll(Duration::from_secs(20), "a leader", || async { c.leader() }).await;
        Ok(c)
    }

    /// Index of the member that leads, if every member agrees.
    pub fn leader(&self) -> Option<usize> {
        let l = self.nodes[0].metrics().current_leader?;
        if self
            .nodes
            .iter()
            .all(|n| n.metrics().current_leader == Some(l))
        {
            self.nodes.iter().position(|n| n.id == l)
        } else {
            None
        }
    }

    /// Client endpoint of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].cfg.client_addr()
    }

    /// A lazily connected gRPC channel to member `i`'s client endpoint,
    /// with this cluster's admin credentials.
    pub fn channel(&self, i: usize) -> tonic::transport::Channel {
        self.credentials
            .endpoint(&self.endpoint(i))
            .expect("a member's endpoint")
            .connect_lazy()
    }

    pub async fn shutdown(&self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}

/// Typed reads and writes for tests, over the registry's public (untyped)
/// API: what a test needs beyond the typed calls the control plane itself
/// uses (`Registry::get_t`, `create_t`).
pub mod typed {
    use keel_controlplane::registry::{from_value, to_value};
    use keel_controlplane::{ApiError, Registry, kinds};
    use keel_proto::api::Resource;

    /// Replaces an object the test read (its resourceVersion must still be current).
    pub async fn update<T: Resource>(reg: &Registry, obj: &T) -> Result<T, ApiError> {
        from_value(reg.update(kinds::of::<T>(), to_value(obj)?, false).await?)
    }

    /// Replaces the status of an object the test read.
    pub async fn update_status<T: Resource>(reg: &Registry, obj: &T) -> Result<T, ApiError> {
        from_value(reg.update(kinds::of::<T>(), to_value(obj)?, true).await?)
    }

    /// Deletes an object at the revision the test read.
    pub async fn delete<T: Resource>(reg: &Registry, obj: &T) -> Result<(), ApiError> {
        let m = obj.meta();
        let rev = m.revision();
        reg.delete(
            kinds::of::<T>(),
            &m.namespace,
            &m.name,
            (rev > 0).then_some(rev),
        )
        .await
        .map(|_| ())
    }
}
