//! Backups written by the leader on a schedule (`--backup-dir`), and the
//! two steps every backup writer shares: write a file atomically and read
//! it back through the verifier, and list a directory's backup files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::StoreError;
use crate::node::Node;
use crate::sealed::{self, Secret};

/// The backup files (`*.keelbak`) in `dir`, sorted by name (oldest first for
/// the names scheduled backups get).
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "keelbak"))
        .collect();
    all.sort();
    Ok(all)
}

/// A backup file as written by [`write_file`] and verified by [`read_verified`].
pub struct Written {
    /// The file's size on disk.
    pub len: u64,
    /// How the file is encrypted (`sealed::describe`), if it is.
    pub encryption: Option<&'static str>,
}

fn sealed_err(e: sealed::SealError) -> StoreError {
    StoreError::Config(format!("backup: {e}"))
}

/// Seals `file` with `seal` (if given) and writes it atomically to `path`.
/// Every writer then calls [`read_verified`]: a backup is only reported
/// written once it is known to restore.
pub fn write_file(
    path: &Path,
    file: &super::FileParts<'_>,
    seal: Option<&Secret>,
) -> Result<(), StoreError> {
    match seal {
        Some(s) => {
            let sealed = sealed::seal(&file.concat(), s).map_err(sealed_err)?;
            super::write_atomically(path, &[&sealed])?
        }
        None => super::write_atomically(path, &file.slices())?,
    }
    Ok(())
}

/// Reads a written backup back, opens it if sealed and verifies it. With
/// `mapped`, the file is mapped, read through the page cache it was just
/// written to (for the CLI); a master reads it into memory, as a file
/// truncated by someone else while mapped would fault the process.
pub fn read_verified(
    path: &Path,
    seal: Option<&Secret>,
    mapped: bool,
) -> Result<Written, StoreError> {
    let bytes = match mapped {
        true => super::FileBytes::open(path)?,
        false => std::fs::read(path)?.into(),
    };
    let len = bytes.len() as u64;
    let encryption = sealed::describe(&bytes);
    let plain = match seal {
        Some(s) => sealed::open(&bytes, s).map_err(sealed_err)?.into(),
        None => bytes,
    };
    super::decode_file(plain).map_err(|e| {
        StoreError::Config(format!("backup {} does not verify: {e}", path.display()))
    })?;
    Ok(Written { len, encryption })
}

/// While `node` leads: writes a verified backup into `dir` every
/// `backup_interval` and keeps the newest `backup_retain` of them.
pub async fn run(node: Arc<Node>, dir: PathBuf) {
    let mut stop = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(node.cfg.backup_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.is_leader() {
            continue;
        }
        let n = node.clone();
        let dir2 = dir.clone();
        match tokio::task::spawn_blocking(move || write_one(&n, &dir2)).await {
            Ok(Ok(path)) => {
                tracing::info!(path = %path.display(), "scheduled backup written and verified")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled backup failed"),
            Err(e) => tracing::error!(error = %e, "scheduled backup task failed"),
        }
    }
}

/// Writes one backup of `node`'s key space into `dir` and prunes old ones.
pub fn write_one(node: &Node, dir: &Path) -> Result<PathBuf, StoreError> {
    let (dump, _, _) = node.kv.dump();
    let m = node.metrics();
    let source = super::Source {
        member: node.cfg.name.clone(),
        member_id: node.id,
        raft_term: m.current_term,
        raft_index: m.last_applied.map(|l| l.index).unwrap_or(0),
    };
    let (header, file) =
        super::build(&dump, &source, 0).map_err(|e| StoreError::Config(format!("backup: {e}")))?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "keel-{:016x}-{:012}-{}.keelbak",
        header.cluster_id, header.revision, header.created_at_unix
    ));
    let seal = node.cfg.backup_seal.as_ref();
    write_file(&path, &file, seal)?;
    drop(file);
    drop(dump);
    read_verified(&path, seal, false)?;
    let ours: Vec<PathBuf> = files_in(dir)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("keel-"))
        })
        .collect();
    let excess = ours.len().saturating_sub(node.cfg.backup_retain.max(1));
    for old in &ours[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(path)
}
