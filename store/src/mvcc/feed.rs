//! An in-process change feed: every event from a start revision, once and in
//! revision order. It replays stored history, then follows live batches, and
//! re-reads history when it lags or a snapshot replaced the key space. The
//! etcd Watch service and the control plane's informers both read through it.
//! A feed may be limited to a key range: events of other keys are skipped
//! before they are copied (every live batch reaches every feed, and the
//! leader's control plane keeps one per kind of object it follows).

use std::sync::Arc;

use keel_proto::mvccpb::Event;
use tokio::sync::broadcast;

use super::KvStore;
use super::keys::in_range;
use crate::error::EtcdError;

/// Revisions of stored history read per step when catching up.
pub const CATCH_UP_REVISIONS: i64 = 512;

/// A cursor over the key space's events.
pub struct Feed {
    kv: Arc<KvStore>,
    live: broadcast::Receiver<Arc<super::EventBatch>>,
    /// The next revision to deliver.
    next: i64,
    /// Whether stored history must be read before following live batches.
    catch_up: bool,
    /// The keys delivered, `(key, range_end)` with etcd's conventions;
    /// None: every key.
    range: Option<(Vec<u8>, Vec<u8>)>,
    /// Whether stored events come with their previous key-values (live
    /// ones always do): reading them from history costs lookups.
    prev: bool,
}

impl Feed {
    /// A feed starting at `start` (`<= 0`: after the current revision).
    /// Returns it with the revision current when it was opened.
    pub fn open(kv: Arc<KvStore>, start: i64) -> (Feed, i64) {
        Self::open_range(kv, start, None)
    }

    /// As `open`, delivering only events of keys in `range` (`(key,
    /// range_end)` as in etcd: an empty end is the key alone, `"\0"` every key
    /// from `key` on).
    pub fn open_range(
        kv: Arc<KvStore>,
        start: i64,
        range: Option<(Vec<u8>, Vec<u8>)>,
    ) -> (Feed, i64) {
        // Subscribe before reading the revision, so nothing falls between the two.
        let live = kv.subscribe();
        let cur = kv.revision();
        let next = if start <= 0 { cur + 1 } else { start };
        let feed = Feed {
            kv,
            live,
            next,
            catch_up: true,
            range,
            prev: true,
        };
        (feed, cur)
    }

    /// This feed, its stored events read without their previous key-values.
    pub fn without_prev(mut self) -> Feed {
        self.prev = false;
        self
    }

    fn wanted(&self, ev: &Event) -> bool {
        match (&self.range, &ev.kv) {
            (None, _) => true,
            (Some((key, end)), Some(kv)) => in_range(&kv.key, key, end),
            (Some(_), None) => false,
        }
    }

    /// The next events (never empty), in revision order. Fails with
    /// `Compacted` when the start revision was compacted away, and with
    /// `Unavailable` when the store closed.
    pub async fn next(&mut self) -> Result<Vec<(i64, Event)>, EtcdError> {
        loop {
            if self.catch_up {
                // History is read a page of revisions at a time, so a watch
                // from far back never loads the whole history at once.
                let to = self.next.saturating_add(CATCH_UP_REVISIONS - 1);
                let (events, cur) =
                    self.kv
                        .events_where(self.next, Some(to), |ev| self.wanted(ev), self.prev)?;
                let upto = to.min(cur);
                self.next = self.next.max(upto + 1);
                self.catch_up = upto < cur;
                if !events.is_empty() {
                    return Ok(events);
                }
                if self.catch_up {
                    continue;
                }
            }
            match self.live.recv().await {
                Ok(batch) => {
                    if batch.events.is_empty() {
                        // A snapshot replaced the key space: re-read history.
                        self.catch_up = true;
                        continue;
                    }
                    let fresh: Vec<(i64, Event)> = batch
                        .events
                        .iter()
                        .filter(|(r, ev)| *r >= self.next && self.wanted(ev))
                        .cloned()
                        .collect();
                    // Past the whole batch, whether or not any of it was wanted.
                    if let Some((last, _)) = batch.events.last() {
                        self.next = self.next.max(last + 1);
                    }
                    if !fresh.is_empty() {
                        return Ok(fresh);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up = true,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(EtcdError::Unavailable("store closed".into()));
                }
            }
        }
    }
}
