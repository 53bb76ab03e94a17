//! Reading backup files offline: open (when sealed), decode and verify,
//! print the header and what `inspect` shows, and list a directory of them.

use std::path::Path;

use anyhow::{Context, bail};
use keel_store::backup::{self, BackupHeader};
use keel_store::sealed::{self, Secret};

use super::keys::NeedsSecret;

/// What `inspect` prints after the header: keys per kind and namespace, and
/// the keys under `prefix`. Only keys, never values: the CA key and token
/// hashes are in the store (any value shown must go through
/// `backup::printable_value`, which redacts them).
pub(super) fn inspect_lines(b: &backup::Backup, prefix: Option<&str>) -> Vec<String> {
    let records = b.records();
    let mut out = Vec::new();
    let mut by_ns: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (k, _) in records.iter().filter(|(k, _)| k.first() == Some(&b'k')) {
        let key = String::from_utf8_lossy(&k[1..]).into_owned();
        let parts: Vec<&str> = key.splitn(5, '/').collect();
        // /registry/<kind>/<namespace>/<name>
        if parts.len() == 5 && parts[1] == "registry" {
            *by_ns.entry((parts[2].into(), parts[3].into())).or_default() += 1;
        }
    }
    if !by_ns.is_empty() {
        out.push("by namespace:".to_string());
        for ((kind, ns), n) in &by_ns {
            out.push(format!("  {kind:<20} {ns:<20} {n}"));
        }
    }
    if let Some(p) = prefix {
        out.push(format!("keys under {p:?}:"));
        for (k, _) in records.iter().filter(|(k, _)| k.first() == Some(&b'k')) {
            if k[1..].starts_with(p.as_bytes()) {
                out.push(format!("  {}", String::from_utf8_lossy(&k[1..])));
            }
        }
    }
    out
}

/// Decodes and verifies backup file bytes, opening them first if they are
/// sealed; also says how they were encrypted. Errors do not name the file.
pub(super) fn load(
    bytes: impl Into<backup::FileBytes>,
    secret: Option<&Secret>,
) -> anyhow::Result<(backup::Backup, Option<&'static str>)> {
    let bytes = bytes.into();
    if !sealed::is_sealed(&bytes) {
        return Ok((backup::decode_file(bytes)?, None));
    }
    let plain = sealed::open(&bytes, secret.ok_or(NeedsSecret)?)?;
    Ok((backup::decode_owned(plain)?, sealed::describe(&bytes)))
}

/// Reads, opens if sealed, decodes and verifies a backup file.
pub(super) fn read(
    file: &Path,
    secret: Option<&Secret>,
) -> anyhow::Result<(backup::Backup, Option<&'static str>)> {
    let bytes =
        backup::FileBytes::open(file).with_context(|| format!("reading {}", file.display()))?;
    load(bytes, secret).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub(super) fn print_header(h: &BackupHeader, encryption: Option<&str>) {
    println!("format version  {}", h.format_version);
    println!("keel version    {}", h.keel_version);
    println!("cluster id      {:x}", h.cluster_id);
    println!(
        "source member   {} ({:x})",
        h.source_member, h.source_member_id
    );
    println!(
        "revision        {} (compacted below {})",
        h.revision, h.compact_revision
    );
    println!(
        "raft            term {} index {}",
        h.raft_term, h.raft_index
    );
    println!("created         {} (unix seconds)", h.created_at_unix);
    println!("keys            {}", h.key_count);
    for (kind, n) in &h.counts_by_kind {
        println!("  {kind:<20} {n}");
    }
    println!(
        "content hash    {:08x} (HashKV at revision {})",
        h.content_hash, h.revision
    );
    println!("encryption      {}", encryption.unwrap_or("none"));
}

pub(super) fn list(dir: &Path, secret: Option<&Secret>) -> anyhow::Result<()> {
    let files = backup::files_in(dir).with_context(|| format!("reading {}", dir.display()))?;
    println!(
        "{:<56} {:>9} {:>7} {:>12} {:>9}  STATUS",
        "FILE", "REVISION", "KEYS", "CREATED", "BYTES"
    );
    let (mut bad, mut locked) = (0, 0);
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        match backup::FileBytes::open(f)
            .map_err(anyhow::Error::from)
            .and_then(|b| load(b, secret))
        {
            Ok((b, enc)) => println!(
                "{name:<56} {:>9} {:>7} {:>12} {size:>9}  ok{}",
                b.header.revision,
                b.header.key_count,
                b.header.created_at_unix,
                if enc.is_some() { ", encrypted" } else { "" }
            ),
            // Without a secret an encrypted file can be neither read nor
            // judged: say so, and do not call it bad.
            Err(e) if e.is::<NeedsSecret>() => {
                locked += 1;
                println!(
                    "{name:<56} {:>9} {:>7} {:>12} {size:>9}  encrypted",
                    "-", "-", "-"
                );
            }
            Err(e) => {
                bad += 1;
                println!(
                    "{name:<56} {:>9} {:>7} {:>12} {size:>9}  BAD: {e}",
                    "-", "-", "-"
                );
            }
        }
    }
    if locked > 0 {
        println!(
            "{locked} encrypted, not verified: pass --passphrase-file, KEEL_BACKUP_PASSPHRASE \
             or --key-file to check them"
        );
    }
    if bad > 0 {
        bail!("{bad} of {} backups do not verify", files.len());
    }
    Ok(())
}
