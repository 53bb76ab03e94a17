//! The Raft log's entries on disk: append-only segment files, as etcd's WAL
//! keeps them. A group of appends is one `write` and one `fdatasync` of the
//! active segment (a page or two), where a redb commit rewrote several
//! B-tree and allocator pages per fsync (BENCHMARKS.md).
//!
//! Layout: `wal/<first index, 20 digits>.seg`, each created as 16 MiB of
//! written zeros (so an append rewrites blocks already allocated and its
//! fdatasync flushes data only, with no file-size or extent change that
//! would tie it to a journal commit, and so to other writers' dirty data;
//! etcd preallocates its WAL for the same reason), then a run of records
//! `[len u32][crc32 u32][index u64][entry bytes]` (little-endian; the crc
//! covers the index and the bytes). Only this module writes them, always
//! from the log's one writer thread.
//!
//! The records end at the first all-zero header.
//!
//! Crash safety (what `open` accepts):
//! - A torn or corrupt record at the tail of the last segment is an append
//!   that was never acknowledged (its fsync never returned): it and what
//!   follows are cut off.
//! - Records must follow each other index by index. A break in the run is
//!   an interrupted truncation (`truncate_from` cuts the segment holding the
//!   cut first, then deletes later segments): everything from the break on
//!   is dropped.
//! - A corrupt record anywhere else is a damaged log: `open` fails rather
//!   than lose acknowledged entries.
//!
//! fsyncs: `append_batch` fdatasyncs the segment it wrote; a new segment and
//! every deleted one are made durable with an fsync of the directory;
//! `truncate_from` fsyncs the cut segment before deleting others.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A segment is closed for appends once it holds this many bytes.
const SEGMENT_BYTES: u64 = 16 << 20;
/// Zeros written at a time when a segment is created or a tail blanked.
const ZEROS: usize = 1 << 20;
/// Bytes before an entry's own bytes in a record.
const HEADER: usize = 16;
/// The largest record accepted when reading (a corrupt length field must not
/// make `open` allocate gigabytes).
const MAX_RECORD: usize = 1 << 30;

/// Where an entry's bytes are: segment (by its first index), offset of the
/// entry bytes, their length.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u32,
}

/// The segment files of one log and where each entry is in them.
pub struct Wal {
    dir: PathBuf,
    /// Open segments by first index; the last one takes appends.
    segs: BTreeMap<u64, (File, u64)>,
    index: BTreeMap<u64, Loc>,
}

fn seg_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all() // fsync: segment creations and deletions
}

/// Overwrites `[from, end of file)` with zeros and fdatasyncs, so nothing
/// after `from` can be read as a record again.
fn blank(file: &File, from: u64) -> io::Result<()> {
    let end = file.metadata()?.len();
    let zeros = vec![0u8; ZEROS];
    let mut at = from;
    while at < end {
        let n = (end - at).min(ZEROS as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data() // fdatasync: the blanked tail
}

/// Creates a segment of `SEGMENT_BYTES` written zeros, durably.
fn create_segment(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; ZEROS];
    let mut at = 0;
    while at < SEGMENT_BYTES {
        file.write_all_at(&zeros, at)?;
        at += ZEROS as u64;
    }
    file.sync_all()?; // fsync: the zeros and the size
    Ok(file)
}

fn crc(index: u64, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(bytes);
    h.finalize()
}

/// What reading one segment found: its good records, and the byte length
/// they end at when the segment ends in a torn or corrupt record.
struct Scan {
    records: Vec<(u64, u64, u32)>,
    torn_at: Option<u64>,
}

fn scan(file: &mut File) -> io::Result<Scan> {
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut clean = false;
    while at < data.len() {
        let head = data.get(at..at + HEADER);
        let Some(head) = head else { break };
        if head.iter().all(|b| *b == 0) {
            clean = true; // the preallocated zeros: the records end here
            break;
        }
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default()) as usize;
        let sum = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        let index = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let body = at + HEADER;
        if len > MAX_RECORD || body + len > data.len() || crc(index, &data[body..body + len]) != sum
        {
            break;
        }
        records.push((index, body as u64, len as u32));
        at = body + len;
    }
    let torn_at = (!clean && at < data.len()).then_some(at as u64);
    Ok(Scan { records, torn_at })
}

impl Wal {
    /// Opens the segments under `dir/wal` (creating it), keeping entries
    /// after `purged`, and repairs a torn tail or an interrupted truncation.
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        let dir = dir.join("wal");
        std::fs::create_dir_all(&dir)?;
        let mut firsts: Vec<u64> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut wal = Wal {
            dir,
            segs: BTreeMap::new(),
            index: BTreeMap::new(),
        };
        // The first entry kept must follow the purge point; entries up to it
        // are skipped (a segment may hold some below it and some after, as
        // after a snapshot install moved the purge point past the log).
        let mut next: Option<u64> = purged.map(|p| p + 1);
        let mut broken = false;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = wal.dir.join(seg_name(first));
            if broken {
                std::fs::remove_file(&path)?;
                continue;
            }
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let found = scan(&mut file)?;
            let mut end = 0u64;
            for (index, offset, len) in found.records {
                if purged.is_some_and(|p| index <= p) {
                    end = offset + u64::from(len);
                    continue;
                }
                if next.is_some_and(|n| n != index) {
                    tracing::warn!(
                        expected = next,
                        found = index,
                        "raft log: dropping entries after an interrupted truncation"
                    );
                    broken = true;
                    break;
                }
                next = Some(index + 1);
                end = offset + u64::from(len);
                wal.index.insert(
                    index,
                    Loc {
                        seg: first,
                        offset,
                        len,
                    },
                );
            }
            if let Some(at) = found.torn_at.filter(|_| !broken) {
                if i + 1 < count {
                    return Err(corrupt(format!(
                        "raft log segment {} is corrupt at byte {at} and is not the last one",
                        path.display()
                    )));
                }
                tracing::warn!(segment = %path.display(), at, "raft log: cutting off a torn tail (an unacknowledged append)");
                broken = true;
            }
            // A segment left with no record goes (its name would no longer
            // be its first index; it may also be one whose creation a crash
            // interrupted).
            if end == 0 {
                drop(file);
                std::fs::remove_file(&path)?;
                sync_dir(&wal.dir)?;
                continue;
            }
            if broken || found.torn_at.is_some() {
                // Blank after the last record kept: a torn tail, or the run
                // that broke off.
                blank(&file, end)?; // fdatasync inside
            }
            wal.segs.insert(first, (file, end));
        }
        Ok(wal)
    }

    /// The first and last index held.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        Some((*self.index.keys().next()?, *self.index.keys().next_back()?))
    }

    /// Reads the entry bytes at `index` (None when not held).
    pub fn read(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(loc) = self.index.get(&index) else {
            return Ok(None);
        };
        let (file, _) = self
            .segs
            .get(&loc.seg)
            .ok_or_else(|| corrupt(format!("raft log: segment of entry {index} is gone")))?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(Some(buf))
    }

    /// Appends entries (each index one past the last held, unless the log is
    /// empty) and fdatasyncs them: durable when this returns.
    pub fn append_batch<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<()> {
        let mut entries = entries.into_iter().peekable();
        let Some(&(first, _)) = entries.peek() else {
            return Ok(());
        };
        if let Some((_, last)) = self.bounds()
            && first != last + 1
        {
            return Err(io::Error::other(format!(
                "raft log: append of {first} after {last}"
            )));
        }
        let needs_new = match self.segs.last_key_value() {
            None => true,
            Some((_, (_, size))) => *size >= SEGMENT_BYTES,
        };
        if needs_new {
            let path = self.dir.join(seg_name(first));
            let file = create_segment(&path)?;
            sync_dir(&self.dir)?;
            self.segs.insert(first, (file, 0));
        }
        let (&seg, (file, size)) = self
            .segs
            .iter_mut()
            .next_back()
            .ok_or_else(|| io::Error::other("raft log: no segment to append to"))?;
        let mut buf = Vec::new();
        let mut locs = Vec::new();
        for (index, bytes) in entries {
            let offset = *size + buf.len() as u64 + HEADER as u64;
            buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc(index, bytes).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(bytes);
            locs.push((
                index,
                Loc {
                    seg,
                    offset,
                    len: bytes.len() as u32,
                },
            ));
        }
        file.write_all_at(&buf, *size)?;
        file.sync_data()?; // fdatasync: the whole group is on disk
        *size += buf.len() as u64;
        self.index.extend(locs);
        Ok(())
    }

    /// Removes every entry from `index` on, durably.
    pub fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let Some(loc) = self.index.get(&index).copied() else {
            return Ok(()); // nothing held from there
        };
        drop(self.index.split_off(&index));
        // The segment holding the cut first, then every later one: a crash in
        // between leaves a break in the run, which `open` drops.
        let later: Vec<u64> = self.segs.range(loc.seg + 1..).map(|(k, _)| *k).collect();
        let cut = loc.offset - HEADER as u64;
        if cut == 0 {
            if let Some((file, _)) = self.segs.remove(&loc.seg) {
                drop(file);
            }
            std::fs::remove_file(self.dir.join(seg_name(loc.seg)))?;
        } else if let Some((file, size)) = self.segs.get_mut(&loc.seg) {
            blank(file, cut)?; // fdatasync: the cut
            *size = cut;
        }
        for seg in later {
            self.segs.remove(&seg);
            std::fs::remove_file(self.dir.join(seg_name(seg)))?;
        }
        sync_dir(&self.dir)
    }

    /// Forgets entries up to `upto` and deletes segments holding nothing
    /// after it. The caller records the purge point durably first.
    pub fn purge_to(&mut self, upto: u64) -> io::Result<()> {
        self.index = self.index.split_off(&(upto + 1));
        let firsts: Vec<u64> = self.segs.keys().copied().collect();
        let mut deleted = false;
        for (i, first) in firsts.iter().enumerate() {
            // A segment ends where the next begins; the last one stays (it
            // takes the next appends).
            let Some(&next_first) = firsts.get(i + 1) else {
                break;
            };
            if next_first <= upto + 1 {
                self.segs.remove(first);
                std::fs::remove_file(self.dir.join(seg_name(*first)))?;
                deleted = true;
            }
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(r: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        r.map(|i| (i, format!("entry {i}").into_bytes())).collect()
    }

    fn append(w: &mut Wal, e: &[(u64, Vec<u8>)]) {
        w.append_batch(e.iter().map(|(i, b)| (*i, b.as_slice())))
            .unwrap();
    }

    #[test]
    fn entries_survive_a_reopen_and_purged_ones_do_not() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=5));
        append(&mut w, &entries(6..=9));
        drop(w);
        let w = Wal::open(d.path(), Some(3)).unwrap();
        assert_eq!(w.bounds(), Some((4, 9)));
        assert_eq!(w.read(7).unwrap().unwrap(), b"entry 7");
        assert_eq!(w.read(3).unwrap(), None);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=4));
        let end = w.segs[&1].1;
        drop(w);
        let seg = d.path().join("wal").join(seg_name(1));
        // Half of a fifth record, as a crash mid-write leaves it.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[9, 0, 0, 0, 1, 2], end).unwrap();
        drop(f);
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 4)));
        let bytes = std::fs::read(&seg).unwrap();
        assert!(
            bytes[end as usize..].iter().all(|b| *b == 0),
            "torn tail blanked"
        );
        append(&mut w, &entries(5..=5));
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.read(5).unwrap().unwrap(), b"entry 5");
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_drops_only_that_record() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=3));
        let n = w.segs[&1].1 as usize;
        drop(w);
        let seg = d.path().join("wal").join(seg_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
    }

    #[test]
    fn truncation_removes_the_suffix_durably() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=6));
        w.truncate_from(4).unwrap();
        assert_eq!(w.bounds(), Some((1, 3)));
        append(&mut w, &[(4, b"new 4".to_vec())]);
        drop(w);
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 4)));
        assert_eq!(w.read(4).unwrap().unwrap(), b"new 4");
        // From the very first entry: the segment goes, the log is empty.
        w.truncate_from(1).unwrap();
        assert_eq!(w.bounds(), None);
        append(&mut w, &entries(1..=2));
        drop(w);
        assert_eq!(Wal::open(d.path(), None).unwrap().bounds(), Some((1, 2)));
    }

    #[test]
    fn an_interrupted_truncation_drops_the_later_segments() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=3));
        drop(w);
        // A later segment starting past a gap (its predecessor was cut).
        let mut w2 = Wal::open(d.path(), None).unwrap();
        w2.segs.clear();
        w2.index.clear();
        append(&mut w2, &entries(7..=8));
        drop(w2);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 3)));
        assert!(!d.path().join("wal").join(seg_name(7)).exists());
    }

    #[test]
    fn a_corrupt_record_before_the_last_segment_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=3));
        // Force a second segment.
        w.segs.get_mut(&1).unwrap().1 = SEGMENT_BYTES;
        append(&mut w, &entries(4..=5));
        drop(w);
        let seg = d.path().join("wal").join(seg_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[HEADER] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let e = Wal::open(d.path(), None)
            .err()
            .expect("corrupt log refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn appends_after_a_purge_past_the_end_survive_a_reopen() {
        // A snapshot install moves the purge point past the log's end; the
        // next appends follow the purge point, in the same segment.
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=3));
        w.purge_to(50).unwrap();
        assert_eq!(w.bounds(), None);
        append(&mut w, &entries(51..=52));
        drop(w);
        let w = Wal::open(d.path(), Some(50)).unwrap();
        assert_eq!(w.bounds(), Some((51, 52)));
        assert_eq!(w.read(52).unwrap().unwrap(), b"entry 52");
    }

    #[test]
    fn purging_deletes_whole_segments_only() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        append(&mut w, &entries(1..=3));
        w.segs.get_mut(&1).unwrap().1 = SEGMENT_BYTES;
        append(&mut w, &entries(4..=6));
        w.purge_to(2).unwrap();
        assert!(d.path().join("wal").join(seg_name(1)).exists());
        w.purge_to(3).unwrap();
        assert!(!d.path().join("wal").join(seg_name(1)).exists());
        assert_eq!(w.bounds(), Some((4, 6)));
        drop(w);
        assert_eq!(Wal::open(d.path(), Some(3)).unwrap().bounds(), Some((4, 6)));
    }
}
