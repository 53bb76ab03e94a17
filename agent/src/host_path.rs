//! Preparing a hostPath volume on this node before a container mounts it:
//! Kubernetes' type checks (`Directory`, `File`, `Socket`, ...) and
//! creating what `DirectoryOrCreate` / `FileOrCreate` ask for. The API lets
//! only admins ask for hostPath volumes.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use keel_proto::api::core::HostPathVolumeSource;

/// Checks (and, for the `*OrCreate` types, creates) the path of volume
/// `name`; the error reads as kubelet's event for the same failure.
pub fn prepare(name: &str, h: &HostPathVolumeSource) -> Result<(), String> {
    let path = Path::new(&h.path);
    let fail = |why: String| {
        Err(format!(
            "MountVolume.SetUp failed for volume {name:?}: hostPath type check failed: {why}"
        ))
    };
    let meta = std::fs::metadata(path);
    match (h.type_.as_str(), meta) {
        ("", _) => Ok(()),
        ("DirectoryOrCreate", Err(_)) => std::fs::create_dir_all(path)
            .or_else(|e| fail(format!("cannot create directory {}: {e}", h.path))),
        ("FileOrCreate", Err(_)) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .or_else(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|_| ())
                .or_else(|e| fail(format!("cannot create file {}: {e}", h.path)))
        }
        (t, Err(_)) => fail(format!("{} does not exist (type {t})", h.path)),
        (t, Ok(m)) => {
            let ft = m.file_type();
            let (ok, what) = match t {
                "Directory" | "DirectoryOrCreate" => (ft.is_dir(), "a directory"),
                "File" | "FileOrCreate" => (ft.is_file(), "a file"),
                "Socket" => (ft.is_socket(), "a socket"),
                "CharDevice" => (ft.is_char_device(), "a character device"),
                "BlockDevice" => (ft.is_block_device(), "a block device"),
                other => return fail(format!("unknown type {other:?}")),
            };
            if ok {
                Ok(())
            } else {
                fail(format!("{} is not {what}", h.path))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(path: &Path, t: &str) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.display().to_string(),
            type_: t.into(),
        }
    }

    #[test]
    fn types_are_checked_and_or_create_creates() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(prepare("v", &src(d.path(), "Directory")).is_ok());
        assert!(prepare("v", &src(&file, "File")).is_ok());
        assert!(prepare("v", &src(&d.path().join("nothing"), "")).is_ok());
        let e = prepare("v", &src(&file, "Directory")).unwrap_err();
        assert!(
            e.contains("is not a directory") && e.contains("\"v\""),
            "{e}"
        );
        assert!(prepare("v", &src(d.path(), "File")).is_err());
        assert!(prepare("v", &src(&file, "Socket")).is_err());
        let e = prepare("v", &src(&d.path().join("missing"), "Directory")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");

        let made = d.path().join("a/b");
        prepare("v", &src(&made, "DirectoryOrCreate")).unwrap();
        assert!(made.is_dir());
        let made_file = d.path().join("c/d.txt");
        prepare("v", &src(&made_file, "FileOrCreate")).unwrap();
        assert!(made_file.is_file());
        // Existing paths of the wrong kind are refused, not replaced.
        assert!(prepare("v", &src(&file, "DirectoryOrCreate")).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
