//! etcd's Cluster service: list, add, remove, update and promote members.
//! Member ids derive from names, so `MemberAdd` needs Keel's `name`
//! extension; the usual way to add a member is to start it with `--join`.

use keel_proto::etcdserverpb::cluster_server::Cluster;
use keel_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Etcd;
use crate::error::EtcdError;
use crate::node::LeaderRequest;
use crate::raft::types::{self, member_id};

/// A member's URL: https when the cluster runs TLS (every member does, or
/// none: `--insecure` is for whole test clusters).
fn url(addr: &str, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("{scheme}://{addr}")]
    }
}

fn strip(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

impl Etcd {
    fn member_list(&self) -> Vec<Member> {
        let tls = self.node.cfg.tls.is_some();
        self.node
            .members()
            .into_iter()
            .map(|(id, m, voter)| Member {
                id,
                name: m.name,
                peer_ur_ls: url(&m.peer_addr, tls),
                client_ur_ls: url(&m.client_addr, tls),
                is_learner: !voter,
                zone: m.zone,
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for Etcd {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(EtcdError::InvalidArgument(
                "Keel member ids derive from names: MemberAdd needs the name field \
                 (or start the new member with --join)"
                    .into(),
            )
            .into());
        }
        let peer = req
            .peer_ur_ls
            .first()
            .map(|u| strip(u))
            .ok_or_else(|| EtcdError::InvalidArgument("member peer URL not given".into()))?;
        let member = types::Member {
            name: req.name.clone(),
            peer_addr: peer,
            client_addr: req
                .client_ur_ls
                .first()
                .map(|u| strip(u))
                .unwrap_or_default(),
            zone: req.zone.clone(),
        };
        self.node
            .leader_call(LeaderRequest::Add {
                member,
                promote: !req.is_learner,
            })
            .await?;
        let members = self.member_list();
        let id = member_id(&req.name);
        Ok(Response::new(MemberAddResponse {
            header: self.header(0),
            member: members.iter().find(|m| m.id == id).cloned(),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.node
            .leader_call(LeaderRequest::Remove(req.into_inner().id))
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = req.into_inner();
        let (_, mut m, _) = self
            .node
            .members()
            .into_iter()
            .find(|(id, _, _)| *id == req.id)
            .ok_or(EtcdError::MemberNotFound)?;
        if let Some(p) = req.peer_ur_ls.first() {
            m.peer_addr = strip(p);
        }
        if let Some(c) = req.client_ur_ls.first() {
            m.client_addr = strip(c);
        }
        self.node.leader_call(LeaderRequest::SetMember(m)).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.node
            .leader_call(LeaderRequest::Promote(req.into_inner().id))
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }
}
