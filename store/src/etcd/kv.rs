//! etcd's KV service: range (linearizable through read-index unless
//! serializable), put, delete, txn and compact through Raft.

use keel_proto::etcdserverpb::kv_server::Kv;
use keel_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use keel_proto::keelraft::command::Op;
use keel_proto::keelraft::command_result::Result as R;
use tonic::{Request, Response, Status};

use super::{Etcd, check_size};
use crate::error::EtcdError;
use crate::mvcc::apply::{validate_put, validate_range, validate_txn};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

impl Etcd {
    /// Fills the cluster fields of a header the state machine set the revision of.
    fn stamp(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map(|h| h.revision).unwrap_or(0);
        *h = self.header(rev);
    }
}

fn unexpected() -> Status {
    EtcdError::Internal("unexpected result kind".into()).into()
}

#[tonic::async_trait]
impl Kv for Etcd {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        check_size(&req)?;
        validate_range(&req)?;
        if !req.serializable {
            self.node.read_barrier().await?;
        }
        let mut resp = self.node.kv.range(&req)?;
        self.stamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        check_size(&req)?;
        validate_put(&req)?;
        match self.node.write(Op::Put(req)).await?.result {
            Some(R::Put(mut r)) => {
                self.stamp(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        check_size(&req)?;
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        match self.node.write(Op::DeleteRange(req)).await?.result {
            Some(R::DeleteRange(mut r)) => {
                self.stamp(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        check_size(&req)?;
        validate_txn(&req, MAX_TXN_OPS)?;
        match self.node.write(Op::Txn(req)).await?.result {
            Some(R::Txn(mut r)) => {
                self.stamp(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        match self.node.write(Op::Compact(req)).await?.result {
            Some(R::Compact(mut r)) => {
                self.stamp(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }
}
