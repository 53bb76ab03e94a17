//! Forwarded leader requests over a framed peer connection (`raft::framed`'s
//! wire, told apart from replication by [`MAGIC`]) instead of a gRPC stream:
//! the follower's forwarding task writes each batch straight to the socket
//! and reads the answers straight from it, and the leader's connection task
//! reads the batches, serves them and writes the answers. The gRPC stream
//! (`forward_stream::run_grpc`) put an HTTP/2 connection task on each side
//! between those tasks and the socket: two thread hand-offs each way per
//! forwarded batch, which on a small VM cost about as much as the network
//! (BENCHMARKS.md, fifteenth round).
//!
//! Wire, after [`MAGIC`]: frames as in `raft::framed` (a 4-byte big-endian
//! length, then that many bytes). The follower sends `codec`-encoded
//! `RequestBatch`es, the leader `codec`-encoded `AnswerBatch`es, in any
//! order (answers are matched by id). A zero-length frame is a ping, which
//! the leader answers with one: a follower with requests in flight pings a
//! quiet leader, and gives the connection up when even pings go unanswered
//! (a paused leader, a partition that keeps the socket open), as HTTP/2
//! keep-alive did for the gRPC stream.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tonic::Status;

use super::Node;
use super::forward_stream::{
    Inflight, Queued, RequestBatch, Serving, deliver, fail_all, ready_answers, serve_batch,
    take_batch,
};
use crate::raft::codec;
use crate::raft::framed::{self, Io};
use crate::raft::network::PEER_MESSAGE_LIMIT;

/// What a framed forwarding connection starts with (after TLS, if any).
/// Like `framed::MAGIC`, its first byte cannot start an HTTP/2 preface.
pub const MAGIC: &[u8; 8] = b"\0keelfw1";

/// With requests in flight and nothing heard for this long, ping.
const PING_AFTER: Duration = Duration::from_secs(1);
/// With requests in flight and nothing heard (not even a ping's answer)
/// for this long, give the connection up.
const DEAD_AFTER: Duration = Duration::from_secs(5);

/// Reads frames: cancel-safe, so a read can race the queue in `select!`.
fn frames<R: tokio::io::AsyncRead>(r: R) -> FramedRead<R, LengthDelimitedCodec> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(PEER_MESSAGE_LIMIT)
        .new_codec();
    FramedRead::new(r, codec)
}

/// Owns the follower's side: connects when there is something to send,
/// sends batches, matches answers, and starts over after a failure.
pub(super) async fn run(
    addr: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut next_id = 0u64;
    let mut inflight = Inflight::new();
    // Idle forwarders hold no connection: wait for the first request.
    while let Some(first) = rx.recv().await {
        let batch = take_batch(first, &mut rx, &mut next_id, &mut inflight);
        // Bounded: a paused leader accepts (the kernel does) but never
        // finishes a TLS handshake.
        let dialed = framed::connect(&addr, tls.clone(), MAGIC);
        let (r, mut w) = match tokio::time::timeout(DEAD_AFTER, dialed).await {
            Ok(Ok(halves)) => halves,
            Err(_) => {
                fail_all(&mut inflight, || {
                    Status::unavailable("the leader's peer port did not answer")
                });
                continue;
            }
            Ok(Err(e)) => {
                // Nothing reached the leader.
                let msg = e.to_string();
                fail_all(&mut inflight, || Status::unavailable(msg.clone()));
                continue;
            }
        };
        if let Err(e) = send(&mut w, &batch).await {
            broke(&mut inflight, e);
            continue;
        }
        let mut answers = frames(r);
        // When the leader was last heard from, and whether it has been
        // pinged since; only a connection with requests in flight is watched.
        let mut heard = Instant::now();
        let mut pinged = false;
        loop {
            let check = heard + if pinged { DEAD_AFTER } else { PING_AFTER };
            tokio::select! {
                q = rx.recv() => {
                    let Some(q) = q else { return };
                    if inflight.is_empty() {
                        (heard, pinged) = (Instant::now(), false);
                    }
                    let batch = take_batch(q, &mut rx, &mut next_id, &mut inflight);
                    if let Err(e) = send(&mut w, &batch).await {
                        broke(&mut inflight, e);
                        break;
                    }
                }
                f = answers.next() => {
                    (heard, pinged) = (Instant::now(), false);
                    let delivered = match f {
                        Some(Ok(f)) if f.is_empty() => continue,
                        Some(Ok(f)) => deliver(&f, &mut inflight),
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err("the leader closed the connection".into()),
                    };
                    if let Err(e) = delivered {
                        broke(&mut inflight, e);
                        break;
                    }
                }
                _ = tokio::time::sleep_until(check), if !inflight.is_empty() => {
                    if pinged {
                        broke(&mut inflight, "the leader stopped answering");
                        break;
                    }
                    pinged = true;
                    if let Err(e) = send(&mut w, &[]).await {
                        broke(&mut inflight, e);
                        break;
                    }
                }
            }
        }
    }
}

/// Gives the connection up: every request in flight fails as `Unknown`,
/// since the leader may have served it.
fn broke(inflight: &mut Inflight, why: impl std::fmt::Display) {
    tracing::debug!(%why, "forwarding connection given up");
    let msg = format!("the forwarding connection broke: {why}");
    fail_all(inflight, || Status::unknown(msg.clone()));
}

/// Writes one frame and flushes it.
async fn send<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    framed::write_frame(w, payload).await?;
    w.flush().await
}

/// Serves one framed forwarding connection on the leader (after its
/// [`MAGIC`]): serves every forwarded request (only while this member
/// leads; never forwarded again) inside this task, and writes every answer
/// ready at once as one frame. Returns when the follower closes the
/// connection or sends what cannot be decoded; the requests still being
/// served are then dropped, as a lost answer would be.
pub async fn serve<I: Io>(io: I, node: Arc<Node>) -> io::Result<()> {
    let (r, w) = tokio::io::split(io);
    let mut w = BufWriter::new(w);
    let mut requests = frames(r);
    let mut serving = Serving::new();
    loop {
        tokio::select! {
            f = requests.next() => {
                let f = match f {
                    Some(f) => f?,
                    None => return Ok(()),
                };
                if f.is_empty() {
                    send(&mut w, &[]).await?;
                    continue;
                }
                let batch = codec::decode::<RequestBatch>(&f)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                serve_batch(batch, &node, &mut serving);
            }
            Some(first) = serving.next(), if !serving.is_empty() => {
                send(&mut w, &ready_answers(first, &mut serving)).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::sync::oneshot;

    use super::super::forward_stream::Forwarder;
    use super::*;
    use crate::node::LeaderRequest;

    /// A leader that takes the connection and then goes silent (paused, or
    /// cut off by a partition that keeps the socket open) is pinged, then
    /// given up: the request in flight fails as `Unknown` (it may have been
    /// served) within `DEAD_AFTER` of the last word, not at the 60-second
    /// answer timeout.
    #[tokio::test]
    async fn a_silent_leader_is_pinged_then_given_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen_tx, seen) = oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut magic = [0u8; MAGIC.len()];
            s.read_exact(&mut magic).await.unwrap();
            let mut frames = frames(s);
            let batch = frames.next().await.unwrap().unwrap();
            let ping = frames.next().await.unwrap().unwrap();
            let _ = seen_tx.send((magic, batch.len(), ping.len()));
            // Silent from here on, with the connection open.
            std::future::pending::<()>().await;
        });
        let f = Forwarder::start(|rx| run(addr, None, rx));
        let t = Instant::now();
        let err = f
            .call(LeaderRequest::TimeToLive(1))
            .await
            .expect_err("a silent leader gives no answer");
        assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
        let waited = t.elapsed();
        assert!(
            waited >= DEAD_AFTER && waited < DEAD_AFTER * 3,
            "given up after {waited:?}"
        );
        let (magic, batch, ping) = seen.await.unwrap();
        assert_eq!(&magic, MAGIC);
        assert!(batch > 0, "the request went out as a frame");
        assert_eq!(ping, 0, "the next frame was a ping");
    }

    /// A leader's peer port that refuses the connection fails what was
    /// queued as `Unavailable`: nothing reached it, so a retry is safe.
    #[tokio::test]
    async fn a_refused_connection_fails_as_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let f = Forwarder::start(|rx| run(addr, None, rx));
        let err = f.call(LeaderRequest::TimeToLive(1)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(f.is_alive(), "the forwarder stays for the next request");
    }
}
