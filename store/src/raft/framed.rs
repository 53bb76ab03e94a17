//! The replication wire without HTTP/2: one TCP (or mutual-TLS) connection
//! per leader→follower stream, carrying length-prefixed postcard frames.
//! The leader's writer task writes AppendEntries requests straight to the
//! socket and the task that polls the answers reads them straight from it;
//! on the follower, openraft's own input task reads the requests and the
//! connection task writes the answers. gRPC's stream (`append_stream` over
//! tonic) put an HTTP/2 connection task and a body pipe between each of
//! those and the socket, four thread hand-offs per round trip that cost more
//! than the fsync they wait for on a small VM (BENCHMARKS.md, eleventh
//! round).
//!
//! The peer port carries both: a framed connection is told apart from gRPC
//! by its TLS ALPN protocol ([`ALPN`]) or, in plain text, by its first byte
//! ([`MAGIC`] cannot start an HTTP/2 preface), and its magic then tells
//! replication apart from forwarded leader requests, which use the same
//! frames (`node::forward_framed`). See `crate::peer_accept`.
//!
//! Wire: the client sends [`MAGIC`], then frames; each frame is a 4-byte
//! big-endian length and that many bytes of payload (at most
//! `PEER_MESSAGE_LIMIT`). Requests are `codec`-encoded
//! `AppendEntriesRequest`s, answers `codec`-encoded `StreamAppendResult`s,
//! one per request, in request order. A zero-length frame ends a stream:
//! the client sends one when openraft's requests end, the follower one
//! after the last answer, once it has read the client's. The connection
//! then carries the next stream: openraft sends every heartbeat as a stream
//! of its own, and a connection per heartbeat would churn through ports.
//! Anything else (an error, a stream given up half-way) closes the
//! connection.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::raft::codec;
use crate::raft::network::PEER_MESSAGE_LIMIT;
use crate::raft::types::{Raft, TypeConfig};

/// The TLS ALPN protocol of a framed replication connection.
pub const ALPN: &[u8] = b"keel-append/1";

/// What a framed connection starts with. Its first byte is not `P`, the
/// first byte of the HTTP/2 client preface, so one byte routes a
/// plain-text connection.
pub const MAGIC: &[u8; 8] = b"\0keelap1";

/// Read buffer per connection: a few batches of entries.
const READ_BUFFER: usize = 64 << 10;

/// A connection: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A follower's answers as they arrive.
pub type Frames = futures::stream::BoxStream<'static, io::Result<Vec<u8>>>;

pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|n| (*n as usize) <= PEER_MESSAGE_LIMIT)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await
}

/// Ends a stream (a zero-length frame) and flushes.
async fn write_end<W: AsyncWrite + Unpin>(w: &mut W) -> io::Result<()> {
    w.write_all(&0u32.to_be_bytes()).await?;
    w.flush().await
}

/// What a read found.
enum Frame {
    Data(Vec<u8>),
    /// The zero-length frame: the stream ended, the connection stays.
    End,
    /// The peer closed the connection between frames.
    Closed,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Closed),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Ok(Frame::End);
    }
    if len > PEER_MESSAGE_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the peer message limit"),
        ));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok(Frame::Data(payload))
}

/// Writes every item of `items` as a frame, flushing once no further item
/// is ready (so a burst goes out in one write), until `items` ends.
async fn pump<W, S>(w: &mut W, items: S) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    S: Stream<Item = Vec<u8>> + Unpin,
{
    // Fused: the look-ahead below may see the end, and openraft's streams
    // must not be polled again after it.
    let mut items = items.fuse();
    while let Some(first) = items.next().await {
        write_frame(w, &first).await?;
        while let Some(Some(more)) = items.next().now_or_never() {
            write_frame(w, &more).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

type Reader = BufReader<ReadHalf<Box<dyn Io>>>;
pub(crate) type Writer = BufWriter<WriteHalf<Box<dyn Io>>>;

/// An open connection between streams.
pub struct Conn {
    r: Reader,
    w: Writer,
}

/// The connection a peer client keeps between streams (heartbeats reuse
/// it); empty until the first stream, or after one ended badly.
pub type Idle = Arc<Mutex<Option<Conn>>>;

fn lock(idle: &Idle) -> std::sync::MutexGuard<'_, Option<Conn>> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts a stream's writer task when its answers are dropped, so a stream
/// openraft gave up closes its connection.
struct AbortOnDrop(Option<tokio::task::JoinHandle<io::Result<Writer>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Connects to the peer port at `addr`, with mutual TLS when `tls` is given
/// (its ALPN must be [`ALPN`]), and queues `magic` (which says what the
/// connection carries: [`MAGIC`], or `node::forward_framed::MAGIC`) in the
/// writer, to go out with the first frame.
pub(crate) async fn connect(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    magic: &[u8],
) -> io::Result<(ReadHalf<Box<dyn Io>>, Writer)> {
    let tcp = TcpStream::connect(addr).await?;
    // A dial of a loopback port in the ephemeral range that nothing listens
    // on can connect the socket to itself (TCP simultaneous open), and
    // would hold the port the peer needs to start listening. Closed with a
    // reset (zero linger), it leaves no TIME_WAIT behind on that port
    // either, which would keep the peer from binding it for a minute.
    if tcp.local_addr()? == tcp.peer_addr()? {
        tcp.set_zero_linger()?;
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connected to itself: nothing listens there",
        ));
    }
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = keel_proto::pki::addr_server_name(addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Box::new(
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await?,
            )
        }
    };
    let (r, w) = tokio::io::split(io);
    let mut w = BufWriter::new(w);
    w.write_all(magic).await?;
    Ok((r, w))
}

/// A replication connection: [`connect`] with [`MAGIC`].
async fn dial(addr: &str, tls: Option<Arc<rustls::ClientConfig>>) -> io::Result<Conn> {
    let (r, w) = connect(addr, tls, MAGIC).await?;
    Ok(Conn {
        r: BufReader::with_capacity(READ_BUFFER, r),
        w,
    })
}

/// Opens a stream to the peer port at `addr` on the idle connection, or on
/// a new one: each item of `requests` goes out as a frame; the returned
/// frames are the follower's answers. A stream that ends cleanly leaves its
/// connection in `idle` for the next.
pub async fn open<S>(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: &Idle,
    requests: S,
) -> io::Result<Frames>
where
    S: Stream<Item = Vec<u8>> + Send + Unpin + 'static,
{
    // Taken before the dial: the guard must not live across an await.
    let kept = lock(idle).take();
    let Conn { r, mut w } = match kept {
        Some(c) => c,
        None => dial(addr, tls).await?,
    };
    let writer = tokio::spawn(async move {
        pump(&mut w, requests).await?;
        write_end(&mut w).await?;
        Ok(w)
    });
    let state = (r, AbortOnDrop(Some(writer)), idle.clone());
    Ok(futures::stream::unfold(Some(state), |state| async move {
        let (mut r, mut writer, idle) = state?;
        match read_frame(&mut r).await {
            Ok(Frame::Data(f)) => Some((Ok(f), Some((r, writer, idle)))),
            Ok(Frame::End) => {
                // The follower ends a stream only after reading our end, so
                // the writer is done (or about to be): keep the connection.
                if let Some(Ok(Ok(w))) = writer.0.take().and_then(|h| h.now_or_never()) {
                    *lock(&idle) = Some(Conn { r, w });
                }
                None
            }
            Ok(Frame::Closed) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the follower closed the connection",
                )),
                None,
            )),
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed())
}

/// Serves one framed replication connection on a follower (after its
/// [`MAGIC`], which `crate::peer_accept` reads), one stream
/// after another: hands each request to openraft as it arrives and writes
/// each answer once openraft has it, which for entries means once they are
/// fsynced in this member's log (`raft::log_store`). Returns when the
/// leader closes the connection, a request cannot be decoded, or the Raft
/// core stops.
pub async fn serve<I: Io>(io: I, raft: Raft) -> io::Result<()> {
    let io: Box<dyn Io> = Box::new(io);
    let (r, w) = tokio::io::split(io);
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    let mut w = BufWriter::new(w);
    loop {
        // The requests hand the reader back at the end of the stream.
        let (back, reader) = oneshot::channel::<Reader>();
        let requests = futures::stream::unfold(Some((r, back)), |state| async move {
            let (mut r, back) = state?;
            match read_frame(&mut r).await {
                Ok(Frame::Data(f)) => match codec::decode::<AppendEntriesRequest<TypeConfig>>(&f) {
                    Ok(rpc) => Some((rpc, Some((r, back)))),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable AppendEntries; closing the stream");
                        None
                    }
                },
                Ok(Frame::End) => {
                    let _ = back.send(r);
                    None
                }
                Ok(Frame::Closed) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "replication stream: read failed");
                    None
                }
            }
        });
        let answers = raft
            .stream_append(requests)
            .scan((), |_, r| {
                let frame = r
                    .inspect_err(
                        |fatal| tracing::warn!(error = %fatal, "replication stream: Raft stopped"),
                    )
                    .ok()
                    .map(|result| codec::encode(&result));
                futures::future::ready(frame)
            })
            .boxed();
        pump(&mut w, answers).await?;
        // Only a stream the leader ended cleanly leaves the connection open.
        let Ok(next) = reader.await else {
            return Ok(());
        };
        write_end(&mut w).await?;
        r = next;
    }
}
