//! Accepting connections for the gRPC servers: TCP options, mutual TLS with
//! the cluster CA, and which certificate organisations each port admits.

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

/// Accepted connections with Nagle's algorithm off. Raft and etcd messages
/// are small request/response pairs; with Nagle on, delayed ACKs stall them
/// by up to 40 ms each.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// Certificate organisations admitted on the Raft peer port: masters only.
pub const PEER_ORGS: &[&str] = &[keel_proto::pki::ORG_MASTERS];
/// Certificate organisations admitted on the client (etcd API) port: masters
/// and cluster admins. Node certificates are signed by the same CA but must
/// never reach the raw key space, so they are refused here.
pub const CLIENT_ORGS: &[&str] = &[keel_proto::pki::ORG_MASTERS, keel_proto::pki::ORG_ADMIN];

/// A gRPC server builder; with `tls`, mutual TLS: a client without a
/// certificate signed by the cluster CA fails the handshake.
pub fn server(
    tls: Option<&keel_proto::pki::TlsBundle>,
) -> Result<tonic::transport::Server, crate::StoreError> {
    let b = tonic::transport::Server::builder();
    match tls {
        None => Ok(b),
        Some(t) => {
            let cfg = t
                .tonic_server()
                .map_err(|e| crate::StoreError::Config(e.to_string()))?;
            b.tls_config(cfg)
                .map_err(|e| crate::StoreError::Config(format!("TLS: {e}")))
        }
    }
}

/// An interceptor refusing callers whose certificate's organisation is not
/// in `orgs` (PERMISSION_DENIED). Without TLS (`--insecure`) it admits all.
#[allow(clippy::result_large_err)]
pub fn require_org(
    tls: bool,
    orgs: &'static [&'static str],
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        if !tls {
            return Ok(req);
        }
        let certs = req.peer_certs();
        match refusal(certs.as_ref().and_then(|c| c.first()), orgs) {
            None => Ok(req),
            Some(refused) => Err(refused),
        }
    }
}

/// Why a peer presenting `cert` (the first certificate of its chain, if
/// any) may not use a port that admits `orgs`; None when it may.
pub fn refusal(
    cert: Option<&rustls::pki_types::CertificateDer<'_>>,
    orgs: &[&str],
) -> Option<tonic::Status> {
    match cert.and_then(keel_proto::pki::subject) {
        Some((_, o)) if orgs.contains(&o.as_str()) => None,
        Some((cn, o)) => Some(tonic::Status::permission_denied(format!(
            "certificate {cn:?} (organisation {o:?}) may not use this port: it admits {}",
            orgs.join(", ")
        ))),
        None => Some(tonic::Status::unauthenticated(
            "a client certificate signed by the cluster CA is required",
        )),
    }
}
