//! Lease expiry on the leader: deadlines live only in the leader's memory, as
//! in etcd (a new leader restarts every lease's full TTL), and an expired
//! lease is revoked through a Raft entry, so expiry is replicated.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::LeaseRevokeRequest;
use keel_proto::keelraft::command;
use openraft::ServerState;

use super::{LeaderResponse, Node};
use crate::error::EtcdError;

/// Leader-side lease expiry: deadlines live only in the leader's memory, as in
/// etcd; a new leader restarts every lease's full TTL.
#[derive(Default)]
pub(super) struct Lessor {
    /// The term this lessor was filled in; `None` while not leading.
    term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
}

impl Node {
    /// While leading: keeps lease deadlines and revokes expired leases
    /// through Raft, so expiry is replicated and deterministic.
    pub async fn lessor_loop(self: Arc<Self>) {
        while self.idle(Duration::from_millis(250)).await {
            let m = self.metrics();
            let expired: Vec<i64> = {
                let mut l = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                if m.state != ServerState::Leader {
                    self.kv.take_granted();
                    *l = Lessor::default();
                    continue;
                }
                if l.term != Some(m.current_term) {
                    l.term = Some(m.current_term);
                    l.deadlines.clear();
                }
                self.refresh_deadlines(&mut l);
                let now = Instant::now();
                l.deadlines
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(id, _)| *id)
                    .collect()
            };
            for id in expired {
                tracing::info!(lease = id, "lease expired, revoking");
                let r = self
                    .write(command::Op::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await;
                if let Err(e) = r
                    && e != EtcdError::LeaseNotFound
                {
                    tracing::warn!(lease = id, error = %e, "revoking expired lease failed");
                }
            }
        }
    }

    /// Brings the deadlines in line with the leases that exist: drops the
    /// revoked, starts the full TTL of the new and of the granted again
    /// since the last look (same ID, new grant).
    fn refresh_deadlines(&self, l: &mut Lessor) {
        self.note_grants(l);
        let now = Instant::now();
        let leases = self.kv.leases();
        let live: BTreeSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        l.deadlines.retain(|id, _| live.contains(id));
        for (id, ttl) in leases {
            l.deadlines.entry(id).or_insert(now + secs(ttl));
        }
    }

    /// Starts the full TTL of every lease granted since the last look.
    fn note_grants(&self, l: &mut Lessor) {
        for id in self.kv.take_granted() {
            match self.kv.lease(id) {
                Some((ttl, _)) => l.deadlines.insert(id, Instant::now() + secs(ttl)),
                None => l.deadlines.remove(&id),
            };
        }
    }

    /// On the leader: restarts a lease's TTL; `Ttl(0, 0)` when it is gone.
    pub(super) fn keep_alive(&self, id: i64) -> LeaderResponse {
        let ttl = match self.kv.lease(id) {
            None => 0,
            Some((ttl, _)) => {
                let mut l = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                l.deadlines.insert(id, Instant::now() + secs(ttl));
                ttl
            }
        };
        LeaderResponse::Ttl(ttl, ttl)
    }

    /// On the leader: a lease's remaining and granted TTL (-1 when gone).
    pub(super) fn time_to_live(&self, id: i64) -> LeaderResponse {
        match self.kv.lease(id) {
            None => LeaderResponse::Ttl(-1, 0),
            Some((ttl, _)) => {
                let mut l = self.lessor.lock().unwrap_or_else(|e| e.into_inner());
                self.note_grants(&mut l);
                let left = l
                    .deadlines
                    .get(&id)
                    .map(|d| d.saturating_duration_since(Instant::now()).as_secs() as i64)
                    .unwrap_or(ttl);
                LeaderResponse::Ttl(left, ttl)
            }
        }
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(1) as u64)
}
