//! Per-link TCP proxies: the harness puts one relay on every directed link
//! between two members (member A dials B through `proxy(A→B)`, via
//! `keel master --peer-override`), so it can cut any set of links without
//! root or network namespaces. A cut link closes its open connections and
//! closes every new one at once, as a firewall that rejects would.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One directed link `from → to`: a listener on loopback relaying to `to`'s
/// peer port while the link is up.
pub struct LinkProxy {
    pub from: usize,
    pub to: usize,
    /// Where `from` dials `to` (`127.0.0.1:port`).
    pub addr: String,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and relays every connection to `target`.
    pub async fn start(from: usize, to: usize, target: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (cut, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, target, rx));
        Ok(LinkProxy {
            from,
            to,
            addr,
            cut,
            task,
        })
    }

    /// Cuts (`true`) or restores (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: String, cut: watch::Receiver<bool>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            drop(inbound);
            continue;
        }
        let (target, mut cut) = (target.clone(), cut.clone());
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let mut inbound = inbound;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
            // Dropping both ends closes the connection on each side.
        });
    }
}

/// The proxies of a whole cluster: one per ordered pair of members.
#[derive(Default, Clone)]
pub struct Mesh {
    links: Arc<BTreeMap<(usize, usize), LinkProxy>>,
}

impl Mesh {
    /// Starts a proxy for every ordered pair of the given peer addresses.
    pub async fn start(peer_addrs: &[String]) -> std::io::Result<Self> {
        let mut links = BTreeMap::new();
        for from in 0..peer_addrs.len() {
            for (to, target) in peer_addrs.iter().enumerate() {
                if from != to {
                    links.insert(
                        (from, to),
                        LinkProxy::start(from, to, target.clone()).await?,
                    );
                }
            }
        }
        Ok(Mesh {
            links: Arc::new(links),
        })
    }

    /// Where member `from` must dial member `to`.
    pub fn addr(&self, from: usize, to: usize) -> Option<&str> {
        self.links.get(&(from, to)).map(|l| l.addr.as_str())
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) {
        for k in [(a, b), (b, a)] {
            if let Some(l) = self.links.get(&k) {
                l.set_cut(true);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.set_cut(false);
        }
    }

    /// The unordered pairs currently cut.
    pub fn cut_pairs(&self) -> Vec<(usize, usize)> {
        self.links
            .values()
            .filter(|l| l.from < l.to && l.is_cut())
            .map(|l| (l.from, l.to))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: &str) -> bool {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return false;
        };
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    }

    #[tokio::test]
    async fn a_cut_link_closes_connections_until_healed() {
        let target = echo_server().await;
        let mesh = Mesh::start(&[target.clone(), target]).await.unwrap();
        let a = mesh.addr(0, 1).unwrap().to_string();
        assert!(roundtrip(&a).await);
        // An open connection is closed by the cut.
        let mut open = TcpStream::connect(&a).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        mesh.cut(0, 1);
        assert_eq!(mesh.cut_pairs(), vec![(0, 1)]);
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), open.read(&mut buf))
            .await
            .expect("closed, not hung");
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(!roundtrip(&a).await);
        mesh.heal();
        assert!(roundtrip(&a).await);
    }
}
