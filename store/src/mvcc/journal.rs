//! Atomic apply batches without sled's `apply_batch`: each batch's writes
//! are first recorded whole in a journal tree, then made one by one. (A
//! batch's history records go in just before its journal, outside it: see
//! `super::apply`.)
//!
//! Why: sled 0.34's `Tree::apply_batch` rolls its IO buffer twice per call
//! (`PageCache::pin_log`), so every applied Raft batch cost two buffer
//! writes (a `pwrite` each, handed to sled's IO threads and their wake-ups).
//! A `perf` profile at one client put a fifth of the members' CPU there
//! (BENCHMARKS.md). Plain inserts only copy into the current buffer, which is
//! written once full.
//!
//! Why it is still atomic: sled has one log for all trees and recovers a
//! prefix of it after a crash (operations in the order they were made;
//! its `LogIter` stops at the first torn message or missing segment, which
//! is also what makes sled's own batches atomic). One writer (the
//! apply lock) makes, per batch: the journal chunks `c<i>`, then the journal
//! head `h` = (batch number, chunk count), then the batch's writes to the key
//! space. A recovered prefix therefore ends in one of three places:
//! - before the head of batch N: batch N-1 is complete (its writes all came
//!   before N's first chunk) and batch N left no write in the key space;
//! - after the head of N, inside N's writes: the head names N and every
//!   chunk carries N, so recovery writes the whole batch again (every write
//!   sets or removes a key to a fixed value, so doing it twice is harmless);
//! - after N's writes: the same, harmlessly.
//!
//! If the head names N but a chunk carries N+1, batch N+1 had started
//! journaling, so N was complete: nothing to redo. Whatever replaces the key
//! space outside this path (a snapshot install, a restore) first removes the
//! head, so an old batch is never written again over newer data.
//!
//! What is journaled (since 2026-12-06): not the kv records that the
//! batch's own events already say. A put event carries the key's new record
//! whole and a delete event names the key it removes, and the batch's
//! history (those events) is in the tree before its journal. So the head also
//! names the batch's revisions, `first..=last`, and recovery first makes
//! the writes those events imply (`implied`), then the journaled ones. Before
//! journaling, every implied write is checked against the batch's real
//! writes; if one differs (a compaction in the batch dropped events from the
//! history, say), the whole batch is journaled as before. Journaling the
//! records twice had cost about an eighth of the bytes sled wrote and of the
//! apply CPU (`keel bench apply`, BENCHMARKS.md).
//!
//! Nothing here is fsynced: like the key space itself, the journal is made
//! durable by `KvStore::flush` (the snapshot builder's fsync), and the Raft
//! log replays everything applied after it.

use std::collections::BTreeMap;

use keel_proto::mvccpb::{Event, event};
use prost::Message;

use super::keys;
use crate::error::StoreError;

/// The journal's head record: (batch number, chunk count), then, when the
/// batch's history implies its kv records, its first and last revision.
const HEAD: &[u8] = b"h";
/// Largest chunk: sled splits a leaf only past 16 records and writes a leaf
/// above 128 KiB (a quarter of its 512 KiB segment) that it rewrites as a
/// blob file of its own, so chunks stay well below an eighth of that.
const CHUNK: usize = 8 * 1024;

/// The writes of one batch: key → new value, or `None` to remove it.
pub type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// One write of a batch: key and new value (`None`: remove).
type Write = (Vec<u8>, Option<Vec<u8>>);

fn chunk_key(i: u32) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// `[u32 key length][key][u8 0 remove / 1 set][u32 value length][value]`...
fn encode<'a>(writes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + Clone) -> Vec<u8> {
    let size: usize = writes
        .clone()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in writes {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.push(u8::from(v.is_some()));
        let v = v.as_deref().unwrap_or_default();
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("corrupt apply journal: {what}"),
    ))
}

fn decode(mut b: &[u8]) -> Result<Vec<Write>, StoreError> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, StoreError> {
        if b.len() < n {
            return Err(corrupt("truncated record"));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h.to_vec())
    };
    let len = |v: Vec<u8>| u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
    while !b.is_empty() {
        let klen = len(take(&mut b, 4)?);
        let k = take(&mut b, klen)?;
        let set = take(&mut b, 1)?[0] == 1;
        let vlen = len(take(&mut b, 4)?);
        let v = take(&mut b, vlen)?;
        out.push((k, set.then_some(v)));
    }
    Ok(out)
}

/// The kv-record writes that events (oldest first) imply: a put sets its
/// key's record to the event's key-value, a delete removes the record.
pub fn implied(events: &[(i64, Event)]) -> Overlay {
    let mut out = Overlay::new();
    for (_, ev) in events {
        let Some(kv) = &ev.kv else { continue };
        let record = (ev.r#type == event::EventType::Put as i32).then(|| kv.encode_to_vec());
        out.insert(keys::kv_key(&kv.key), record);
    }
    out
}

/// Makes a batch's writes in `data`, key by key.
fn write_all(data: &sled::Tree, writes: impl IntoIterator<Item = Write>) -> Result<(), StoreError> {
    for (k, v) in writes {
        match v {
            Some(v) => data.insert(k, v)?,
            None => data.remove(k)?,
        };
    }
    Ok(())
}

/// The journal of one key space; used only under the apply lock.
pub struct Journal {
    tree: sled::Tree,
    /// Number of the last journaled batch.
    seq: std::sync::atomic::AtomicU64,
}

impl Journal {
    /// Opens the journal and finishes the batch a crash interrupted, if any.
    pub fn open(db: &sled::Db, data: &sled::Tree) -> Result<Self, StoreError> {
        let tree = db.open_tree("apply-journal")?;
        let mut seq = 0;
        if let Some(head) = tree.get(HEAD)? {
            if head.len() != 12 && head.len() != 28 {
                return Err(corrupt("bad head"));
            }
            seq = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
            let chunks = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
            let revs = (head.len() == 28).then(|| {
                let rev = |at: usize| i64::from_be_bytes(head[at..at + 8].try_into().expect("8"));
                (rev(12), rev(20))
            });
            let mut bytes = Vec::new();
            let mut complete = true;
            for i in 0..chunks {
                match tree.get(chunk_key(i))? {
                    Some(c) if c.len() >= 8 && c[..8] == seq.to_be_bytes() => {
                        bytes.extend_from_slice(&c[8..])
                    }
                    // A chunk of a later batch: this one had finished.
                    _ => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                // The writes the batch's history implies, then the journaled
                // ones (which take precedence where both name a key).
                let mut writes = match revs {
                    Some((first, last)) => implied(
                        &super::history::events_in(data, first, last).map_err(|e| corrupt(&e))?,
                    ),
                    None => Overlay::new(),
                };
                writes.extend(decode(&bytes)?);
                tracing::debug!(
                    batch = seq,
                    writes = writes.len(),
                    "redoing the last applied batch"
                );
                write_all(data, writes)?;
            }
        }
        Ok(Journal {
            tree,
            seq: seq.into(),
        })
    }

    /// Journals `overlay` (less what `events`, the batch's history, already
    /// in `data`, implies), then writes it to `data` key by key.
    pub fn write(
        &self,
        data: &sled::Tree,
        overlay: Overlay,
        events: &[(i64, Event)],
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let seq = self.seq.load(Relaxed) + 1;
        self.seq.store(seq, Relaxed);
        let implied = implied(events);
        let derive = !events.is_empty() && implied.iter().all(|(k, v)| overlay.get(k) == Some(v));
        let bytes = if derive {
            encode(overlay.iter().filter(|(k, v)| implied.get(*k) != Some(*v)))
        } else {
            encode(overlay.iter())
        };
        let mut chunks = 0u32;
        for c in bytes.chunks(CHUNK) {
            let mut v = Vec::with_capacity(8 + c.len());
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(c);
            self.tree.insert(chunk_key(chunks), v)?;
            chunks += 1;
        }
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&chunks.to_be_bytes());
        if derive {
            let (first, last) = (events[0].0, events[events.len() - 1].0);
            head.extend_from_slice(&first.to_be_bytes());
            head.extend_from_slice(&last.to_be_bytes());
        }
        self.tree.insert(HEAD, head)?;
        write_all(data, overlay)
    }

    /// Forgets the last batch: called before the key space is replaced by
    /// other means, so recovery never writes that batch over the new data.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.remove(HEAD)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens sled as `KvStore::open` does: no flusher thread, so nothing
    /// but the test holds the files when the next open comes.
    fn open(dir: &std::path::Path) -> (sled::Db, sled::Tree) {
        let db =
            crate::mvcc::open_sled(&sled::Config::new().path(dir).flush_every_ms(None)).unwrap();
        let t = db.open_tree("kv").unwrap();
        (db, t)
    }

    #[test]
    fn encoding_round_trips() {
        let mut o = Overlay::new();
        o.insert(b"a".to_vec(), Some(vec![1; 70_000]));
        o.insert(b"b".to_vec(), None);
        o.insert(b"c".to_vec(), Some(Vec::new()));
        let back = decode(&encode(o.iter())).unwrap();
        assert_eq!(back, o.into_iter().collect::<Vec<_>>());
        assert!(decode(&[0, 0, 0, 5, b'x']).is_err());
    }

    #[test]
    fn reopening_redoes_a_journaled_batch_whose_writes_were_lost() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, data) = open(dir.path());
            let j = Journal::open(&db, &data).unwrap();
            data.insert(b"gone", b"x".to_vec()).unwrap();
            let mut o = Overlay::new();
            o.insert(b"k".to_vec(), Some(vec![7; 200_000])); // several chunks
            o.insert(b"gone".to_vec(), None);
            j.write(&data, o, &[]).unwrap();
            // As if the crash came right after the head: the key space
            // holds none of the batch's writes.
            data.remove(b"k").unwrap();
            data.insert(b"gone", b"x".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let (db, data) = open(dir.path());
        let j = Journal::open(&db, &data).unwrap();
        assert_eq!(data.get(b"k").unwrap().unwrap().len(), 200_000);
        assert!(data.get(b"gone").unwrap().is_none());
        assert_eq!(j.seq.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_finished_or_cleared_batch_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, data) = open(dir.path());
            let j = Journal::open(&db, &data).unwrap();
            let mut o = Overlay::new();
            o.insert(b"k".to_vec(), Some(b"old".to_vec()));
            j.write(&data, o, &[]).unwrap();
            // The next batch journaled its first chunk, then the crash.
            j.tree
                .insert(chunk_key(0), [&2u64.to_be_bytes()[..], b"zz"].concat())
                .unwrap();
            data.insert(b"k", b"newer".to_vec()).unwrap();
            db.flush().unwrap();
        }
        {
            let (db, data) = open(dir.path());
            let j = Journal::open(&db, &data).unwrap();
            assert_eq!(&*data.get(b"k").unwrap().unwrap(), b"newer");
            let mut o = Overlay::new();
            o.insert(b"k".to_vec(), Some(b"journaled".to_vec()));
            j.write(&data, o, &[]).unwrap();
            // Replaced by other means (a snapshot install) after clear.
            j.clear().unwrap();
            data.insert(b"k", b"installed".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let (db, data) = open(dir.path());
        Journal::open(&db, &data).unwrap();
        assert_eq!(&*data.get(b"k").unwrap().unwrap(), b"installed");
    }

    /// A put and a delete as a batch's history holds them (revisions 5, 6).
    fn history(data: &sled::Tree) -> Vec<(i64, Event)> {
        use keel_proto::mvccpb::KeyValue;
        let put = KeyValue {
            key: b"a".to_vec(),
            value: vec![3; 300],
            mod_revision: 5,
            create_revision: 5,
            version: 1,
            lease: 0,
        };
        let events = vec![
            (
                5,
                Event {
                    r#type: event::EventType::Put as i32,
                    kv: Some(put),
                    prev_kv: None,
                },
            ),
            (
                6,
                Event {
                    r#type: event::EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: b"b".to_vec(),
                        mod_revision: 6,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
            ),
        ];
        for (k, v) in super::super::history::encode_runs(&events, 0) {
            data.insert(k, v).unwrap();
        }
        events
    }

    #[test]
    fn a_batch_whose_history_implies_its_records_is_redone_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let record;
        {
            let (db, data) = open(dir.path());
            let j = Journal::open(&db, &data).unwrap();
            data.insert(keys::kv_key(b"b"), b"old".to_vec()).unwrap();
            let events = history(&data);
            let mut o = implied(&events);
            record = o[&keys::kv_key(b"a")].clone().unwrap();
            o.insert(b"meta".to_vec(), Some(b"m".to_vec()));
            j.write(&data, o, &events).unwrap();
            // Only the write the events do not say was journaled.
            let head = j.tree.get(HEAD).unwrap().unwrap();
            assert_eq!(head.len(), 28);
            let chunk = j.tree.get(chunk_key(0)).unwrap().unwrap();
            assert_eq!(
                decode(&chunk[8..]).unwrap(),
                vec![(b"meta".to_vec(), Some(b"m".to_vec()))]
            );
            // The crash came right after the head.
            data.remove(keys::kv_key(b"a")).unwrap();
            data.remove(b"meta").unwrap();
            data.insert(keys::kv_key(b"b"), b"old".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let (db, data) = open(dir.path());
        Journal::open(&db, &data).unwrap();
        assert_eq!(
            data.get(keys::kv_key(b"a")).unwrap().unwrap().to_vec(),
            record
        );
        assert!(data.get(keys::kv_key(b"b")).unwrap().is_none());
        assert_eq!(&*data.get(b"meta").unwrap().unwrap(), b"m");
    }

    #[test]
    fn a_batch_whose_writes_differ_from_its_history_is_journaled_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, data) = open(dir.path());
            let j = Journal::open(&db, &data).unwrap();
            let events = history(&data);
            let mut o = implied(&events);
            // The batch wrote something else to `a` than its event says.
            o.insert(keys::kv_key(b"a"), Some(b"other".to_vec()));
            j.write(&data, o, &events).unwrap();
            assert_eq!(j.tree.get(HEAD).unwrap().unwrap().len(), 12);
            data.remove(keys::kv_key(b"a")).unwrap();
            db.flush().unwrap();
        }
        let (db, data) = open(dir.path());
        Journal::open(&db, &data).unwrap();
        assert_eq!(&*data.get(keys::kv_key(b"a")).unwrap().unwrap(), b"other");
        assert!(data.get(keys::kv_key(b"b")).unwrap().is_none());
    }
}
