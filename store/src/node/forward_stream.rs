//! Forwarded leader requests over one long-lived stream per leader: a
//! follower queues each request it forwards, a task sends everything queued
//! in one message, and answers come back batched the same way, matched by
//! id. Under load this replaces one unary gRPC call per forwarded write
//! (HTTP/2 headers, a stream and a task each side) with a share of one
//! message, which is most of what forwarding cost. This module owns the
//! queue and the batches; the wire is a framed peer connection
//! (`forward_framed`, the default) or, for benchmarks, a gRPC stream
//! (`RaftService.LeaderStream`, [`run_grpc`] and [`serve`] here).
//!
//! Failure semantics match the unary call: a request the stream never sent
//! fails as `Unavailable` (safe to retry); one in flight when the stream
//! breaks fails as `Unknown` (the write may have been applied).
//!
//! The leader's side (`serve`) runs the forwarded requests inside the answer
//! stream itself, which the gRPC server polls: no task per request and no
//! channel between them, so an answer reaches the wire with one task
//! hand-off fewer each way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use keel_proto::keelraft::RaftPayload;
use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::{LeaderError, LeaderRequest, LeaderResponse, Node};
use crate::raft::codec;

/// The leader's answer to one forwarded request.
pub type Answer = Result<LeaderResponse, LeaderError>;
/// A batch on the wire towards the leader: (id, request) pairs.
pub type RequestBatch = Vec<(u64, LeaderRequest)>;
/// A batch on the wire back: (id, answer) pairs.
pub type AnswerBatch = Vec<(u64, Answer)>;

/// The requests sent and not answered yet, by id.
pub(super) type Inflight = HashMap<u64, oneshot::Sender<Result<Answer, Status>>>;

/// How long a forwarded request may wait for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A request waiting for its batch.
pub(super) struct Queued {
    req: LeaderRequest,
    reply: oneshot::Sender<Result<Answer, Status>>,
}

/// The sending side of one leader's stream; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Forwarder {
    /// Starts `wire`, the task that owns the stream to one leader and
    /// takes the requests queued here.
    pub(super) fn start<F, Fut>(wire: F) -> Self
    where
        F: FnOnce(mpsc::UnboundedReceiver<Queued>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(wire(rx));
        Forwarder { tx }
    }

    /// Whether the stream task is still there to take requests.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Sends `req` to the leader and waits for its answer.
    pub async fn call(&self, req: LeaderRequest) -> Result<Answer, Status> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Queued { req, reply })
            .map_err(|_| Status::unavailable("the forwarding stream has stopped"))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Status::unknown(
                "the forwarding stream ended with the request in flight",
            )),
            Err(_) => Err(Status::deadline_exceeded("the leader did not answer")),
        }
    }
}

/// Takes everything queued now (at least `first`), registers it in flight
/// and encodes it as one message.
pub(super) fn take_batch(
    first: Queued,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    next_id: &mut u64,
    inflight: &mut Inflight,
) -> Vec<u8> {
    let mut batch: RequestBatch = Vec::new();
    let mut q = Some(first);
    while let Some(Queued { req, reply }) = q {
        *next_id += 1;
        inflight.insert(*next_id, reply);
        batch.push((*next_id, req));
        q = rx.try_recv().ok();
    }
    codec::encode(&batch)
}

/// Decodes a batch of answers and hands each to the request waiting for
/// it; an undecodable batch is an error (the caller gives the stream up).
pub(super) fn deliver(data: &[u8], inflight: &mut Inflight) -> Result<(), String> {
    for (id, answer) in codec::decode::<AnswerBatch>(data)? {
        if let Some(reply) = inflight.remove(&id) {
            let _ = reply.send(Ok(answer));
        }
    }
    Ok(())
}

/// The requests a leader serves for one follower's stream, each with its id.
pub(super) type Serving = FuturesUnordered<BoxFuture<'static, (u64, Answer)>>;

/// Starts serving a decoded batch of forwarded requests on `node` (only if
/// it leads; never forwarded again).
pub(super) fn serve_batch(batch: RequestBatch, node: &Arc<Node>, serving: &mut Serving) {
    for (id, r) in batch {
        let node = node.clone();
        serving.push(async move { (id, node.serve_leader(r).await) }.boxed());
    }
}

/// `first` and every other answer ready now, encoded as one batch.
pub(super) fn ready_answers(first: (u64, Answer), serving: &mut Serving) -> Vec<u8> {
    let mut batch: AnswerBatch = vec![first];
    while let Some(Some(a)) = serving.next().now_or_never() {
        batch.push(a);
    }
    codec::encode(&batch)
}

/// Fails every request in flight with `status`.
pub(super) fn fail_all(inflight: &mut Inflight, status: impl Fn() -> Status) {
    for (_, reply) in inflight.drain() {
        let _ = reply.send(Err(status()));
    }
}

/// Owns a gRPC stream: opens it when there is something to send, sends
/// batches, matches answers, and starts over after a failure.
pub(super) async fn run_grpc(
    mut client: RaftServiceClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut next_id = 0u64;
    let mut inflight = HashMap::new();
    // Idle forwarders hold no stream: wait for the first request.
    while let Some(first) = rx.recv().await {
        let (out, out_rx) = mpsc::channel::<RaftPayload>(256);
        let data = take_batch(first, &mut rx, &mut next_id, &mut inflight);
        let _ = out.try_send(RaftPayload { data });
        let mut answers = match client
            .leader_stream(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // The stream never opened: nothing reached the leader.
                let msg = s.message().to_string();
                fail_all(&mut inflight, || Status::unavailable(msg.clone()));
                continue;
            }
        };
        loop {
            tokio::select! {
                q = rx.recv() => {
                    let Some(q) = q else { return };
                    let data = take_batch(q, &mut rx, &mut next_id, &mut inflight);
                    if out.send(RaftPayload { data }).await.is_err() {
                        fail_all(&mut inflight, || Status::unknown("the forwarding stream broke"));
                        break;
                    }
                }
                m = answers.message() => match m {
                    Ok(Some(p)) => match deliver(&p.data, &mut inflight) {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable answers from the leader");
                            fail_all(&mut inflight, || Status::unknown("undecodable answer"));
                            break;
                        }
                    },
                    Ok(None) | Err(_) => {
                        fail_all(&mut inflight, || Status::unknown("the forwarding stream broke"));
                        break;
                    }
                },
            }
        }
    }
}

/// The leader's side of one follower's gRPC stream: serves every forwarded
/// request (only if this member leads; never forwarded again) and yields
/// every answer ready at once as one message. The requests run inside this
/// stream, polled by the gRPC server; it ends once the follower has closed
/// its side and every answer is out, and dropping it (the follower went
/// away) drops the requests still waiting, as a lost answer would.
pub fn serve(
    inbound: Streaming<RaftPayload>,
    node: Arc<Node>,
) -> impl Stream<Item = Result<RaftPayload, Status>> + Send + 'static {
    let state = (Some(inbound), Serving::new(), node);
    futures::stream::unfold(state, |(mut inbound, mut serving, node)| async move {
        loop {
            tokio::select! {
                // Cancel-safe: `Streaming` keeps a partly read message.
                m = async { inbound.as_mut()?.message().await.ok().flatten() },
                    if inbound.is_some() =>
                {
                    let batch = m.and_then(|p| match codec::decode::<RequestBatch>(&p.data) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable forwarded batch; closing the stream");
                            None
                        }
                    });
                    let Some(batch) = batch else {
                        inbound = None;
                        continue;
                    };
                    serve_batch(batch, &node, &mut serving);
                }
                Some(first) = serving.next(), if !serving.is_empty() => {
                    let msg = RaftPayload {
                        data: ready_answers(first, &mut serving),
                    };
                    return Some((Ok(msg), (inbound, serving, node)));
                }
                else => return None,
            }
        }
    })
}
