//! Serving an axum router over HTTPS (feature `https`; the masters' REST API
//! and the agents' log endpoint): a rustls handshake per connection (a
//! client certificate, if the configuration asks for or allows one, must be
//! signed by the cluster CA), then HTTP/1 or HTTP/2 (gRPC), with the client
//! certificate's subject in every request's extensions.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::Service;

/// The subject of the certificate a client presented in the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSubject {
    pub cn: String,
    pub org: String,
}

/// Serves `router` on `listener`: HTTPS with `tls`, plain HTTP without
/// (`--insecure`), until `shutdown` turns true.
///
/// An answer to a client that presents a certificate must use
/// `PeerSubject` only after checking its organisation: the handshake proves
/// the CA signed it, not what it may do.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
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
            let hs = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
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
                .and_then(|c| c.first().and_then(crate::pki::subject))
                .map(|(cn, org)| PeerSubject { cn, org });
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    let mut r = router.clone();
                    async move { r.call(req.map(axum::body::Body::new)).await }
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}
