//! Serving an axum router over HTTPS (feature `https`; the masters' REST API
//! and the agents' log endpoint): a rustls handshake per connection (a
//! client certificate, if the configuration asks for or allows one, must be
//! signed by the cluster CA), then HTTP/1 or HTTP/2 (gRPC), with the client
//! certificate's subject in every request's extensions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::Service;

/// The subject of the certificate a client presented in the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSubject {
    pub cn: String,
    pub org: String,
    /// When the certificate was issued (seconds since the epoch): a node
    /// revoked after it refuses it.
    pub issued_at: i64,
}

/// How long a connection may take over each step before it is dropped, so
/// that slow or idle clients cannot pin connections and tasks forever.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The TLS handshake.
    pub handshake: Duration,
    /// A request's headers, from the first byte of the request (HTTP/1).
    pub header_read: Duration,
    /// A connection with no request in flight (a watch in flight keeps it).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(120),
        }
    }
}

/// Serves `router` on `listener`: HTTPS with `tls`, plain HTTP without
/// (`--insecure`), until `shutdown` turns true, with the default timeouts.
///
/// An answer to a client that presents a certificate must use
/// `PeerSubject` only after checking its organisation: the handshake proves
/// the CA signed it, not what it may do.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(listener, router, tls, shutdown, Timeouts::default()).await
}

/// `serve` with the given timeouts.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    limits: Timeouts,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut stop => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            // A client that never finishes its handshake must not hold a task forever.
            let hs = tokio::time::timeout(limits.handshake, acceptor.accept(tcp));
            let stream = match hs.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| {
                    let (cn, org) = crate::pki::subject(c)?;
                    let (issued_at, _) = crate::pki::validity(c).unwrap_or_default();
                    Some(PeerSubject { cn, org, issued_at })
                });
            let activity = Arc::new(Activity::new());
            let act = activity.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    let mut r = router.clone();
                    let guard = act.begin();
                    async move {
                        let resp = r.call(req.map(axum::body::Body::new)).await;
                        // The request is in flight until its body is sent
                        // (a watch streams for as long as it lasts).
                        resp.map(|resp| {
                            resp.map(|b| {
                                axum::body::Body::new(http_body_util::BodyExt::map_frame(
                                    b,
                                    move |f| {
                                        let _keep = &guard;
                                        f
                                    },
                                ))
                            })
                        })
                    }
                },
            );
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(limits.idle / 4))
                .keep_alive_timeout(limits.idle / 4);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    _ = &mut conn => return,
                    _ = tokio::time::sleep(limits.idle / 4) => {
                        if activity.idle_for() >= limits.idle {
                            tracing::debug!(%remote, "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(limits.handshake, &mut conn).await;
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    inflight: AtomicUsize,
    /// Milliseconds since `epoch` (the connection's start) when it last
    /// went idle; a new connection is idle from its start.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms.store(a.now_ms(), Ordering::Relaxed);
        a.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            inflight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> Arc<InFlight> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Arc::new(InFlight(self.clone()))
    }

    /// How long no request has been in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = self.idle_since_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }
}

/// Reads an HTTP/1 answer's head from `s` (at most 16 KiB): its status
/// code, the head itself, and the bytes already read past it. Used where a
/// connection is relayed below HTTP (an upgrade to a WebSocket).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 << 10 {
            return Err(std::io::Error::other("malformed answer"));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(502);
    Ok((code, head, buf[head_end..].to_vec()))
}

/// The body of an answer whose head `read_head` read, starting with
/// `rest`: as much as comes within 2 s, at most 64 KiB (an error message).
pub async fn read_short_body<S: tokio::io::AsyncRead + Unpin>(s: &mut S, rest: Vec<u8>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut body = rest;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut chunk = [0u8; 4096];
        while body.len() < 64 << 10 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    body
}

/// A header's value in an HTTP/1 head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Usage, client_config, server_config};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a tiny router over HTTPS with short timeouts; returns its address
    /// and a TLS connector that trusts it.
    async fn server(limits: Timeouts) -> (std::net::SocketAddr, tokio_rustls::TlsConnector) {
        let ca = Ca::generate("test").unwrap();
        let me = ca
            .issue(
                "m1",
                Some("keel:masters"),
                &["127.0.0.1".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        let tls = Arc::new(server_config(&ca.cert_pem, &me, false).unwrap());
        let slow = || async {
            let chunks = futures::stream::unfold(0, |i| async move {
                if i == 3 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Ok::<_, std::io::Error>(format!("chunk{i}\n")), i + 1))
            });
            axum::body::Body::from_stream(chunks)
        };
        let router = Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route("/slow", axum::routing::get(slow));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = _tx;
            serve_with(listener, router, Some(tls), rx, limits).await
        });
        let client = client_config(&ca.cert_pem, None).unwrap();
        (addr, tokio_rustls::TlsConnector::from(Arc::new(client)))
    }

    async fn connect(
        addr: std::net::SocketAddr,
        c: &tokio_rustls::TlsConnector,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        c.connect(name, tcp).await.unwrap()
    }

    /// Reads until the server closes the connection; what it sent, or None
    /// if it was still open after `max`.
    async fn read_until_closed(
        s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        max: Duration,
    ) -> Option<String> {
        let mut out = Vec::new();
        let r = tokio::time::timeout(max, async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        r.ok().map(|()| String::from_utf8_lossy(&out).into_owned())
    }

    fn limits() -> Timeouts {
        Timeouts {
            handshake: Duration::from_secs(5),
            header_read: Duration::from_millis(300),
            idle: Duration::from_millis(400),
        }
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_dropped() {
        let (addr, c) = server(limits()).await;
        let mut s = connect(addr, &c).await;
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(got.is_some(), "the connection stayed open");
        assert!(!got.unwrap().contains("200 OK"));
    }

    #[tokio::test]
    async fn idle_connections_close_but_streaming_answers_do_not() {
        // A long header timeout, so only the idle timeout can close it (hyper
        // also applies the header timeout to an idle HTTP/1 connection).
        let (addr, c) = server(Timeouts {
            header_read: Duration::from_secs(60),
            ..limits()
        })
        .await;
        let mut s = connect(addr, &c).await;
        // A streaming answer lasting longer than the idle timeout completes.
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let got = got.expect("the idle connection was not closed");
        assert!(got.contains("200 OK"), "{got}");
        for i in 0..3 {
            assert!(
                got.contains(&format!("chunk{i}")),
                "chunk {i} missing: {got}"
            );
        }
        // An ordinary request on a fresh connection is answered, then the
        // idle connection is closed by the server.
        let mut s = connect(addr, &c).await;
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .expect("the idle connection was not closed");
        assert!(got.contains("200 OK") && got.ends_with("ok"), "{got}");
    }

    #[tokio::test]
    async fn an_answer_head_is_split_from_what_follows() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-protocol: v5.channel.k8s.io\r\nUpgrade: websocket\r\n\r\n\x01data";
        let (code, head, rest) = read_head(&mut &answer[..]).await.unwrap();
        assert_eq!((code, rest.as_slice()), (101, &b"\x01data"[..]));
        assert_eq!(
            header(&head, "Sec-WebSocket-Protocol"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(header(&head, "upgrade"), Some("websocket"));
        assert_eq!(header(&head, "Sec-WebSocket-Accept"), None);
        assert!(read_head(&mut &b"HTTP/1.1 200 OK\r\n"[..]).await.is_err());
    }

    #[tokio::test]
    async fn a_live_certificate_is_the_one_held_at_each_handshake() {
        use crate::pki::{CurrentPair, Pair, server_config_live};
        struct Holder(std::sync::Mutex<Pair>);
        impl CurrentPair for Holder {
            fn current(&self) -> Option<Pair> {
                Some(self.0.lock().unwrap().clone())
            }
        }
        let ca = Ca::generate("test").unwrap();
        let issue = || {
            ca.issue("n1", None, &["127.0.0.1".into()], Usage::ServerAndClient)
                .unwrap()
        };
        let (first, second) = (issue(), issue());
        let holder = Arc::new(Holder(std::sync::Mutex::new(first.clone())));
        let cfg = Arc::new(server_config_live(&ca.cert_pem, holder.clone(), false).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = s.write_all(b"x").await;
                }
            }
        });
        // A new client each time, as masters dial agents (no resumed session).
        let served = || async {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(
                client_config(&ca.cert_pem, None).unwrap(),
            ));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut s = connector.connect(name, tcp).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        };
        let der = |p: &Pair| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(p.cert_pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        assert_eq!(served().await, der(&first));
        *holder.0.lock().unwrap() = second.clone();
        assert_eq!(served().await, der(&second));
        assert_ne!(der(&first), der(&second));
    }
}
