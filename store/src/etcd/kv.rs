//! etcd's KV service: range (linearizable through read-index unless
//! serializable), put, delete, txn and compact through Raft.

use keel_proto::etcdserverpb::kv_server::Kv;
use keel_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse, request_op,
    response_op,
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

/// etcd's per-operation checks of a Txn (`checkTxnRequest`), in its order:
/// the compares' keys, every operation of the success branch, then of the
/// failure branch, nested Txns depth first; before any check of the Txn as
/// a whole.
fn check_txn_ops(t: &TxnRequest) -> Result<(), Status> {
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey.into());
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(EtcdError::EmptyKey.into());
            }
            Some(request_op::Request::RequestPut(p)) => validate_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(EtcdError::EmptyKey.into());
            }
            Some(request_op::Request::RequestTxn(inner)) => check_txn_ops(inner)?,
            _ => {}
        }
    }
    Ok(())
}

/// etcd answers a Txn nested in a Txn with an empty header (revision 0):
/// only the outermost response carries the revision.
fn clear_nested_txn_headers(t: &mut TxnResponse) {
    for op in &mut t.responses {
        if let Some(response_op::Response::ResponseTxn(inner)) = &mut op.response {
            inner.header = Some(ResponseHeader::default());
            clear_nested_txn_headers(inner);
        }
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
        if req
            .compare
            .len()
            .max(req.success.len())
            .max(req.failure.len())
            <= MAX_TXN_OPS
        {
            check_txn_ops(&req)?;
        }
        validate_txn(&req, MAX_TXN_OPS)?;
        match self.node.write(Op::Txn(req)).await?.result {
            Some(R::Txn(mut r)) => {
                self.stamp(&mut r.header);
                clear_nested_txn_headers(&mut r);
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::ResponseOp;

    fn txn(rev: i64, inner: Vec<TxnResponse>) -> TxnResponse {
        TxnResponse {
            header: Some(ResponseHeader {
                revision: rev,
                ..Default::default()
            }),
            responses: inner
                .into_iter()
                .map(|t| ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(t)),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn put(value: &[u8], lease: i64, ignore_value: bool, ignore_lease: bool) -> PutRequest {
        PutRequest {
            key: b"k".to_vec(),
            value: value.to_vec(),
            lease,
            ignore_value,
            ignore_lease,
            ..Default::default()
        }
    }

    fn msg(r: Result<(), Status>) -> String {
        r.err().map(|s| s.message().to_string()).unwrap_or_default()
    }

    fn check_put(p: &PutRequest) -> Result<(), Status> {
        validate_put(p).map_err(Status::from)
    }

    #[test]
    fn puts_etcd_refuses_before_proposing_are_refused_with_its_messages() {
        assert_eq!(
            msg(check_put(&put(b"v", 0, true, false))),
            "etcdserver: value is provided"
        );
        assert_eq!(
            msg(check_put(&put(b"", 5, false, true))),
            "etcdserver: lease is provided"
        );
        assert_eq!(msg(check_put(&put(b"", 0, true, true))), "");
        assert_eq!(msg(check_put(&put(b"v", 5, false, false))), "");
        // Inside a Txn too, nested ones included, failure branch included.
        let nested = TxnRequest {
            failure: vec![keel_proto::etcdserverpb::RequestOp {
                request: Some(request_op::Request::RequestPut(put(b"v", 0, true, false))),
            }],
            ..Default::default()
        };
        let t = TxnRequest {
            success: vec![keel_proto::etcdserverpb::RequestOp {
                request: Some(request_op::Request::RequestTxn(nested)),
            }],
            ..Default::default()
        };
        assert_eq!(msg(check_txn_ops(&t)), "etcdserver: value is provided");
        // A compare without a key in a nested Txn of the success branch
        // comes before a bad put of the failure branch.
        let bad_compare = TxnRequest {
            compare: vec![keel_proto::etcdserverpb::Compare::default()],
            ..Default::default()
        };
        let t = TxnRequest {
            success: vec![keel_proto::etcdserverpb::RequestOp {
                request: Some(request_op::Request::RequestTxn(bad_compare)),
            }],
            failure: vec![keel_proto::etcdserverpb::RequestOp {
                request: Some(request_op::Request::RequestPut(put(b"v", 0, true, false))),
            }],
            ..Default::default()
        };
        assert_eq!(msg(check_txn_ops(&t)), "etcdserver: key is not provided");
    }

    #[test]
    fn nested_txn_answers_have_empty_headers_as_in_etcd() {
        let mut t = txn(7, vec![txn(7, vec![txn(7, vec![])])]);
        clear_nested_txn_headers(&mut t);
        assert_eq!(t.header.as_ref().unwrap().revision, 7);
        let Some(response_op::Response::ResponseTxn(inner)) = &t.responses[0].response else {
            panic!("{t:?}")
        };
        assert_eq!(inner.header, Some(ResponseHeader::default()));
        let Some(response_op::Response::ResponseTxn(innermost)) = &inner.responses[0].response
        else {
            panic!("{t:?}")
        };
        assert_eq!(innermost.header, Some(ResponseHeader::default()));
    }
}
