//! Previous key-values stored by reference. A put or delete event carries
//! the key's previous key-value (`prev_kv`), which historical reads undo
//! with and watchers may ask for. It is always the key-value some earlier
//! put wrote, and that put's own event holds it whole, so when that event
//! is still in the history the stored event names it instead of copying
//! it: a `prev_kv` with an empty key (no real key is empty) whose
//! `mod_revision` is the earlier put's revision. That halves the bytes of a
//! put's history (BENCHMARKS.md, issue 13's thirteenth round).
//!
//! A reference is stored only when the earlier put is at or above the
//! compaction revision, so its event is in the history then. A later
//! compaction must not drop it while an event it keeps refers to it:
//! [`Pins`] knows, for every stored reference, which revision it names, and
//! a compaction keeps the history records holding a named revision (they go
//! once the events naming them are compacted too). Every reader resolves
//! references before an event leaves the store ([`resolve`]).

use std::collections::{BTreeSet, HashMap, VecDeque};

use keel_proto::mvccpb::{Event, KeyValue};
use prost::Message;
use prost::encoding::{int32, message};

use super::snapshot::Record;
use super::{history, keys};

/// A (sled key, value) record of its own.
pub type OwnedRecord = (Vec<u8>, Vec<u8>);

/// The revision a stored event's `prev_kv` refers to, if it is a reference.
pub fn reference(ev: &Event) -> Option<i64> {
    ev.prev_kv
        .as_ref()
        .filter(|p| p.key.is_empty())
        .map(|p| p.mod_revision)
}

/// The revision an event's whole `prev_kv` would be stored as a reference
/// to, with history kept from `compact` on.
fn referable(ev: &Event, compact: i64) -> Option<i64> {
    ev.prev_kv
        .as_ref()
        .filter(|p| !p.key.is_empty() && p.mod_revision >= compact && p.mod_revision > 0)
        .map(|p| p.mod_revision)
}

fn ref_kv(rev: i64) -> KeyValue {
    KeyValue {
        mod_revision: rev,
        ..Default::default()
    }
}

/// The length of `ev` as stored with history kept from `compact` on.
pub fn stored_len(ev: &Event, compact: i64) -> usize {
    match referable(ev, compact) {
        None => ev.encoded_len(),
        Some(rev) => {
            let ty = if ev.r#type != 0 {
                int32::encoded_len(1, &ev.r#type)
            } else {
                0
            };
            ty + ev.kv.as_ref().map_or(0, |kv| message::encoded_len(2, kv))
                + message::encoded_len(3, &ref_kv(rev))
        }
    }
}

/// Appends `ev` as stored with history kept from `compact` on: its
/// `prev_kv` a reference where it can be (the rest as protobuf would
/// encode it, so any decoder reads it).
pub fn encode_stored(ev: &Event, compact: i64, buf: &mut Vec<u8>) {
    match referable(ev, compact) {
        None => ev.encode(buf).expect("a Vec grows as needed"),
        Some(rev) => {
            if ev.r#type != 0 {
                int32::encode(1, &ev.r#type, buf);
            }
            if let Some(kv) = &ev.kv {
                message::encode(2, kv, buf);
            }
            message::encode(3, &ref_kv(rev), buf);
        }
    }
}

/// The (referring revision, referred revision) pairs `events` (oldest
/// first) store with history kept from `compact` on.
pub fn references(events: &[(i64, Event)], compact: i64) -> Vec<(i64, i64)> {
    events
        .iter()
        .filter_map(|(rev, ev)| referable(ev, compact).map(|to| (*rev, to)))
        .collect()
}

/// The references stored in the history at or above the compaction
/// revision, in revision order: what a compaction must keep history for.
#[derive(Debug, Default)]
pub struct Pins {
    /// (referring revision, referred revision), oldest referrer first.
    refs: VecDeque<(i64, i64)>,
}

impl Pins {
    /// The references of the history in `tree` from `compact` on.
    pub fn load(tree: &sled::Tree, compact: i64) -> Result<Pins, String> {
        let mut refs = VecDeque::new();
        for (rev, ev) in history::events_in(tree, compact, i64::MAX)? {
            if let Some(to) = reference(&ev) {
                refs.push_back((rev, to));
            }
        }
        Ok(Pins { refs })
    }

    /// Records the references of a batch just stored (its revisions are
    /// above every recorded one).
    pub fn extend(&mut self, refs: impl IntoIterator<Item = (i64, i64)>) {
        self.refs.extend(refs);
    }

    /// Forgets the references of events below the compaction revision.
    pub fn compacted(&mut self, compact: i64) {
        while self.refs.front().is_some_and(|(from, _)| *from < compact) {
            self.refs.pop_front();
        }
    }

    /// The revisions below `compact` that events at or above it refer to:
    /// the history a compaction at `compact` must keep.
    pub fn kept_by(&self, compact: i64) -> BTreeSet<i64> {
        self.refs
            .iter()
            .filter(|(from, to)| *from >= compact && *to < compact)
            .map(|(_, to)| *to)
            .collect()
    }

    /// How many references are recorded.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}

/// The key-value the put of `key` at revision `rev` wrote, if `events`
/// (oldest first) hold it.
fn put_at<'e>(events: &'e [(i64, Event)], rev: i64, key: &[u8]) -> Option<&'e KeyValue> {
    let from = events.partition_point(|(r, _)| *r < rev);
    events[from..]
        .iter()
        .take_while(|(r, _)| *r == rev)
        .filter_map(|(_, e)| e.kv.as_ref())
        .find(|kv| kv.key == key && kv.mod_revision == rev)
}

/// The key-value of `key` written at revision `rev`, from the history
/// records of `tree` (decoded records cached in `seen`).
fn lookup(
    tree: &sled::Tree,
    rev: i64,
    key: &[u8],
    seen: &mut HashMap<Vec<u8>, Vec<(i64, Event)>>,
) -> Result<Option<KeyValue>, String> {
    for item in tree.range(keys::rev_key(rev, 0)..vec![keys::REV + 1]) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if !seen.contains_key(&*k) {
            seen.insert(k.to_vec(), history::decode_record(&k, &v)?);
        }
        let events = &seen[&*k];
        if events.first().is_some_and(|(r, _)| *r > rev) {
            break;
        }
        if let Some(kv) = put_at(events, rev, key) {
            return Ok(Some(kv.clone()));
        }
    }
    Ok(None)
}

/// Replaces every reference among `events` (oldest first) with the
/// key-value it names: from an earlier event of the same slice, else from
/// the history in `tree`. A reference whose put is gone is an error (the
/// history that held it was lost).
pub fn resolve(tree: &sled::Tree, events: &mut [(i64, Event)]) -> Result<(), String> {
    let mut seen = HashMap::new();
    for i in 0..events.len() {
        let Some(to) = reference(&events[i].1) else {
            continue;
        };
        let key = events[i]
            .1
            .kv
            .as_ref()
            .map(|kv| kv.key.clone())
            .unwrap_or_default();
        // An earlier event of this slice, else the tree.
        let prev = match put_at(&events[..i], to, &key).cloned() {
            Some(kv) => kv,
            None => lookup(tree, to, &key, &mut seen)?.ok_or_else(|| {
                format!(
                    "history lost the value of {} written at revision {to}",
                    String::from_utf8_lossy(&key)
                )
            })?,
        };
        events[i].1.prev_kv = Some(prev);
    }
    Ok(())
}

/// The stored events with a revision above `at`, oldest first, their
/// previous key-values resolved: what a read at revision `at` undoes.
pub fn events_after(tree: &sled::Tree, at: i64) -> Result<Vec<(i64, Event)>, String> {
    let mut events = history::events_in(tree, at + 1, i64::MAX)?;
    resolve(tree, &mut events)?;
    Ok(events)
}

/// Replaces the references of the history records `kept` (sled key,
/// value) with the key-values they name, found in `all` (every record of a
/// dump, in key order): for records kept while the history they refer to
/// is not. Records without references come back as they were.
pub fn materialize(kept: &[Record<'_>], all: &[Record<'_>]) -> Result<Vec<OwnedRecord>, String> {
    let mut out = Vec::with_capacity(kept.len());
    for (k, v) in kept {
        let mut events = history::decode_record(k, v)?;
        if !events.iter().any(|(_, e)| reference(e).is_some()) {
            out.push((k.to_vec(), v.to_vec()));
            continue;
        }
        for (_, ev) in events.iter_mut() {
            let Some(to) = reference(ev) else { continue };
            let key = ev
                .kv
                .as_ref()
                .map(|kv| kv.key.as_slice())
                .unwrap_or_default();
            let start = keys::rev_key(to, 0);
            let at = all.partition_point(|(rk, _)| *rk < start.as_slice());
            let mut found = None;
            for (rk, rv) in &all[at..] {
                if keys::history_rev(rk).is_none() {
                    break;
                }
                let evs = history::decode_record(rk, rv)?;
                if evs.first().is_some_and(|(r, _)| *r > to) {
                    break;
                }
                found = put_at(&evs, to, key).cloned();
                if found.is_some() {
                    break;
                }
            }
            ev.prev_kv = Some(found.ok_or_else(|| {
                format!(
                    "the backup's history lost the value of {} written at revision {to}",
                    String::from_utf8_lossy(key)
                )
            })?);
        }
        out.push((k.to_vec(), history::encode_record(&events, i64::MAX)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::mvccpb::event::EventType;

    fn kv(key: &str, rev: i64, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            mod_revision: rev,
            create_revision: 2,
            version: rev - 1,
            value: value.into(),
            lease: 0,
        }
    }

    fn put(rev: i64, key: &str, value: &str, prev: Option<KeyValue>) -> (i64, Event) {
        let ev = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(key, rev, value)),
            prev_kv: prev,
        };
        (rev, ev)
    }

    fn delete(rev: i64, key: &str, prev: KeyValue) -> (i64, Event) {
        let ev = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: Some(prev),
        };
        (rev, ev)
    }

    #[test]
    fn a_previous_key_value_in_kept_history_is_stored_as_a_reference() {
        let events = vec![
            put(2, "a", "1", None),
            put(3, "a", "2", Some(kv("a", 2, "1"))),
            delete(4, "a", kv("a", 3, "2")),
        ];
        // History kept from 3 on: the put at 3 names revision 2 whole, the
        // delete at 4 refers to the put at 3.
        assert_eq!(references(&events, 3), [(4, 3)]);
        assert_eq!(references(&events, 0), [(3, 2), (4, 3)]);
        let value = history::encode_record(&events, 3);
        let stored = history::decode_record(&keys::group_key(4), &value).unwrap();
        assert_eq!(stored[..2], events[..2]);
        assert_eq!(reference(&stored[2].1), Some(3));
        assert_eq!(stored[2].1.kv, events[2].1.kv);
        assert_eq!(stored[2].1.r#type, EventType::Delete as i32);
        for (_, ev) in &events {
            let mut buf = Vec::new();
            encode_stored(ev, 0, &mut buf);
            assert_eq!(buf.len(), stored_len(ev, 0));
            assert!(stored_len(ev, 0) <= ev.encoded_len());
        }
        // A reference is a fraction of the value it stands for.
        let big = put(9, "a", &"v".repeat(300), Some(kv("a", 8, &"w".repeat(300))));
        assert!(stored_len(&big.1, 0) < big.1.encoded_len() / 2 + 20);
    }

    #[test]
    fn references_resolve_from_the_slice_or_the_tree_and_a_lost_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("kv").unwrap();
        let events = vec![
            put(2, "a", "1", None),
            put(3, "b", "x", None),
            put(4, "a", "2", Some(kv("a", 2, "1"))),
            delete(5, "a", kv("a", 4, "2")),
        ];
        for (k, v) in history::encode_runs(&events[..2], 0)
            .into_iter()
            .chain(history::encode_runs(&events[2..], 0))
        {
            t.insert(k, v).unwrap();
        }
        // The whole history: references resolve inside the slice.
        let mut all = history::events_in(&t, 0, 10).unwrap();
        assert_eq!(reference(&all[3].1), Some(4));
        resolve(&t, &mut all).unwrap();
        assert_eq!(all, events);
        // From revision 4 on: the put at 2 is read from the tree.
        let mut later = history::events_in(&t, 4, 10).unwrap();
        resolve(&t, &mut later).unwrap();
        assert_eq!(later, events[2..]);
        // A record holding a referred-to put gone: an error, not a guess.
        let first = t.iter().keys().next().unwrap().unwrap();
        t.remove(first).unwrap();
        let mut later = history::events_in(&t, 4, 10).unwrap();
        let err = resolve(&t, &mut later).unwrap_err();
        assert!(err.contains("written at revision 2"), "{err}");
    }

    #[test]
    fn pins_keep_what_events_at_or_above_a_compaction_refer_to() {
        let mut pins = Pins::default();
        pins.extend([(3, 2), (5, 1), (6, 5), (9, 8)]);
        assert_eq!(pins.kept_by(6).into_iter().collect::<Vec<_>>(), [5]);
        assert_eq!(pins.kept_by(4).into_iter().collect::<Vec<_>>(), [1]);
        assert!(pins.kept_by(10).is_empty());
        pins.compacted(6);
        assert_eq!(pins.len(), 2);
        assert_eq!(pins.kept_by(9).into_iter().collect::<Vec<_>>(), [8]);
        pins.compacted(100);
        assert!(pins.is_empty());
    }
}
