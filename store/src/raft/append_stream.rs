//! Pipelined AppendEntries towards one peer: openraft's request stream goes
//! out on one long-lived connection ([`Wire`]: a framed TCP/TLS stream,
//! `raft::framed`, or a gRPC bidirectional stream, `StreamAppend`), and the
//! follower's answers come back in order on the same connection. The leader
//! sends the next batch of entries as soon as it has them, without waiting
//! for the answer to the previous one (openraft's `LogsSince` replication
//! keeps up to the whole unacknowledged suffix in flight). This module owns
//! what both wires share: which requests are in flight, how long an answer
//! may take, and which answers are too old to count.
//!
//! A follower answers each request only after the entries are fsynced in its
//! log (`raft::log_store`), so an answer here still means "durable there".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use keel_proto::keelraft::RaftPayload;
use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use openraft::error::{NetworkError, RPCError, Unreachable};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tonic::transport::Channel;

use crate::raft::types::TypeConfig;
use crate::raft::{codec, framed};
use crate::stages::{Stage, Stages};

type C = TypeConfig;

/// What one peer's stream yields: each request's result, in request order.
pub type Answers = openraft::base::BoxStream<'static, Result<StreamAppendResult<C>, RPCError<C>>>;

/// How long the oldest unanswered request may wait for its answer before
/// the stream is given up (openraft then backs off and opens a new one), as
/// a multiple of the RPC time-to-live openraft gives (the heartbeat
/// interval). Generous: a follower's fsync can stall for tens of
/// milliseconds under load, and a restarted stream resends what was in
/// flight.
const ANSWER_WAIT_TTLS: u32 = 10;

/// The time limits of one stream.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The RPC time-to-live openraft gives (the heartbeat interval).
    pub ttl: Duration,
    /// An answer to a request sent longer ago than this ends the stream
    /// (an error, so openraft opens a new one) instead of being delivered.
    ///
    /// Why: openraft 0.10.0-alpha.37 credits an answer to the *newest*
    /// request it covers (`InflightAppendQueue::drain_acked` returns the
    /// sending time of the last request with `last_log_id <= matching`). A
    /// leader paused for seconds (SIGSTOP in the chaos harness) found its
    /// followers' answers to requests sent before the pause waiting in the
    /// socket, sent fresh requests over the same log ids on resuming, and
    /// had the old answers credited to them: a quorum "confirmed" its
    /// leadership after it had been replaced, and it served a stale
    /// linearizable read (chaos run, seed 42, 2026-12-04). An answer
    /// younger than this bound cannot mislead that way: it is set below the
    /// minimum election timeout, within which a follower that acknowledged
    /// this leader votes for no one else.
    pub stale_answer: Duration,
}

/// The follower's answers as they arrive, whichever the wire.
type Inbound = futures::stream::BoxStream<'static, Result<Vec<u8>, String>>;

/// Requests sent and not answered yet: when each was sent and its entries.
type InFlight = Arc<Mutex<VecDeque<(Instant, u64)>>>;

fn in_flight(f: &InFlight) -> std::sync::MutexGuard<'_, VecDeque<(Instant, u64)>> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the stream reaches the follower.
pub enum Wire {
    /// A framed connection to the peer port (`raft::framed`), with mutual
    /// TLS when a client configuration (ALPN `framed::ALPN`) is given; the
    /// connection kept from the peer client's last stream, if any.
    Framed(Option<Arc<rustls::ClientConfig>>, framed::Idle),
    /// Benchmark only: the gRPC `StreamAppend` call over HTTP/2.
    Grpc(RaftServiceClient<Channel>),
}

/// Opens the stream to `target` at `addr` and returns its answers.
pub async fn open<S>(
    wire: Wire,
    (target, addr): (u64, String),
    input: S,
    limits: Limits,
    stages: Stages,
) -> Result<Answers, RPCError<C>>
where
    S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
{
    let sent = InFlight::default();
    let marks = sent.clone();
    let requests = input.map(move |rpc| {
        in_flight(&marks).push_back((Instant::now(), rpc.entries.len() as u64));
        codec::encode(&rpc)
    });
    // Connecting (and, over gRPC, the follower's headers) takes a moment
    // when the peer is up; a peer that does not answer at all is given `ttl`.
    let ttl = limits.ttl;
    let dial = addr.clone();
    let unreachable = move |why: String| {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "peer {target} ({addr}): {why}"
        )))
    };
    let opened = tokio::time::timeout(ttl, async move {
        match wire {
            Wire::Framed(tls, idle) => framed::open(&dial, tls, &idle, requests)
                .await
                .map(|f| f.map(|r| r.map_err(|e| e.to_string())).boxed())
                .map_err(|e| e.to_string()),
            Wire::Grpc(mut client) => {
                let requests = requests.map(|data| RaftPayload { data });
                match client.stream_append(requests).await {
                    Ok(r) => Ok(r
                        .into_inner()
                        .map(|m| m.map(|p| p.data).map_err(|s| s.message().to_string()))
                        .boxed()),
                    Err(status) => Err(status.message().to_string()),
                }
            }
        }
    });
    let inbound: Inbound = match opened.await {
        Err(_) => return Err(unreachable(format!("no answer within {ttl:?}"))),
        Ok(Err(e)) => return Err(unreachable(e)),
        Ok(Ok(inbound)) => inbound,
    };
    let wait = ttl * ANSWER_WAIT_TTLS;
    let state = (inbound, sent, stages, unreachable);
    let answers = futures::stream::unfold(Some(state), move |state| async move {
        let (mut inbound, sent, stages, unreachable) = state?;
        let message = loop {
            match tokio::time::timeout(wait, inbound.next()).await {
                Ok(m) => break m,
                // Idle (nothing in flight) is fine; an answer overdue is not.
                Err(_) => {
                    let oldest = in_flight(&sent).front().map(|(t, _)| t.elapsed());
                    if oldest.is_some_and(|age| age >= wait) {
                        let e = unreachable(format!("no answer within {wait:?}"));
                        return Some((Err(e), None));
                    }
                }
            }
        };
        let payload = match message {
            Some(Ok(p)) => p,
            None => return None,
            Some(Err(e)) => return Some((Err(unreachable(e)), None)),
        };
        if let Some((started, entries)) = in_flight(&sent).pop_front() {
            let age = started.elapsed();
            if age >= limits.stale_answer {
                let e = unreachable(format!(
                    "answer to a request sent {age:?} ago: too old to count, restarting the stream"
                ));
                return Some((Err(e), None));
            }
            if entries > 0 {
                stages.record(Stage::Replicate, started, entries);
            }
        }
        match codec::decode::<StreamAppendResult<C>>(&payload) {
            Ok(r) => Some((Ok(r), Some((inbound, sent, stages, unreachable)))),
            Err(e) => {
                let e = RPCError::Network(NetworkError::from_string(e));
                Some((Err(e), None))
            }
        }
    });
    Ok(Box::pin(answers))
}
