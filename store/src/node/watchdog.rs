//! Noticing that this member's Raft core stopped (a fatal storage error, a
//! panicked task): such a member can no longer commit or apply anything, and
//! must not linger as a zombie that accepts connections and times out every
//! write. The binary exits non-zero on it so a supervisor restarts it.

use openraft::async_runtime::WatchReceiver;

use super::Node;

impl Node {
    /// Resolves, with the reason, once the Raft core has stopped for any
    /// reason but this member's own shutdown; never resolves otherwise.
    pub async fn raft_stopped(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(fatal) = &rx.borrow_watched().running_state {
                return format!("the Raft core stopped: {fatal}");
            }
            if rx.changed().await.is_err() {
                if *self.shutdown_tx.borrow() {
                    std::future::pending::<()>().await;
                }
                return "the Raft core stopped (its task ended)".into();
            }
        }
    }
}
