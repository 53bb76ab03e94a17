//! Accepting connections for the gRPC servers.

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
