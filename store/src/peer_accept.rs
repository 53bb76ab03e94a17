//! The peer port's listener: accepts connections, runs the mutual-TLS
//! handshake, and routes each connection either to the gRPC service
//! (`peer::RaftGrpc`, served by tonic) or to a framed connection. Under TLS
//! the ALPN protocol the client chose decides; in plain text (`--insecure`)
//! the first byte does. A framed connection's magic then says what it
//! carries: replication (`raft::framed`) or forwarded leader requests
//! (`node::forward_framed`). Only masters (certificates of organisation
//! keel:masters signed by the cluster CA) are served either way.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_proto::keelraft::raft_service_server::RaftServiceServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::error::StoreError;
use crate::net;
use crate::node::{Node, forward_framed};
use crate::peer::RaftGrpc;
use crate::raft::framed;
use crate::raft::network::PEER_MESSAGE_LIMIT;

/// How long a new connection may take to say what it is (its TLS
/// handshake, or its first byte in plain text).
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves the Raft peer port until the member shuts down.
pub fn serve(node: &Arc<Node>, listener: TcpListener) -> Result<(), StoreError> {
    let stop = node.shutdown_signal();
    match node.cfg.tls.as_ref() {
        None => {
            let grpc = grpc::<TcpStream>(node);
            let node = node.clone();
            tokio::spawn(accept(listener, stop.clone(), move |tcp| {
                route_plain(tcp, grpc.clone(), node.clone(), stop.clone())
            }));
        }
        Some(t) => {
            let me = t
                .me
                .as_ref()
                .ok_or_else(|| StoreError::Config("TLS: a member needs its certificate".into()))?;
            let mut cfg = keel_proto::pki::server_config(&t.ca_pem, me, true)
                .map_err(|e| StoreError::Config(format!("TLS: {e}")))?;
            cfg.alpn_protocols.push(framed::ALPN.to_vec());
            let acceptor = TlsAcceptor::from(Arc::new(cfg));
            let grpc = grpc::<TlsStream<TcpStream>>(node);
            let node = node.clone();
            tokio::spawn(accept(listener, stop.clone(), move |tcp| {
                route_tls(
                    tcp,
                    acceptor.clone(),
                    grpc.clone(),
                    node.clone(),
                    stop.clone(),
                )
            }));
        }
    }
    Ok(())
}

/// Starts tonic on the connections sent to the returned channel.
fn grpc<IO>(node: &Arc<Node>) -> mpsc::Sender<IO>
where
    IO: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let mut stop = node.shutdown_signal();
    let svc = RaftServiceServer::new(RaftGrpc::new(node.clone()))
        .max_decoding_message_size(PEER_MESSAGE_LIMIT)
        .max_encoding_message_size(PEER_MESSAGE_LIMIT);
    let only_masters = net::require_org(node.cfg.tls.is_some(), net::PEER_ORGS);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(only_masters))
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "peer server failed");
        }
    });
    tx
}

/// Accepts connections (`net::incoming`: Nagle off) until the member shuts
/// down, each routed by its own task so a slow handshake holds up no one
/// else.
async fn accept<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, route: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut incoming = std::pin::pin!(net::incoming(listener));
    loop {
        let accepted = tokio::select! {
            a = incoming.next() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Some(Ok(tcp)) => {
                tokio::spawn(route(tcp));
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin on the error.
                tracing::warn!(error = %e, "peer port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => return,
        }
    }
}

async fn route_plain(
    tcp: TcpStream,
    grpc: mpsc::Sender<TcpStream>,
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == framed::MAGIC[0] => serve_framed(tcp, node, stop).await,
        Ok(Ok(1)) => {
            let _ = grpc.send(tcp).await;
        }
        // Closed, failed or silent before its first byte.
        _ => {}
    }
}

async fn route_tls(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    grpc: mpsc::Sender<TlsStream<TcpStream>>,
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peer port: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let session = tls.get_ref().1;
    if session.alpn_protocol() != Some(framed::ALPN) {
        let _ = grpc.send(tls).await;
        return;
    }
    let cert = session.peer_certificates().and_then(|c| c.first());
    if let Some(refused) = net::refusal(cert, net::PEER_ORGS) {
        tracing::warn!(
            why = refused.message(),
            "peer port: framed connection refused"
        );
        return;
    }
    serve_framed(tls, node, stop).await
}

/// Serves a framed connection as its magic says, until it ends or the
/// member shuts down; an unknown magic closes it.
async fn serve_framed<I: framed::Io>(mut io: I, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut magic = [0u8; framed::MAGIC.len()];
    match tokio::time::timeout(HANDSHAKE, io.read_exact(&mut magic)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let served = async {
        if &magic == framed::MAGIC {
            framed::serve(io, node.raft.clone()).await
        } else if &magic == forward_framed::MAGIC {
            forward_framed::serve(io, node.clone()).await
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a framed peer stream",
            ))
        }
    };
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "framed peer connection ended");
            }
        }
        _ = stop.wait_for(|s| *s) => {}
    }
}
