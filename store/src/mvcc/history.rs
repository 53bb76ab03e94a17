//! The event history records: the events of one applied batch in runs of
//! consecutive events of at most `RUN_BYTES` each, every run keyed by its
//! last revision (`keys::rev_key` with a sub-index from `keys::GROUP_BASE`
//! up to `keys::GROUP`: runs ending at the same revision count down from
//! `GROUP`, so they sort in event order).
//!
//! Runs instead of one record per event halve the sled inserts of a batch
//! of puts (BENCHMARKS.md, 2026-12-04); runs of bounded size rather than
//! one record per batch, because sled splits a leaf only past 16 records
//! and writes every leaf above 128 KiB that it rewrites as a blob file of
//! its own: with one record per batch, history leaves grew to a MiB and
//! that rewriting took a fifth of the members' CPU at 256 clients
//! (BENCHMARKS.md, 2026-12-06). Records of one event each (sub-index below
//! `GROUP_BASE`), written before 2026-12-04, are still read.
//!
//! Value of a run: `[u64 revision][u32 length][mvccpb::Event]`...
//! (big-endian), oldest first; an event's `prev_kv` may be a reference to
//! an earlier put's event (`super::prev`). Runs never overlap and sort by their last
//! revision, so the events in `[from, to]` are in the records from
//! `rev_key(from, 0)` on, up to the first record that starts above `to`; a
//! record may hold events on either side of the bounds, which are skipped.

use keel_proto::mvccpb::Event;
use prost::Message;

use super::{keys, prev};

/// The largest run a record holds (an event larger than this alone is a
/// run of its own): sixteen of them stay below sled's 128 KiB blob size.
pub const RUN_BYTES: usize = 6 * 1024;

/// Encodes the events of one batch (oldest first) as history records
/// (sled key, value), in key order, with history kept from `compact` on
/// (`super::prev`: a previous key-value still in it is stored by reference).
pub fn encode_runs(events: &[(i64, Event)], compact: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    // Runs as (last revision, value), then keyed: runs sharing a last
    // revision take sub-indexes counting down to GROUP, earliest lowest.
    let lens: Vec<usize> = events
        .iter()
        .map(|(_, e)| prev::stored_len(e, compact))
        .collect();
    let mut runs: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for (i, (rev, ev)) in events.iter().enumerate() {
        push_event(&mut cur, *rev, lens[i], ev, compact);
        let next = lens.get(i + 1).map_or(0, |len| 12 + len);
        if i + 1 == events.len() || cur.len() + next > RUN_BYTES {
            runs.push((*rev, std::mem::take(&mut cur)));
        }
    }
    let lasts: Vec<i64> = runs.iter().map(|(rev, _)| *rev).collect();
    runs.into_iter()
        .enumerate()
        .map(|(i, (last, value))| {
            let later_same = lasts[i + 1..].iter().take_while(|r| **r == last).count();
            (keys::rev_key(last, keys::GROUP - later_same as u32), value)
        })
        .collect()
}

/// The value of one run record holding `events` (oldest first), however
/// long, with history kept from `compact` on.
pub fn encode_record(events: &[(i64, Event)], compact: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for (rev, ev) in events {
        push_event(&mut out, *rev, prev::stored_len(ev, compact), ev, compact);
    }
    out
}

fn push_event(out: &mut Vec<u8>, rev: i64, len: usize, ev: &Event, compact: i64) {
    out.extend_from_slice(&(rev as u64).to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    prev::encode_stored(ev, compact, out);
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
        for (k, v) in encode_runs(&g1, 0)
            .into_iter()
            .chain(encode_runs(&[ev("g", 6)], 0))
        {
            t.insert(k, v).unwrap();
        }
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
    fn a_batch_splits_into_bounded_runs_that_sort_in_event_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("kv").unwrap();
        let big = |key: String, rev: i64| {
            let (rev, mut e) = ev(&key, rev);
            e.kv.as_mut().unwrap().value = vec![b'v'; 1000];
            (rev, e)
        };
        // A transaction of 40 puts at revision 7 (many runs end at 7),
        // puts at 8 and 9, and one event larger than a run.
        let mut events: Vec<(i64, Event)> = (0..40).map(|i| big(format!("t{i:02}"), 7)).collect();
        events.push(big("x".into(), 8));
        let (_, mut huge) = ev("huge", 9);
        huge.kv.as_mut().unwrap().value = vec![b'h'; 3 * RUN_BYTES];
        events.push((9, huge));
        let runs = encode_runs(&events, 0);
        assert!(runs.len() > 5, "{} runs", runs.len());
        assert!(
            runs.windows(2).all(|w| w[0].0 < w[1].0),
            "keys sort in event order"
        );
        for (k, v) in &runs {
            assert!(keys::is_group(k));
            assert!(v.len() <= RUN_BYTES || decode_record(k, v).unwrap().len() == 1);
        }
        for (k, v) in runs {
            t.insert(k, v).unwrap();
        }
        let got = events_in(&t, 0, 100).unwrap();
        let keys = |evs: &[(i64, Event)]| -> Vec<(i64, Vec<u8>)> {
            evs.iter()
                .map(|(r, e)| (*r, e.kv.as_ref().unwrap().key.clone()))
                .collect()
        };
        assert_eq!(keys(&got), keys(&events));
        assert_eq!(keys(&events_in(&t, 8, 8).unwrap()), [(8, b"x".to_vec())]);
        assert_eq!(events_in(&t, 7, 7).unwrap().len(), 40);
    }

    #[test]
    fn a_torn_group_is_an_error() {
        let mut v = encode_runs(&[ev("a", 3)], 0).remove(0).1;
        v.pop();
        assert!(decode_record(&keys::group_key(3), &v).is_err());
        assert!(decode_record(&keys::group_key(3), &[0; 5]).is_err());
    }
}
