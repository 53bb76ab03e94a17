//! The audit log: one JSON line per mutating or denied request (time, user,
//! verb, resource, namespace, name, result code) in a file on the master that
//! served it, rotated by size.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One audited request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time: String,
    pub user: String,
    pub verb: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub code: u16,
}

/// Opens `path` for appending, created readable by its owner only (who did
/// what is for the cluster's operators).
fn open_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// A size-rotated JSON-lines file: `audit.log`, then `audit.log.1` ... `.N`.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<(File, u64)>,
}

impl AuditLog {
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<AuditLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.log");
        let file = open_private(&path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog {
            path,
            max_bytes,
            keep: keep.max(1),
            file: Mutex::new((file, size)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry, rotating first when the file is full.
    pub fn record(&self, e: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 > 0 && g.1 + line.len() as u64 > self.max_bytes {
            for i in (1..self.keep).rev() {
                let from = self.rotated(i);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(i + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            g.0 = open_private(&self.path)?;
            g.1 = 0;
        }
        g.0.write_all(&line)?;
        g.1 += line.len() as u64;
        Ok(())
    }

    fn rotated(&self, i: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 300, 2).unwrap();
        let e = AuditEntry {
            time: "2026-01-01T00:00:00Z".into(),
            user: "alice".into(),
            verb: "create".into(),
            resource: "deployments".into(),
            namespace: "default".into(),
            name: "web".into(),
            code: 201,
        };
        for _ in 0..10 {
            log.record(&e).unwrap();
        }
        let cur = std::fs::read_to_string(log.path()).unwrap();
        let first: AuditEntry = serde_json::from_str(cur.lines().next().unwrap()).unwrap();
        assert_eq!(first, e);
        assert!(cur.len() <= 300);
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
