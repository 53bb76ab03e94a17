//! Publishing this member's own record (peer and client address, zone) in
//! the membership, and keeping the transport's address book equal to it.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::{LeaderRequest, Node};

impl Node {
    /// Keeps this member's record in the membership (addresses, zone) equal
    /// to its configuration, e.g. after a restart on a new address.
    pub async fn publish_loop(self: Arc<Self>) {
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            let me = self.me();
            match self.member(self.id) {
                Some(cur) if cur == me => {}
                Some(_) => {
                    if let Err(e) = self.leader_call(LeaderRequest::SetMember(me)).await {
                        tracing::debug!(error = %e, "publishing member record failed");
                    }
                }
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Copies every member's peer address from the membership into the
    /// transport's address book whenever the membership changes (watching
    /// openraft's server metrics, which change with the membership, vote or
    /// leader; all metrics change with every log write and applied entry).
    pub async fn address_loop(self: Arc<Self>) {
        let book = self.book.clone();
        let mut rx = self.raft.server_metrics();
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            {
                let m = rx.borrow_watched();
                let mut b = book.write().unwrap_or_else(|e| e.into_inner());
                for (id, n) in m.membership_config.membership().nodes() {
                    let addr = self.dial_addr(n);
                    if b.get(id).map(String::as_str) != Some(addr) {
                        b.insert(*id, addr.to_string());
                    }
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
