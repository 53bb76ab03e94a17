//! Writing backup files atomically (temp file, fsync, rename, fsync of the
//! directory): from parts already in memory, or as the dump streams in,
//! before the header (computed from the whole dump) is known.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::FileParts;

/// Bytes before the dump in a file written as it streams in: the magic,
/// the header length, the header JSON padded with spaces, the data length.
/// Room for a header with a few hundred resource kinds; a larger one makes
/// [`StreamedFile::finish`] rewrite the file whole.
pub const STREAMED_HEAD: usize = 8192;

/// The temp file next to `path` and the directory that holds both.
fn temp_of(path: &Path) -> (PathBuf, PathBuf) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("backup");
    (dir.join(format!(".{name}.tmp")), dir.to_path_buf())
}

/// Renames the fsynced temp file over `path`, then fsyncs the directory.
fn publish(tmp: &Path, path: &Path, dir: &Path) -> io::Result<()> {
    std::fs::rename(tmp, path)?;
    File::open(dir)?.sync_all() // fsync: the rename
}

/// Writes a file (the concatenation of `parts`) atomically: temp file,
/// fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let (tmp, dir) = temp_of(path);
    let mut f = File::create(&tmp)?;
    for p in parts {
        f.write_all(p)?;
    }
    f.sync_all()?; // fsync: the file's bytes
    publish(&tmp, path, &dir)
}

/// A backup file written while its dump streams in: the dump's bytes go to
/// the temp file after [`STREAMED_HEAD`] reserved bytes as they arrive, and
/// [`finish`](Self::finish) fills in the head and the checksum once the
/// whole dump is known. Dropped unfinished, it removes its temp file.
pub struct StreamedFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    file: File,
    /// Dump bytes written so far.
    written: u64,
    done: bool,
}

impl StreamedFile {
    /// Creates the temp file for `path` (nothing is at `path` until
    /// [`finish`](Self::finish)).
    pub fn create(path: &Path) -> io::Result<Self> {
        let (tmp, dir) = temp_of(path);
        // Readable too: `map_dump` maps it.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            dir,
            file,
            written: 0,
            done: false,
        })
    }

    /// Appends streamed dump bytes (anything past the dump's end, such as
    /// the stream's own checksum, is cut off by `finish`).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(bytes, STREAMED_HEAD as u64 + self.written)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The dump bytes appended so far, mapped from the temp file (read
    /// through the page cache they were just written to).
    pub fn map_dump(&self) -> io::Result<memmap2::Mmap> {
        // SAFETY: the temp file is this process's own (created by
        // `create`, under a dot-name); nothing truncates it while mapped:
        // `finish` only cuts bytes past the dump that is read.
        unsafe {
            memmap2::MmapOptions::new()
                .offset(STREAMED_HEAD as u64)
                .len(self.written as usize)
                .populate()
                .map(&self.file)
        }
    }

    /// Flushes the dump written so far to disk; called while the header is
    /// being computed, so that `finish`'s own fsync has little left to do.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data() // fsync: the streamed dump's bytes
    }

    /// Completes the file as `parts` (whose dump must be the bytes appended,
    /// or a prefix of them), then publishes it atomically. A head of another
    /// size than [`STREAMED_HEAD`] (a header too large for the reserved
    /// room) rewrites the file whole.
    pub fn finish(mut self, parts: &FileParts<'_>) -> io::Result<()> {
        let dump = parts.dump.len() as u64;
        if parts.head.len() == STREAMED_HEAD && dump <= self.written {
            let end = STREAMED_HEAD as u64 + dump;
            self.file.set_len(end)?;
            self.file.write_all_at(&parts.head, 0)?;
            self.file.write_all_at(&parts.tail, end)?;
        } else {
            // The dump may be mapped from this very file: copied out
            // before the file is cut.
            let dump = parts.dump.to_vec();
            self.file.set_len(0)?;
            let mut at = 0;
            for p in [&parts.head[..], &dump, &parts.tail] {
                self.file.write_all_at(p, at)?;
                at += p.len() as u64;
            }
        }
        self.file.sync_all()?; // fsync: head, checksum and the file's length
        self.done = true;
        publish(&self.tmp, &self.path, &self.dir)
    }
}

impl Drop for StreamedFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupHeader, FORMAT_VERSION, encode_parts_padded};

    fn header(kinds: usize) -> BackupHeader {
        BackupHeader {
            format_version: FORMAT_VERSION,
            keel_version: "0".into(),
            cluster_id: 1,
            source_member: "m1".into(),
            source_member_id: 1,
            revision: 1,
            compact_revision: 0,
            raft_term: 1,
            raft_index: 1,
            created_at_unix: 0,
            key_count: 0,
            counts_by_kind: (0..kinds).map(|i| (format!("kind{i:05}"), 1)).collect(),
            content_hash: 0,
        }
    }

    fn streamed(path: &Path, parts: &FileParts<'_>, extra: &[u8]) {
        let mut f = StreamedFile::create(path).unwrap();
        for chunk in parts.dump.chunks(7) {
            f.append(chunk).unwrap();
        }
        f.append(extra).unwrap();
        let map = f.map_dump().unwrap();
        assert_eq!(&map[..parts.dump.len()], parts.dump);
        assert_eq!(&map[parts.dump.len()..], extra);
        f.sync_data().unwrap();
        assert!(!path.exists(), "nothing is published before finish");
        f.finish(parts).unwrap();
    }

    #[test]
    fn a_streamed_file_is_the_encoded_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.keelbak");
        let dump = b"some dump bytes, any will do here".to_vec();
        let parts = encode_parts_padded(&header(2), &dump, STREAMED_HEAD);
        assert_eq!(parts.head.len(), STREAMED_HEAD);
        // The stream's trailing checksum is written, then cut off.
        streamed(&path, &parts, &[7; 32]);
        assert_eq!(std::fs::read(&path).unwrap(), parts.concat());
        assert!(!dir.path().join(".a.keelbak.tmp").exists());
    }

    #[test]
    fn a_header_too_large_for_the_room_rewrites_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.keelbak");
        let dump = vec![3u8; 100];
        let parts = encode_parts_padded(&header(1000), &dump, STREAMED_HEAD);
        assert!(parts.head.len() > STREAMED_HEAD);
        streamed(&path, &parts, b"");
        assert_eq!(std::fs::read(&path).unwrap(), parts.concat());
    }

    #[test]
    fn an_unfinished_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.keelbak");
        let mut f = StreamedFile::create(&path).unwrap();
        f.append(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
