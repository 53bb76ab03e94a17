//! One port-forward session: the SPDY/3.1 session kubectl opens (carried in
//! WebSocket messages), served as the kubelet serves it. For each local
//! connection the client opens two streams with the same `requestid` and
//! `port`: `streamtype: error` and `streamtype: data`. Every SYN_STREAM is
//! answered with a SYN_REPLY; once a pair is complete the agent dials the
//! pod's address at that port and copies bytes both ways (the pod's as DATA
//! frames on the data stream, FIN when it closes). A failure (a port
//! nothing listens on) is written as text on the error stream, which then
//! ends with FIN, and the session goes on. PINGs are echoed, GOAWAY ends
//! the session, RST_STREAM stops one stream. Flow control: kubectl's SPDY
//! library (moby/spdystream) neither sends WINDOW_UPDATE nor honours it, so
//! windows are not kept; WINDOW_UPDATE and SETTINGS are ignored, and a slow
//! reader on either side holds the other back through bounded queues (and,
//! below them, TCP).

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::header_block;
use super::spdy::{Decoder, Encoder, FLAG_FIN, Frame, goaway, rst};

/// How long dialing the pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes one DATA frame from the pod carries.
const CHUNK: usize = 32 * 1024;
/// Frames waiting for the connection (all streams).
const OUT_QUEUE: usize = 64;
/// Client bytes waiting for one pod connection.
const IN_QUEUE: usize = 16;
/// How long the client may go on sending once the pod's side ended.
const GRACE: Duration = Duration::from_secs(1);
/// Outgoing frames gathered into one message, at most about this much.
const BATCH: usize = 64 * 1024;

/// The pod a session's streams reach.
#[derive(Debug, Clone)]
pub struct Target {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
    /// The pod's address: its ports are reachable there from the agent.
    pub ip: Ipv4Addr,
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    /// The data stream's `port` header.
    port: Option<String>,
    /// The client will send nothing on the data stream (FIN on its SYN).
    data_closed: bool,
}

/// A data stream being forwarded.
struct Forwarding {
    /// Client bytes to the pod; None once the client sent FIN.
    to_pod: Option<mpsc::Sender<Bytes>>,
    cancel: CancellationToken,
}

/// Serves one session over `inbound` (the client's bytes, in whatever
/// pieces they arrive) and `outbound` (this side's bytes) until the client
/// goes away or says GOAWAY.
pub async fn run<I, O>(mut inbound: I, outbound: O, target: Target)
where
    I: Stream<Item = io::Result<Bytes>> + Unpin + Send,
    O: Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
{
    let (out, rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let writer = tokio::spawn(write_frames(rx, outbound).in_current_span());
    let (done_tx, mut done) = mpsc::unbounded_channel::<u32>();
    let target = Arc::new(target);
    let all = CancellationToken::new();
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut streams: HashMap<u32, Forwarding> = HashMap::new();
    let mut last_good = 0;
    'session: loop {
        loop {
            let f = match dec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "port-forward: bad SPDY input; going away");
                    let _ = out
                        .send(Frame::GoAway {
                            last_good,
                            status: goaway::PROTOCOL_ERROR,
                        })
                        .await;
                    break 'session;
                }
            };
            match &f {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    tracing::trace!(stream, flags, len = data.len(), "port-forward: DATA in")
                }
                f => tracing::trace!(frame = ?f, "port-forward: frame in"),
            }
            match f {
                Frame::SynStream {
                    stream,
                    flags,
                    headers,
                    ..
                } => {
                    last_good = stream;
                    if out
                        .send(Frame::SynReply {
                            stream,
                            flags: 0,
                            headers: vec![],
                        })
                        .await
                        .is_err()
                    {
                        break 'session;
                    }
                    let kind = header_block::get(&headers, "streamtype").unwrap_or("");
                    // Clients before request ids: the data stream follows
                    // its error stream (ids step by 2).
                    let id = match header_block::get(&headers, "requestid") {
                        Some(id) => id.to_string(),
                        None if kind == "data" => stream.saturating_sub(2).to_string(),
                        None => stream.to_string(),
                    };
                    let p = pairs.entry(id.clone()).or_default();
                    match kind {
                        "error" => p.error = Some(stream),
                        "data" => {
                            p.data = Some(stream);
                            p.port = header_block::get(&headers, "port").map(str::to_string);
                            p.data_closed = flags & FLAG_FIN != 0;
                        }
                        other => {
                            tracing::info!(
                                stream,
                                kind = other,
                                "port-forward: unknown stream type"
                            );
                            let _ = out
                                .send(Frame::RstStream {
                                    stream,
                                    status: rst::PROTOCOL_ERROR,
                                })
                                .await;
                            continue;
                        }
                    }
                    if let Pair {
                        error: Some(error),
                        data: Some(data),
                        ..
                    } = *p
                    {
                        let p = pairs.remove(&id).unwrap_or_default();
                        let (to_pod, from_client) = mpsc::channel(IN_QUEUE);
                        let cancel = all.child_token();
                        streams.insert(
                            data,
                            Forwarding {
                                to_pod: (!p.data_closed).then_some(to_pod),
                                cancel: cancel.clone(),
                            },
                        );
                        let span = tracing::info_span!("stream", request = %id, port = ?p.port);
                        let (out, target, done) = (out.clone(), target.clone(), done_tx.clone());
                        tokio::spawn(
                            async move {
                                let ids = Ids { error, data };
                                forward(ids, p.port, from_client, cancel, out, &target).await;
                                let _ = done.send(data);
                            }
                            .instrument(span),
                        );
                    }
                }
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    let Some(s) = streams.get_mut(&stream) else {
                        // The error stream's FIN, or a stream already gone.
                        continue;
                    };
                    if !data.is_empty()
                        && let Some(tx) = &s.to_pod
                        && tx.send(data).await.is_err()
                    {
                        s.to_pod = None;
                    }
                    if flags & FLAG_FIN != 0 {
                        s.to_pod = None;
                    }
                }
                Frame::RstStream { stream, status } => {
                    tracing::debug!(stream, status, "port-forward: stream reset");
                    if let Some(s) = streams.remove(&stream) {
                        s.cancel.cancel();
                    }
                }
                Frame::Ping { id } => {
                    if out.send(Frame::Ping { id }).await.is_err() {
                        break 'session;
                    }
                }
                Frame::GoAway { .. } => {
                    tracing::debug!("port-forward: client went away");
                    break 'session;
                }
                // No flow control (see the module's doc), nothing to
                // answer for the rest.
                other => tracing::trace!(frame = ?other, "port-forward: ignored"),
            }
        }
        tokio::select! {
            m = inbound.next() => match m {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "port-forward: connection failed");
                    break;
                }
                None => break,
            },
            Some(data) = done.recv() => {
                streams.remove(&data);
            }
        }
    }
    all.cancel();
    drop(out);
    drop(done_tx);
    let _ = writer.await;
    tracing::info!("port-forward session ended");
}

/// Writes frames as they come, several to a message when they queue up;
/// closes the connection once every sender is gone.
async fn write_frames<O>(mut rx: mpsc::Receiver<Frame>, mut outbound: O)
where
    O: Sink<Bytes, Error = io::Error> + Unpin,
{
    let mut enc = Encoder::new();
    let mut buf = BytesMut::new();
    while let Some(f) = rx.recv().await {
        let mut next = Some(f);
        while let Some(f) = next.take() {
            if let Err(e) = enc.encode(&f, &mut buf) {
                tracing::warn!(error = %e, "port-forward: cannot encode a frame");
                return;
            }
            if buf.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = outbound.send(buf.split().freeze()).await {
            tracing::debug!(error = %e, "port-forward: cannot write");
            return;
        }
    }
    let _ = outbound.close().await;
}

/// An empty DATA frame with FIN: this side sends no more on `stream`.
fn fin(stream: u32) -> Frame {
    Frame::Data {
        stream,
        flags: FLAG_FIN,
        data: Bytes::new(),
    }
}

/// The stream ids of a pair.
#[derive(Clone, Copy)]
struct Ids {
    error: u32,
    data: u32,
}

/// Forwards one connection: dials the pod, copies both ways, and ends the
/// error stream (with the failure's text, if any).
async fn forward(
    ids: Ids,
    port: Option<String>,
    from_client: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    out: mpsc::Sender<Frame>,
    t: &Target,
) {
    let r = async {
        let conn = match dial(port.as_deref(), t).await {
            Ok(c) => c,
            Err(e) => {
                // Nothing will come from the pod: its stream ends now.
                let _ = out.send(fin(ids.data)).await;
                return Err(e);
            }
        };
        copy(ids, conn, from_client, &out).await
    };
    let r = tokio::select! {
        r = r => r,
        _ = cancel.cancelled() => Ok(()),
    };
    if let Err(msg) = r {
        let msg = format!(
            "error forwarding port {} to pod {}, uid {}: {msg}",
            port.as_deref().unwrap_or(""),
            t.pod,
            t.uid
        );
        tracing::info!(error = %msg, "port-forward failed");
        let _ = out
            .send(Frame::Data {
                stream: ids.error,
                flags: 0,
                data: Bytes::from(msg),
            })
            .await;
    }
    let _ = out.send(fin(ids.error)).await;
}

/// Connects to the pod's `port`; Err is the text for the error stream.
async fn dial(port: Option<&str>, t: &Target) -> Result<TcpStream, String> {
    let port: u16 = match port.map(str::parse) {
        Some(Ok(p)) if p > 0 => p,
        Some(_) => return Err(format!("invalid port {:?}", port.unwrap_or(""))),
        None => return Err("no port given".into()),
    };
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((t.ip, port))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!(
            "failed to connect to {}:{port} in the pod's network: dial tcp {}:{port}: connect: {}",
            t.ip,
            t.ip,
            plain(&e)
        )),
        Err(_) => Err(format!(
            "failed to connect to {}:{port} in the pod's network: timed out after {DIAL_TIMEOUT:?}",
            t.ip
        )),
    }
}

/// An I/O error as Go words it (`connection refused`), without Rust's
/// `(os error N)`.
fn plain(e: &io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Copies until the pod closed its side (then FIN on the data stream)
/// and the client closed its own; Err is the text for the error stream.
async fn copy(
    ids: Ids,
    conn: TcpStream,
    mut from_client: mpsc::Receiver<Bytes>,
    out: &mpsc::Sender<Frame>,
) -> Result<(), String> {
    tracing::debug!("port-forward: connected");
    let (mut r, mut w) = conn.into_split();
    let up = async move {
        while let Some(b) = from_client.recv().await {
            w.write_all(&b)
                .await
                .map_err(|e| format!("error copying from the client to the pod: {e}"))?;
        }
        // The client sent FIN: so does the pod connection.
        let _ = w.shutdown().await;
        Ok::<(), String>(())
    };
    let down = async move {
        let mut b = vec![0u8; CHUNK];
        loop {
            let n = match r.read(&mut b).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = out.send(fin(ids.data)).await;
                    return Err(format!("error copying from the pod to the client: {e}"));
                }
            };
            let f = Frame::Data {
                stream: ids.data,
                flags: if n == 0 { FLAG_FIN } else { 0 },
                data: Bytes::copy_from_slice(&b[..n]),
            };
            if out.send(f).await.is_err() || n == 0 {
                return Ok::<(), String>(());
            }
        }
    };
    // As the kubelet: once the pod's side ended, the client has a moment
    // to finish its own (kubectl waits for the error stream to end before
    // it closes the local connection). A client that half-closed first
    // still gets all the pod sends.
    tokio::pin!(up, down);
    tokio::select! {
        u = &mut up => match u {
            Ok(()) => down.await,
            Err(e) => {
                let _ = tokio::time::timeout(GRACE, down).await;
                Err(e)
            }
        },
        d = &mut down => {
            let u = tokio::time::timeout(GRACE, up).await.unwrap_or(Ok(()));
            d.and(u)
        }
    }
}
