//! etcd's Lease service. Grants and revocations go through Raft; keep-alives
//! and time-to-live are answered by the leader, which alone tracks deadlines.

use futures::StreamExt;
use keel_proto::etcdserverpb::lease_server::Lease;
use keel_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_proto::keelraft::command::Op;
use keel_proto::keelraft::command_result::Result as R;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Etcd;
use crate::error::EtcdError;
use crate::node::{LeaderRequest, LeaderResponse};
use crate::peer::BoxStream;

/// etcd's maximum lease TTL (`MaxLeaseTTL`, 9,000,000,000 seconds).
const MAX_TTL: i64 = 9_000_000_000;

/// etcd's `ErrGRPCLeaseTTLTooLarge`: out of range, not invalid.
fn ttl_too_large() -> Status {
    Status::out_of_range("etcdserver: too large lease TTL")
}

impl Etcd {
    async fn ttl(&self, req: LeaderRequest) -> Result<(i64, i64), EtcdError> {
        match self.node.leader_call(req).await? {
            LeaderResponse::Ttl(left, granted) => Ok((left, granted)),
            other => Err(EtcdError::Internal(format!("unexpected answer {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Lease for Etcd {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = req.into_inner();
        if req.ttl <= 0 {
            return Err(EtcdError::InvalidArgument("lease TTL must be positive".into()).into());
        }
        if req.ttl > MAX_TTL {
            return Err(ttl_too_large());
        }
        if req.id < 0 {
            return Err(EtcdError::InvalidArgument("lease ID must be positive".into()).into());
        }
        if req.id == 0 {
            // Chosen here, before proposing, so every member applies the same id.
            req.id = (rand::random::<u64>() >> 1).max(1) as i64;
        }
        match self.node.write(Op::LeaseGrant(req)).await?.result {
            Some(R::LeaseGrant(mut r)) => {
                r.header = self.header(r.header.map(|h| h.revision).unwrap_or(0));
                Ok(Response::new(r))
            }
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        match self
            .node
            .write(Op::LeaseRevoke(req.into_inner()))
            .await?
            .result
        {
            Some(R::LeaseRevoke(mut r)) => {
                r.header = self.header(r.header.map(|h| h.revision).unwrap_or(0));
                Ok(Response::new(r))
            }
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let svc = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let resp = match svc.ttl(LeaderRequest::KeepAlive(r.id)).await {
                    Ok((ttl, _)) => Ok(LeaseKeepAliveResponse {
                        header: svc.header(0),
                        id: r.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let (left, granted) = self.ttl(LeaderRequest::TimeToLive(req.id)).await?;
        let keys = if req.keys && left >= 0 {
            // The TTL came from the leader; the keys come from this
            // member's state, so first let it apply everything committed
            // (a follower may not have applied the put that attached a key).
            self.node.read_barrier().await?;
            self.node
                .kv
                .lease(req.id)
                .map(|(_, k)| k)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(0),
            id: req.id,
            ttl: left,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.read_barrier().await?;
        let leases = self
            .node
            .kv
            .leases()
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(0),
            leases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_large_ttl_is_out_of_range_with_etcds_message() {
        let s = ttl_too_large();
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: too large lease TTL");
    }
}
