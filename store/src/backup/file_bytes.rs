//! A backup file's bytes: mapped from the file (read through the page cache
//! instead of copied into fresh process memory, which on a VM cost more than
//! the copy), or already in memory (opened from a sealed file, or tests).

use std::ops::Deref;
use std::path::Path;

/// A backup file's bytes, mapped or owned.
pub enum FileBytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl FileBytes {
    /// Maps the file at `path` (an empty file is read: there is nothing to
    /// map). Backup files are written once, to a temp name, and renamed into
    /// place; one changed in place while mapped can fault the reader, as with
    /// etcd's own snapshot files (bbolt maps them too).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Self::Owned(Vec::new()));
        }
        // SAFETY: see above; the mapping is read-only and private.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
        Ok(Self::Mapped(map))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Mapped(m) => m,
        }
    }
}

/// Shows the size, not hundreds of MiB of bytes.
impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Owned(_) => "owned",
            Self::Mapped(_) => "mapped",
        };
        write!(f, "FileBytes({kind}, {} bytes)", self.len())
    }
}

impl From<Vec<u8>> for FileBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::Owned(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_as_its_bytes_and_an_empty_one_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"some bytes").unwrap();
        assert_eq!(&*FileBytes::open(&p).unwrap(), b"some bytes");
        std::fs::write(&p, b"").unwrap();
        assert!(FileBytes::open(&p).unwrap().is_empty());
        assert!(FileBytes::open(&dir.path().join("missing")).is_err());
    }
}
