//! Secrets of backup files: where an encrypted backup's passphrase or key
//! comes from, signing and encryption key generation, reading keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use keel_store::backup;
use keel_store::sealed::Secret;

/// The environment variable that holds a passphrase itself. It has no flag:
/// a value on the command line would show in `ps` and shell history.
pub(super) const PASSPHRASE_ENV: &str = "KEEL_BACKUP_PASSPHRASE";

/// Where the passphrase or key of an encrypted backup comes from: shared by
/// every subcommand that writes or reads backup files. Besides these two,
/// the passphrase itself may be in KEEL_BACKUP_PASSPHRASE; at most one of
/// the three may be set.
#[derive(Args, Debug, Default, Clone)]
pub(super) struct SecretArgs {
    /// A file holding the encryption passphrase (a trailing newline is not
    /// part of it). Or set KEEL_BACKUP_PASSPHRASE to the passphrase itself.
    #[arg(long, env = "KEEL_BACKUP_PASSPHRASE_FILE")]
    pub(super) passphrase_file: Option<PathBuf>,
    /// A file holding a 32-byte encryption key in hex (from `keel backup
    /// keygen --encryption`).
    #[arg(long, env = "KEEL_BACKUP_KEY_FILE")]
    pub(super) key_file: Option<PathBuf>,
}

impl SecretArgs {
    /// The secret these options (and KEEL_BACKUP_PASSPHRASE) name, if any.
    pub(super) fn secret(&self) -> anyhow::Result<Option<Secret>> {
        resolve_secret(
            self.passphrase_file.as_deref(),
            self.key_file.as_deref(),
            std::env::var_os(PASSPHRASE_ENV),
        )
    }
}

pub(super) fn resolve_secret(
    passphrase_file: Option<&Path>,
    key_file: Option<&Path>,
    env_passphrase: Option<std::ffi::OsString>,
) -> anyhow::Result<Option<Secret>> {
    let given = [
        passphrase_file.is_some(),
        env_passphrase.is_some(),
        key_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        // Guessing which one was meant could seal a backup with a secret
        // its operator does not know they used.
        bail!(
            "give only one of --passphrase-file (KEEL_BACKUP_PASSPHRASE_FILE), \
             KEEL_BACKUP_PASSPHRASE and --key-file (KEEL_BACKUP_KEY_FILE)"
        );
    }
    if let Some(p) = passphrase_file {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        // Editors and `echo` end the file with a newline; it is not part
        // of the passphrase (or the same passphrase typed elsewhere fails).
        let pass = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if pass.is_empty() {
            bail!("{}: the passphrase is empty", p.display());
        }
        return Ok(Some(Secret::Passphrase(pass.to_string())));
    }
    if let Some(v) = env_passphrase {
        let pass = v
            .into_string()
            .map_err(|_| anyhow::anyhow!("{PASSPHRASE_ENV} is not valid UTF-8"))?;
        if pass.is_empty() {
            bail!("{PASSPHRASE_ENV} is set but empty");
        }
        return Ok(Some(Secret::Passphrase(pass)));
    }
    key_file.map(|k| read_hex32(k).map(Secret::Key)).transpose()
}

/// A sealed backup was read without a passphrase or key.
#[derive(Debug)]
pub(super) struct NeedsSecret;

impl std::fmt::Display for NeedsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "this backup is encrypted: pass --passphrase-file, KEEL_BACKUP_PASSPHRASE or --key-file",
        )
    }
}

impl std::error::Error for NeedsSecret {}

/// Writes 32 secret bytes as hex into a new file only its owner can read.
pub(super) fn write_secret_hex(out: &Path, secret: &[u8; 32]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    writeln!(f, "{}", backup::hex(secret))?;
    f.sync_all()?;
    Ok(())
}

pub(super) fn keygen(out: &Path) -> anyhow::Result<()> {
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    write_secret_hex(out, &seed)?;
    let public = out.with_extension("pub");
    std::fs::write(
        &public,
        format!("{}\n", backup::hex(key.verifying_key().as_bytes())),
    )?;
    println!(
        "secret key {} (keep it on the masters)\npublic key {} (give it to auditors)",
        out.display(),
        public.display()
    );
    Ok(())
}

pub(super) fn enc_keygen(out: &Path) -> anyhow::Result<()> {
    write_secret_hex(out, &rand::random())?;
    println!(
        "encryption key {} (mode 0600): use it with `keel backup save --encrypt --key-file`; \
         keep a copy away from the cluster, encrypted backups cannot be restored without it",
        out.display()
    );
    Ok(())
}

pub fn read_hex32(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{}: not a key (want 64 hex digits)", path.display());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

pub(super) fn read_secret(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    Ok(ed25519_dalek::SigningKey::from_bytes(&read_hex32(path)?))
}

pub(super) fn read_public(path: &Path) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    ed25519_dalek::VerifyingKey::from_bytes(&read_hex32(path)?)
        .map_err(|e| anyhow::anyhow!("{}: not a public key: {e}", path.display()))
}
