//! Watches over the store's change feed: a kind's objects as ADDED,
//! MODIFIED and DELETED changes, in revision order.

use keel_proto::mvccpb::event;
use keel_store::mvcc::feed::Feed;
use serde_json::Value;

use super::decode_kv;
use crate::error::ApiError;

/// A change seen by a watch.
#[derive(Debug, Clone)]
pub struct Change {
    /// ADDED, MODIFIED or DELETED.
    pub type_: &'static str,
    pub object: Value,
    pub revision: i64,
}

/// A stream of changes to one kind's objects.
pub struct Watch {
    /// Limited to the kind's key prefix (`Feed::open_range`).
    pub(super) feed: Feed,
    pub(super) pending: std::collections::VecDeque<Change>,
}

impl Watch {
    /// The next change, in revision order. Fails with 410 Gone when the
    /// start revision was compacted away.
    pub async fn next(&mut self) -> Result<Change, ApiError> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Ok(c);
            }
            for (rev, ev) in self.feed.next().await? {
                let Some(kv) = ev.kv.as_ref() else { continue };
                let change = if ev.r#type == event::EventType::Delete as i32 {
                    match ev.prev_kv.as_ref() {
                        Some(prev) => Change {
                            type_: "DELETED",
                            object: decode_kv(prev, rev)?,
                            revision: rev,
                        },
                        None => continue,
                    }
                } else {
                    Change {
                        type_: if kv.create_revision == kv.mod_revision {
                            "ADDED"
                        } else {
                            "MODIFIED"
                        },
                        object: decode_kv(kv, rev)?,
                        revision: rev,
                    }
                };
                self.pending.push_back(change);
            }
        }
    }
}
