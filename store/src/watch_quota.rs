//! Counting concurrent watches per client identity, so that one runaway
//! client cannot exhaust a member's memory and tasks with watches. Used by
//! the etcd Watch service and by the REST API's watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// At most `limit` concurrent watches per identity.
pub struct WatchQuota {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One watch held; released when dropped.
pub struct WatchSlot {
    quota: Arc<WatchQuota>,
    who: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.who);
            }
        }
    }
}

impl WatchQuota {
    pub fn new(limit: usize) -> WatchQuota {
        WatchQuota {
            limit,
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more watch of `who`, or None at the limit.
    pub fn acquire(self: &Arc<Self>, who: &str) -> Option<WatchSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(who.to_string()).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            quota: self.clone(),
            who: who.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_identity_and_released_on_drop() {
        let q = Arc::new(WatchQuota::new(2));
        let a1 = q.acquire("alice").unwrap();
        let _a2 = q.acquire("alice").unwrap();
        assert!(q.acquire("alice").is_none(), "alice is at her limit");
        let _b = q.acquire("bob").expect("bob has his own");
        drop(a1);
        assert!(
            q.acquire("alice").is_some(),
            "a released slot is free again"
        );
    }
}
