//! Who hears of each applied batch: every feed subscribes with the key range
//! it follows, and a batch goes only to the ranges that hold one of its keys
//! (a snapshot's empty batch goes to every range). With one channel for all,
//! every batch woke every feed; the leader's control plane keeps one per
//! kind of object, so each write woke seven tasks that had nothing to do.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::EventBatch;
use super::keys::in_range;

/// Batches a range's channel holds for a slow feed; one that falls further
/// behind re-reads the stored history (`feed::Feed`).
const CAPACITY: usize = 1024;

/// A key range as in etcd (`(key, range_end)`); None: every key.
pub type Range = Option<(Vec<u8>, Vec<u8>)>;

/// The channels of the key ranges feeds follow, one per distinct range.
#[derive(Default)]
pub struct Hub {
    ranges: Mutex<Vec<(Range, broadcast::Sender<Arc<EventBatch>>)>>,
}

impl Hub {
    fn ranges(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(Range, broadcast::Sender<Arc<EventBatch>>)>> {
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batches published from now on that touch `range`.
    pub fn subscribe(&self, range: Range) -> broadcast::Receiver<Arc<EventBatch>> {
        let mut ranges = self.ranges();
        if let Some((_, tx)) = ranges.iter().find(|(r, _)| *r == range) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(CAPACITY);
        ranges.push((range, tx));
        rx
    }

    /// Sends `batch` to every range it touches (an empty batch to all),
    /// dropping the ranges no feed follows any more.
    pub fn publish(&self, batch: EventBatch) {
        let batch = Arc::new(batch);
        let mut ranges = self.ranges();
        ranges.retain(|(_, tx)| tx.receiver_count() > 0);
        for (range, tx) in ranges.iter() {
            if touches(&batch, range) {
                // A feed that went away since the retain is fine.
                let _ = tx.send(batch.clone());
            }
        }
    }
}

fn touches(batch: &EventBatch, range: &Range) -> bool {
    let Some((key, end)) = range else {
        return true;
    };
    batch.events.is_empty()
        || batch
            .events
            .iter()
            .any(|(_, ev)| ev.kv.as_ref().is_some_and(|kv| in_range(&kv.key, key, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::mvccpb::{Event, KeyValue};

    fn batch(keys: &[&str]) -> EventBatch {
        let events = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let kv = KeyValue {
                    key: k.as_bytes().to_vec(),
                    ..Default::default()
                };
                (
                    i as i64 + 2,
                    Event {
                        kv: Some(kv),
                        ..Default::default()
                    },
                )
            })
            .collect();
        EventBatch {
            events,
            through: keys.len() as i64 + 1,
        }
    }

    fn prefix(p: &str) -> Range {
        Some((
            p.as_bytes().to_vec(),
            super::super::keys::prefix_end(p.as_bytes()),
        ))
    }

    #[test]
    fn a_batch_reaches_only_the_ranges_it_touches_and_a_snapshot_reaches_all() {
        let hub = Hub::default();
        let mut pods = hub.subscribe(prefix("/registry/pods/"));
        let mut pods2 = hub.subscribe(prefix("/registry/pods/"));
        let mut nodes = hub.subscribe(prefix("/registry/nodes/"));
        let mut all = hub.subscribe(None);
        let mut one = hub.subscribe(Some((b"a".to_vec(), Vec::new())));
        assert_eq!(hub.ranges().len(), 4, "one channel per distinct range");

        hub.publish(batch(&["bench/1", "/registry/pods/default/web"]));
        assert_eq!(pods.try_recv().unwrap().events.len(), 2);
        assert_eq!(pods2.try_recv().unwrap().events.len(), 2);
        assert_eq!(all.try_recv().unwrap().events.len(), 2);
        assert!(nodes.try_recv().is_err(), "no node was written");
        assert!(one.try_recv().is_err(), "the key a was not written");

        hub.publish(batch(&["a"]));
        assert!(one.try_recv().is_ok());
        assert!(all.try_recv().is_ok());
        assert!(pods.try_recv().is_err());

        hub.publish(EventBatch {
            events: Vec::new(),
            through: 9,
        });
        for rx in [&mut pods, &mut pods2, &mut nodes, &mut all, &mut one] {
            assert!(
                rx.try_recv().unwrap().events.is_empty(),
                "a snapshot reaches every feed"
            );
        }
    }

    #[test]
    fn a_range_nobody_follows_is_dropped() {
        let hub = Hub::default();
        let pods = hub.subscribe(prefix("/registry/pods/"));
        let _all = hub.subscribe(None);
        drop(pods);
        hub.publish(batch(&["x"]));
        assert_eq!(hub.ranges().len(), 1);
        assert!(hub.ranges()[0].0.is_none());
    }
}
