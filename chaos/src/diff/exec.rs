//! Sending one generated step to one cluster (etcd or Keel) through the
//! project's own etcd gRPC client types, and the answer it got: the
//! response, or the gRPC status code and message of the error.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{
    CompactionResponse, Compare, DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, PutResponse, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchRequest, WatchResponse, compare, request_op, watch_request,
};
use keel_proto::mvccpb::Event;
use tonic::transport::Channel;

use super::generator::{AUTO_LEASE_BASE, Step};

/// What a cluster answered to one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseKeepAlive(LeaseKeepAliveResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseLeases(LeaseLeasesResponse),
    Watch(WatchAnswer),
    Error { code: tonic::Code, message: String },
}

impl Answer {
    fn error(s: tonic::Status) -> Self {
        Answer::Error {
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// The revision in the answer's header, if it has one.
    pub fn revision(&self) -> Option<i64> {
        let h = match self {
            Answer::Range(r) => r.header.as_ref(),
            Answer::Put(r) => r.header.as_ref(),
            Answer::DeleteRange(r) => r.header.as_ref(),
            Answer::Txn(r) => r.header.as_ref(),
            Answer::Compact(r) => r.header.as_ref(),
            Answer::LeaseGrant(r) => r.header.as_ref(),
            Answer::LeaseRevoke(r) => r.header.as_ref(),
            _ => None,
        };
        h.map(|h| h.revision)
    }
}

/// What a watch delivered: its creation answer, every event of every
/// later response in order, and how it ended. How events were batched into
/// responses is not part of it (etcd and Keel batch differently).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchAnswer {
    pub created: Option<WatchResponse>,
    pub events: Vec<Event>,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    /// An error that ended the stream.
    pub error: Option<(tonic::Code, String)>,
}

/// One cluster: a channel to each member, and the IDs it gave to leases
/// granted with ID 0 (`AUTO_LEASE_BASE + k` stands for the `k`-th).
pub struct Target {
    pub name: &'static str,
    pub members: Vec<Channel>,
    pub leader: usize,
    pub autos: Vec<i64>,
    pub timeout: Duration,
}

impl Target {
    /// The real lease ID for an ID in a generated request.
    fn lease(&self, id: i64) -> i64 {
        if id >= AUTO_LEASE_BASE {
            let k = (id - AUTO_LEASE_BASE) as usize;
            // Never granted here (the run stops at the first difference,
            // so this is the same on both sides): an ID no grant picks.
            self.autos.get(k).copied().unwrap_or(id)
        } else {
            id
        }
    }

    /// `step` with every placeholder lease ID replaced by this cluster's.
    pub fn concrete(&self, step: &Step) -> Step {
        let mut s = step.clone();
        match &mut s {
            Step::Put(p) => p.lease = self.lease(p.lease),
            Step::Txn(t) => self.txn_leases(t),
            Step::LeaseRevoke(r) => r.id = self.lease(r.id),
            Step::LeaseKeepAlive(r) => r.id = self.lease(r.id),
            Step::LeaseTimeToLive(r) => r.id = self.lease(r.id),
            _ => {}
        }
        s
    }

    fn txn_leases(&self, t: &mut TxnRequest) {
        for c in &mut t.compare {
            self.compare_lease(c);
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            self.op_leases(op);
        }
    }

    fn compare_lease(&self, c: &mut Compare) {
        if let Some(compare::TargetUnion::Lease(l)) = &mut c.target_union {
            *l = self.lease(*l);
        }
    }

    fn op_leases(&self, op: &mut RequestOp) {
        match &mut op.request {
            Some(request_op::Request::RequestPut(p)) => p.lease = self.lease(p.lease),
            Some(request_op::Request::RequestTxn(t)) => self.txn_leases(t),
            _ => {}
        }
    }

    fn kv(&self, member: usize) -> KvClient<Channel> {
        KvClient::new(self.members[member].clone())
    }

    fn leases(&self, member: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.members[member].clone())
    }

    /// Sends `step` (not a watch) to `member` and returns the answer.
    pub async fn exec(&self, step: &Step, member: usize) -> Answer {
        let step = self.concrete(step);
        let member = match &step {
            // A serializable read is only deterministic on the leader: a
            // follower may not have applied the last write yet. LeaseLeases
            // is served from the member's own state in etcd, so the same.
            Step::Range(r) if r.serializable => self.leader,
            Step::LeaseLeases(_) => self.leader,
            _ => member,
        };
        let fut = async {
            match step {
                Step::Range(r) => self
                    .kv(member)
                    .range(r)
                    .await
                    .map(|r| Answer::Range(r.into_inner())),
                Step::Put(r) => self
                    .kv(member)
                    .put(r)
                    .await
                    .map(|r| Answer::Put(r.into_inner())),
                Step::DeleteRange(r) => self
                    .kv(member)
                    .delete_range(r)
                    .await
                    .map(|r| Answer::DeleteRange(r.into_inner())),
                Step::Txn(r) => self
                    .kv(member)
                    .txn(r)
                    .await
                    .map(|r| Answer::Txn(r.into_inner())),
                Step::Compact(r) => self
                    .kv(member)
                    .compact(r)
                    .await
                    .map(|r| Answer::Compact(r.into_inner())),
                Step::LeaseGrant(r) => self
                    .leases(member)
                    .lease_grant(r)
                    .await
                    .map(|r| Answer::LeaseGrant(r.into_inner())),
                Step::LeaseRevoke(r) => self
                    .leases(member)
                    .lease_revoke(r)
                    .await
                    .map(|r| Answer::LeaseRevoke(r.into_inner())),
                Step::LeaseTimeToLive(r) => self
                    .leases(member)
                    .lease_time_to_live(r)
                    .await
                    .map(|r| Answer::LeaseTimeToLive(r.into_inner())),
                Step::LeaseLeases(r) => self
                    .leases(member)
                    .lease_leases(r)
                    .await
                    .map(|r| Answer::LeaseLeases(r.into_inner())),
                Step::LeaseKeepAlive(r) => {
                    // One keep-alive on a stream of its own; the stream
                    // stays open until the answer arrives.
                    let req = futures::stream::iter(vec![r]).chain(futures::stream::pending());
                    match self.leases(member).lease_keep_alive(req).await {
                        Err(e) => Err(e),
                        Ok(resp) => match resp.into_inner().next().await {
                            Some(Ok(r)) => Ok(Answer::LeaseKeepAlive(r)),
                            Some(Err(e)) => Err(e),
                            None => Err(tonic::Status::unknown("keep-alive stream ended")),
                        },
                    }
                }
                Step::Watch { .. } => {
                    Err(tonic::Status::internal("a watch is not a single request"))
                }
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => Answer::error(e),
            Err(_) => Answer::Error {
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {:?}", self.timeout),
            },
        }
    }

    /// Opens a watch on `member` and waits for its creation answer.
    ///
    /// A watch is served from the member's own applied state, so a follower
    /// that has not yet applied the last acknowledged compaction answers an
    /// old start revision with the previous compact revision (etcd does the
    /// same; it is only a race). A linearizable read on that member first is
    /// a barrier on both sides: it returns only once the member has applied
    /// everything committed before it.
    pub async fn open_watch(&self, create: &WatchCreateRequest, member: usize) -> OpenWatch {
        let barrier = RangeRequest {
            key: b"/".to_vec(),
            count_only: true,
            ..Default::default()
        };
        let _ = tokio::time::timeout(self.timeout, self.kv(member).range(barrier)).await;
        let (mut tx, rx) = futures::channel::mpsc::channel::<WatchRequest>(4);
        let mut w = OpenWatch {
            tx: tx.clone(),
            rx: None,
            answer: WatchAnswer::default(),
        };
        let _ = tx
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create.clone())),
            })
            .await;
        let open = async {
            let mut s = WatchClient::new(self.members[member].clone())
                .watch(rx)
                .await?
                .into_inner();
            let first = s.message().await?;
            Ok::<_, tonic::Status>((s, first))
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(Ok((s, first))) => {
                w.rx = Some(s);
                match first {
                    Some(r) => w.take(r, true),
                    None => w.answer.error = Some((tonic::Code::Unknown, "stream ended".into())),
                }
            }
            Ok(Err(e)) => w.answer.error = Some((e.code(), e.message().to_string())),
            Err(_) => {
                w.answer.error = Some((tonic::Code::DeadlineExceeded, "no creation answer".into()))
            }
        }
        w
    }
}

/// A watch being collected.
pub struct OpenWatch {
    tx: futures::channel::mpsc::Sender<WatchRequest>,
    rx: Option<tonic::Streaming<WatchResponse>>,
    pub answer: WatchAnswer,
}

impl OpenWatch {
    fn take(&mut self, mut r: WatchResponse, first: bool) {
        let a = &mut self.answer;
        a.events.append(&mut r.events);
        a.canceled |= r.canceled;
        if r.compact_revision != 0 {
            a.compact_revision = r.compact_revision;
        }
        if !r.cancel_reason.is_empty() {
            a.cancel_reason = r.cancel_reason.clone();
        }
        if first {
            a.created = Some(r);
        }
    }

    /// The revision of the last event collected.
    fn last_revision(&self) -> i64 {
        self.answer
            .events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            .unwrap_or(0)
    }

    /// Reads responses until an event at `until` or later arrived, the
    /// watch ended, or nothing came for `quiet` (events a filter dropped
    /// never come; a watch that reached `until` may still get more).
    pub async fn collect(&mut self, until: i64, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        while self.answer.error.is_none() && !self.answer.canceled {
            if until > 0 && self.last_revision() >= until {
                // Anything else at the same revision is in the same response.
                return;
            }
            let Some(rx) = self.rx.as_mut() else { return };
            let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, rx.message()).await {
                Err(_) => return,
                Ok(Ok(Some(r))) => self.take(r, false),
                Ok(Ok(None)) => {
                    self.answer.error = Some((tonic::Code::Unknown, "stream ended".into()))
                }
                Ok(Err(e)) => self.answer.error = Some((e.code(), e.message().to_string())),
            }
        }
    }

    /// Cancels the watch (best effort) and drops the stream.
    pub async fn close(mut self) {
        let id = self
            .answer
            .created
            .as_ref()
            .map(|c| c.watch_id)
            .unwrap_or(0);
        let _ = self
            .tx
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CancelRequest(
                    WatchCancelRequest { watch_id: id },
                )),
            })
            .await;
    }
}
