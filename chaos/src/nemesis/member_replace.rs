//! Replacing a member, as an operator replaces a dead machine: remove it
//! through a membership change (on the leader), wipe its data dir, start it
//! empty with `--join` and wait until it is a voter again. What it proves:
//! a member rebuilt from a snapshot and the log holds the same data, and
//! the cluster stays available for writes throughout.

use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::{MemberListRequest, MemberRemoveRequest};
use keel_proto::pki::Credentials;
use tonic::transport::Channel;

use super::schedule::{Planned, Target};
use super::{Ctx, Injected, NemesisError};
use crate::cluster::status_of;

fn cluster_client(creds: &Credentials, addr: &str) -> Option<ClusterClient<Channel>> {
    let ep = creds.endpoint(addr).ok()?;
    Some(ClusterClient::new(
        ep.connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy(),
    ))
}

/// Whether member `id` is a voter, as member `addr` sees the membership.
async fn is_voter(creds: &Credentials, addr: &str, id: u64) -> bool {
    let Some(mut c) = cluster_client(creds, addr) else {
        return false;
    };
    match c
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .members
            .iter()
            .any(|m| m.id == id && !m.is_learner),
        Err(_) => false,
    }
}

pub async fn run(ctx: &mut Ctx<'_>, p: &Planned) -> Injected {
    let n = ctx.cluster.members.len();
    let leader = ctx.current_leader().await.ok_or(NemesisError::NoLeader)?;
    // Never the leader: removing it is a leadership transfer, not a replacement.
    let mut victim = match p.target {
        Target::Member { index } => index % n,
        _ => (leader + 1) % n,
    };
    if victim == leader {
        victim = (victim + 1) % n;
    }
    let target = ctx.name(victim);
    let creds = ctx.cluster.credentials().clone();
    let id = status_of(&creds, &ctx.cluster.members[victim].client_addr())
        .await
        .map(|s| s.0)
        .ok_or_else(|| NemesisError::Membership(format!("{target} does not answer")))?;
    tracing::info!(%target, "nemesis: removing member");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = ctx.current_leader().await.unwrap_or(leader);
        let addr = ctx.cluster.members[leader].client_addr();
        let r = match cluster_client(&creds, &addr) {
            Some(mut c) => c
                .member_remove(MemberRemoveRequest { id })
                .await
                .map(|_| ())
                .map_err(|s| s.message().to_string()),
            None => Err("bad address".into()),
        };
        match r {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(NemesisError::Membership(format!("removing {target}: {e}")));
            }
            Err(e) => tracing::debug!(error = %e, "member remove refused, retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Join through another member, over the victim's proxy to it.
    let via = (0..n).find(|i| *i != victim).unwrap_or(0);
    let via_addr = ctx
        .mesh
        .addr(victim, via)
        .map(str::to_string)
        .unwrap_or_else(|| ctx.cluster.members[via].peer_addr());
    ctx.cluster.rejoin_empty(victim, via_addr)?;
    tracing::info!(%target, "nemesis: member wiped and rejoining");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = ctx.current_leader().await.unwrap_or(via);
        if is_voter(&creds, &ctx.cluster.members[l].client_addr(), id).await {
            return Ok((format!("{target} (removed, wiped, rejoined)"), vec![victim]));
        }
        if Instant::now() >= deadline {
            return Err(NemesisError::Membership(format!(
                "{target} not a voter again within 30s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
