//! The event history records: every event of one applied batch in one
//! record, keyed by the batch's last revision (`keys::group_key`).
//!
//! One record per batch instead of one per event halves the sled inserts of
//! a batch of puts (each insert copies the leaf it lands in); see
//! BENCHMARKS.md (2026-12-04). Records of one event each (`keys::rev_key`
//! with a sub-index below `keys::GROUP`), written before, are still read.
//!
//! Value of a group record: `[u64 revision][u32 length][mvccpb::Event]`...
//! (big-endian), oldest first. Groups never overlap and sort by their last
//! revision, so the events in `[from, to]` are in the records from
//! `rev_key(from, 0)` on, up to the first record that starts above `to`; a
//! record may hold events on either side of the bounds, which are skipped.

use keel_proto::mvccpb::Event;
use prost::Message;

use super::keys;

/// Encodes the events of one batch (oldest first) as a group record's value.
pub fn encode_group(events: &[(i64, Event)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|(_, e)| 12 + e.encoded_len()).sum());
    for (rev, ev) in events {
        out.extend_from_slice(&(*rev as u64).to_be_bytes());
        out.extend_from_slice(&(ev.encoded_len() as u32).to_be_bytes());
        ev.encode(&mut out).expect("a Vec grows as needed");
    }
    out
}

/// The events of one history record (either kind), oldest first.
pub fn decode_record(key: &[u8], value: &[u8]) -> Result<Vec<(i64, Event)>, String> {
    let bad = |what: &str| format!("corrupt history record: {what}");
    if !keys::is_group(key) {
        let ev = Event::decode(value).map_err(|e| bad(&e.to_string()))?;
        return Ok(vec![(keys::rev_of(key), ev)]);
    }
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad("truncated header"));
        }
        let rev = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) as i64;
        let len = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        if rest.len() < 12 + len {
            return Err(bad("truncated event"));
        }
        let ev = Event::decode(&rest[12..12 + len]).map_err(|e| bad(&e.to_string()))?;
        out.push((rev, ev));
        rest = &rest[12 + len..];
    }
    Ok(out)
}

/// The events with a revision in `[from, to]`, oldest first, from the
/// history records of `tree` (committed records only).
pub fn events_in(tree: &sled::Tree, from: i64, to: i64) -> Result<Vec<(i64, Event)>, String> {
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    let start = keys::rev_key(from.max(0), 0);
    for item in tree.range(start..vec![keys::REV + 1]) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let events = decode_record(&k, &v)?;
        if events.first().is_some_and(|(rev, _)| *rev > to) {
            break;
        }
        out.extend(
            events
                .into_iter()
                .filter(|(rev, _)| (from..=to).contains(rev)),
        );
    }
    Ok(out)
}

/// The stored events with a revision above `at`, oldest first.
pub fn events_after(tree: &sled::Tree, at: i64) -> Result<Vec<Event>, String> {
    Ok(events_in(tree, at + 1, i64::MAX)?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::mvccpb::KeyValue;

    fn ev(key: &str, rev: i64) -> (i64, Event) {
        let kv = KeyValue {
            key: key.into(),
            mod_revision: rev,
            ..Default::default()
        };
        (
            rev,
            Event {
                kv: Some(kv),
                ..Default::default()
            },
        )
    }

    #[test]
    fn reads_groups_and_single_event_records_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("kv").unwrap();
        // Older single-event records (revision 2 with two events), then
        // groups [3, 5] and [6, 6].
        t.insert(keys::rev_key(2, 0), ev("a", 2).1.encode_to_vec())
            .unwrap();
        t.insert(keys::rev_key(2, 1), ev("b", 2).1.encode_to_vec())
            .unwrap();
        let g1 = vec![ev("c", 3), ev("d", 4), ev("e", 4), ev("f", 5)];
        t.insert(keys::group_key(5), encode_group(&g1)).unwrap();
        t.insert(keys::group_key(6), encode_group(&[ev("g", 6)]))
            .unwrap();
        t.insert(keys::kv_key(b"zz"), b"not history".to_vec())
            .unwrap();
        let keys_of = |from, to| -> Vec<String> {
            events_in(&t, from, to)
                .unwrap()
                .into_iter()
                .map(|(r, e)| format!("{r}{}", String::from_utf8(e.kv.unwrap().key).unwrap()))
                .collect()
        };
        assert_eq!(keys_of(0, 100), ["2a", "2b", "3c", "4d", "4e", "5f", "6g"]);
        assert_eq!(keys_of(4, 4), ["4d", "4e"]);
        assert_eq!(keys_of(2, 3), ["2a", "2b", "3c"]);
        assert_eq!(keys_of(5, 6), ["5f", "6g"]);
        assert!(keys_of(7, 9).is_empty());
        assert!(keys_of(5, 4).is_empty());
    }

    #[test]
    fn a_torn_group_is_an_error() {
        let mut v = encode_group(&[ev("a", 3)]);
        v.pop();
        assert!(decode_record(&keys::group_key(3), &v).is_err());
        assert!(decode_record(&keys::group_key(3), &[0; 5]).is_err());
    }
}
