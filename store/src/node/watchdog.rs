//! Noticing that this member's Raft core stopped (a fatal storage error, a
//! panicked task): such a member can no longer commit or apply anything, and
//! must not linger as a zombie that accepts connections and times out every
//! write. The binary exits non-zero on it so a supervisor restarts it.

use openraft::async_runtime::WatchReceiver;

use super::Node;

impl Node {
    /// Resolves, with the reason, once the Raft core has stopped for any
    /// reason but this member's own shutdown; never resolves otherwise.
    ///
    /// Waits on openraft's server metrics (vote, state, leader, membership),
    /// whose sender the core owns: they end when the core's task ends. Not
    /// on all metrics, which change with every log write and applied entry:
    /// the binary awaits this on its main thread, and every change woke that
    /// thread (four to five wake-ups, each a context switch, per write).
    pub async fn raft_stopped(&self) -> String {
        let fatal = || match &self.raft.metrics().borrow_watched().running_state {
            Err(fatal) => Some(format!("the Raft core stopped: {fatal}")),
            Ok(()) => None,
        };
        let mut rx = self.raft.server_metrics();
        loop {
            if let Some(why) = fatal() {
                return why;
            }
            if rx.changed().await.is_err() {
                if *self.shutdown_tx.borrow() {
                    std::future::pending::<()>().await;
                }
                return fatal().unwrap_or_else(|| "the Raft core stopped (its task ended)".into());
            }
        }
    }
}
