//! `keel backup save|verify|list|keygen|inspect|restore|drill`: online
//! backups into one self-checking file, optionally encrypted, checked,
//! listed and restored offline (format: docs/backup-format.md).

use keel_proto::pki::Credentials;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{MemberListRequest, RangeRequest, SnapshotRequest, StatusRequest};
use keel_store::backup::{self, BackupHeader};
use keel_store::sealed::{self, Secret};
use sha2::{Digest, Sha256};

use crate::client::{connect_any, parse_endpoints};

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: BackupCmd,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Take an online, consistent backup of a running cluster into one file.
    Save {
        #[arg(long, env = "KEEL_ENDPOINTS")]
        endpoints: String,
        #[arg(long)]
        out: PathBuf,
        /// Sign the backup with this Ed25519 key (from `keel backup keygen`).
        /// The signature covers the plain backup, inside the encryption.
        #[arg(long, env = "KEEL_BACKUP_SIGN_KEY")]
        sign_key: Option<PathBuf>,
        /// Encrypt the file (XChaCha20-Poly1305) with the passphrase or key
        /// given by the options below; one of them is then required.
        #[arg(long, env = "KEEL_BACKUP_ENCRYPT")]
        encrypt: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Check a backup file offline: checksum, format, every record, header
    /// and, with --verify-key, that this key signed it.
    Verify {
        file: PathBuf,
        #[arg(long, env = "KEEL_BACKUP_VERIFY_KEY")]
        verify_key: Option<PathBuf>,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// List the backups in a directory (scheduled ones included), each
    /// verified; encrypted ones only with a passphrase or key.
    List {
        #[arg(long, env = "KEEL_BACKUP_DIR")]
        backup_dir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Create an Ed25519 key pair for signing backups: KEY (secret, mode
    /// 0600) and KEY.pub (for auditors); with --encryption, a random key
    /// for `--key-file` instead.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Write a 32-byte encryption key (hex, mode 0600) for `save
        /// --encrypt --key-file`, not a signing key pair.
        #[arg(long, env = "KEEL_BACKUP_KEYGEN_ENCRYPTION")]
        encryption: bool,
    },
    /// List what a backup holds (kinds and counts, keys under a prefix);
    /// never values.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Build a member's data dir for a new cluster from a backup (same keys
    /// and revisions, new cluster id); then start it with `keel master`.
    Restore {
        file: PathBuf,
        /// The new member's data dir (must not hold data yet).
        #[arg(long, required_unless_present = "all_members")]
        data_dir: Option<PathBuf>,
        /// Restore every member of --initial-cluster under DIR/<name>.
        #[arg(long, requires = "initial_cluster")]
        all_members: Option<PathBuf>,
        /// The member's name (printed in the start command).
        #[arg(long, default_value = "m1")]
        name: String,
        /// The new cluster: name=peer-address,... (printed in the start command).
        #[arg(long)]
        initial_cluster: Option<String>,
        /// Move the revision this far past the backup's and mark everything
        /// below as compacted, so old watchers relist instead of seeing
        /// revisions go backwards.
        #[arg(long, default_value_t = 0)]
        bump_revision: i64,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Restore into a throw-away single-member cluster, start it, and check
    /// its HashKV at the backup's revision against the header: a report an
    /// auditor can file.
    Drill {
        file: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

/// The environment variable that holds a passphrase itself. It has no flag:
/// a value on the command line would show in `ps` and shell history.
const PASSPHRASE_ENV: &str = "KEEL_BACKUP_PASSPHRASE";

/// Where the passphrase or key of an encrypted backup comes from: shared by
/// every subcommand that writes or reads backup files. Besides these two,
/// the passphrase itself may be in KEEL_BACKUP_PASSPHRASE; at most one of
/// the three may be set.
#[derive(Args, Debug, Default, Clone)]
struct SecretArgs {
    /// A file holding the encryption passphrase (a trailing newline is not
    /// part of it). Or set KEEL_BACKUP_PASSPHRASE to the passphrase itself.
    #[arg(long, env = "KEEL_BACKUP_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    /// A file holding a 32-byte encryption key in hex (from `keel backup
    /// keygen --encryption`).
    #[arg(long, env = "KEEL_BACKUP_KEY_FILE")]
    key_file: Option<PathBuf>,
}

impl SecretArgs {
    /// The secret these options (and KEEL_BACKUP_PASSPHRASE) name, if any.
    fn secret(&self) -> anyhow::Result<Option<Secret>> {
        resolve_secret(
            self.passphrase_file.as_deref(),
            self.key_file.as_deref(),
            std::env::var_os(PASSPHRASE_ENV),
        )
    }
}

fn resolve_secret(
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
struct NeedsSecret;

impl std::fmt::Display for NeedsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "this backup is encrypted: pass --passphrase-file, KEEL_BACKUP_PASSPHRASE or --key-file",
        )
    }
}

impl std::error::Error for NeedsSecret {}

pub async fn run(a: BackupArgs, creds: &Credentials) -> anyhow::Result<()> {
    match a.cmd {
        BackupCmd::Save {
            endpoints,
            out,
            sign_key,
            encrypt,
            secret,
        } => {
            let key = sign_key.as_deref().map(read_secret).transpose()?;
            let seal_with = match (encrypt, secret.secret()?) {
                (true, Some(s)) => Some(s),
                (true, None) => bail!(
                    "--encrypt needs a passphrase or key: pass --passphrase-file, \
                     KEEL_BACKUP_PASSPHRASE or --key-file"
                ),
                // A secret without --encrypt is most likely a forgotten
                // flag: refuse rather than write secrets in the clear.
                (false, Some(_)) => bail!(
                    "a passphrase or key is given but not --encrypt: add --encrypt \
                     (KEEL_BACKUP_ENCRYPT=true), or drop the secret to save unencrypted"
                ),
                (false, None) => None,
            };
            save(
                creds,
                &parse_endpoints(&endpoints),
                &out,
                key.as_ref(),
                seal_with.as_ref(),
            )
            .await
        }
        BackupCmd::Verify {
            file,
            verify_key,
            secret,
        } => {
            let (b, enc) = read(&file, secret.secret()?.as_ref())?;
            if let Some(k) = &verify_key {
                backup::check_signer(&b, &read_public(k)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            }
            print_header(&b.header, enc);
            match (b.signer, &verify_key) {
                (Some(k), Some(_)) => println!("signature       valid, by {}", backup::hex(&k)),
                (Some(k), None) => println!(
                    "signature       consistent, by {} (give --verify-key to check who signed)",
                    backup::hex(&k)
                ),
                (None, _) => println!("signature       none"),
            }
            println!(
                "OK: {} verified ({} records)",
                file.display(),
                b.records.len()
            );
            Ok(())
        }
        BackupCmd::Keygen { out, encryption } => {
            if encryption {
                enc_keygen(&out)
            } else {
                keygen(&out)
            }
        }
        BackupCmd::List { backup_dir, secret } => list(&backup_dir, secret.secret()?.as_ref()),
        BackupCmd::Restore {
            file,
            data_dir,
            all_members,
            name,
            initial_cluster,
            bump_revision,
            secret,
        } => {
            let (b, _) = read(&file, secret.secret()?.as_ref())?;
            let targets: Vec<(String, PathBuf)> = match (&all_members, &data_dir) {
                (Some(root), _) => keel_store::parse_initial_cluster(
                    initial_cluster.as_deref().unwrap_or_default(),
                )
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .map(|(n, _)| (n.clone(), root.join(n)))
                .collect(),
                (None, Some(d)) => vec![(name.clone(), d.clone())],
                (None, None) => bail!("give --data-dir or --all-members"),
            };
            for (member, dir) in &targets {
                restore_into(&b, dir, bump_revision).await?;
                let ic = initial_cluster.as_deref().unwrap_or("<name=peer,...>");
                println!(
                    "restored revision {} ({} keys) into {}\n  start: keel master --name {member} --data-dir {} --initial-cluster {ic}",
                    b.header.revision,
                    b.header.key_count,
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
        BackupCmd::Drill { file, secret } => drill(&file, secret.secret()?.as_ref()).await,
        BackupCmd::Inspect {
            file,
            prefix,
            secret,
        } => {
            let (b, enc) = read(&file, secret.secret()?.as_ref())?;
            print_header(&b.header, enc);
            for line in inspect_lines(&b, prefix.as_deref()) {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// What `inspect` prints after the header: keys per kind and namespace, and
/// the keys under `prefix`. Only keys, never values: the CA key and token
/// hashes are in the store (any value shown must go through
/// `backup::printable_value`, which redacts them).
fn inspect_lines(b: &backup::Backup, prefix: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_ns: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (k, _) in b.records.iter().filter(|(k, _)| k.first() == Some(&b'k')) {
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
        for (k, _) in b.records.iter().filter(|(k, _)| k.first() == Some(&b'k')) {
            if k[1..].starts_with(p.as_bytes()) {
                out.push(format!("  {}", String::from_utf8_lossy(&k[1..])));
            }
        }
    }
    out
}

/// Decodes and verifies backup file bytes, opening them first if they are
/// sealed; also says how they were encrypted. Errors do not name the file.
fn load(
    bytes: &[u8],
    secret: Option<&Secret>,
) -> anyhow::Result<(backup::Backup, Option<&'static str>)> {
    if !sealed::is_sealed(bytes) {
        return Ok((backup::decode(bytes)?, None));
    }
    let plain = sealed::open(bytes, secret.ok_or(NeedsSecret)?)?;
    Ok((backup::decode(&plain)?, sealed::describe(bytes)))
}

/// Reads, opens if sealed, decodes and verifies a backup file.
fn read(
    file: &Path,
    secret: Option<&Secret>,
) -> anyhow::Result<(backup::Backup, Option<&'static str>)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    load(&bytes, secret).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn print_header(h: &BackupHeader, encryption: Option<&str>) {
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

/// Writes 32 secret bytes as hex into a new file only its owner can read.
fn write_secret_hex(out: &Path, secret: &[u8; 32]) -> anyhow::Result<()> {
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

fn keygen(out: &Path) -> anyhow::Result<()> {
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

fn enc_keygen(out: &Path) -> anyhow::Result<()> {
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

fn read_secret(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    Ok(ed25519_dalek::SigningKey::from_bytes(&read_hex32(path)?))
}

fn read_public(path: &Path) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    ed25519_dalek::VerifyingKey::from_bytes(&read_hex32(path)?)
        .map_err(|e| anyhow::anyhow!("{}: not a public key: {e}", path.display()))
}

async fn save(
    creds: &Credentials,
    endpoints: &[String],
    out: &Path,
    sign_key: Option<&ed25519_dalek::SigningKey>,
    seal_with: Option<&Secret>,
) -> anyhow::Result<()> {
    let ch = connect_any(creds, endpoints).await?;
    // A linearizable read first: the member has applied everything
    // committed before the backup started.
    KvClient::new(ch.clone())
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .context("read barrier")?;
    let status = MaintenanceClient::new(ch.clone())
        .status(StatusRequest {})
        .await?
        .into_inner();
    let me = status.header.map(|h| h.member_id).unwrap_or(0);
    let name = ClusterClient::new(ch.clone())
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await?
        .into_inner()
        .members
        .into_iter()
        .find(|m| m.id == me)
        .map(|m| m.name)
        .unwrap_or_default();
    let mut stream = MaintenanceClient::new(ch)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?.blob);
    }
    if data.len() < 32 {
        bail!("snapshot stream too short ({} bytes)", data.len());
    }
    let sum = data.split_off(data.len() - 32);
    if Sha256::digest(&data).as_slice() != sum.as_slice() {
        bail!("snapshot stream checksum mismatch: transfer corrupted");
    }
    let (header, mut file) = backup::build(
        &data,
        &backup::Source {
            member: name,
            member_id: me,
            raft_term: status.raft_term,
            raft_index: status.raft_applied_index,
        },
    )?;
    // Sign the plain file, then seal it: the signature is checked after
    // opening, so an auditor with the public key and the passphrase can
    // tell who made the backup, and it reveals nothing without them.
    if let Some(k) = sign_key {
        backup::sign(&mut file, k);
    }
    // Sealed if asked, written atomically, then read back, opened and
    // verified before claiming success.
    backup::write_verified(out, &file, seal_with)
        .with_context(|| format!("writing {}", out.display()))?;
    let written = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    print_header(&header, sealed::describe(&written));
    println!("saved {} ({} bytes)", out.display(), written.len());
    Ok(())
}

/// Fills an empty data dir with the backup's key space.
async fn restore_into(b: &backup::Backup, dir: &Path, bump: i64) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: restore only into a new data dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let kv = keel_store::mvcc::KvStore::open(dir)?;
    kv.restore(b.records.clone(), bump).await?;
    // The cluster CA travels in the key space; the restored member serves
    // with it (its default --pki-dir), so existing clients keep working.
    crate::pki::restore_ca(&kv, dir)?;
    Ok(())
}

async fn drill(file: &Path, secret: Option<&Secret>) -> anyhow::Result<()> {
    let (b, enc) = read(file, secret)?;
    let tmp = std::env::temp_dir().join(format!("keel-drill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    restore_into(&b, &tmp.join("m1"), 0).await?;
    let bin = std::env::current_exe()?;
    let cluster =
        keel_chaos::ProcessCluster::start(keel_chaos::Flavor::Keel, &bin, &tmp, 1, None, &[])?;
    let result = async {
        cluster
            .wait_ready(std::time::Duration::from_secs(30))
            .await?;
        let ch = crate::client::connect(cluster.credentials(), &cluster.endpoints()[0]).await?;
        let r = MaintenanceClient::new(ch)
            .hash_kv(keel_proto::etcdserverpb::HashKvRequest {
                revision: b.header.revision,
            })
            .await?
            .into_inner();
        anyhow::Ok(r)
    }
    .await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&tmp);
    let r = result?;
    println!("Keel backup drill report");
    println!("  file            {}", file.display());
    print_header(&b.header, enc);
    println!(
        "  restored into   a single-member cluster (new cluster id {:x})",
        r.header.map(|h| h.cluster_id).unwrap_or(0)
    );
    println!(
        "  HashKV at rev {} = {:08x}, header content hash = {:08x}",
        b.header.revision, r.hash, b.header.content_hash
    );
    if r.hash == b.header.content_hash {
        println!("RESULT: PASS");
        Ok(())
    } else {
        println!("RESULT: FAIL");
        bail!("drill failed: restored HashKV differs from the backup's content hash")
    }
}

fn list(dir: &Path, secret: Option<&Secret>) -> anyhow::Result<()> {
    let files = backup::files_in(dir).with_context(|| format!("reading {}", dir.display()))?;
    println!(
        "{:<56} {:>9} {:>7} {:>12} {:>9}  STATUS",
        "FILE", "REVISION", "KEYS", "CREATED", "BYTES"
    );
    let (mut bad, mut locked) = (0, 0);
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        match std::fs::read(f)
            .map_err(anyhow::Error::from)
            .and_then(|b| load(&b, secret))
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::PutRequest;
    use keel_proto::keelraft::{Command, command};

    const CA_KEY: &str = "-----BEGIN PRIVATE KEY----- ca secret";
    const TOKEN_HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    /// A real backup file (plain) holding a pod, the CA key and a token.
    fn plain_file() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let kv = keel_store::mvcc::KvStore::open(dir.path()).unwrap();
        let puts = [
            ("/registry/pods/default/a", "{}"),
            ("/keel/pki/ca.key", CA_KEY),
            ("/keel/tokens/t1", TOKEN_HASH),
        ];
        let cmds: Vec<Command> = puts
            .iter()
            .map(|(k, v)| Command {
                op: Some(command::Op::Put(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        let refs: Vec<Option<&Command>> = cmds.iter().map(Some).collect();
        kv.apply_batch(
            &refs,
            keel_store::mvcc::apply::BatchMeta {
                applied: b"null".to_vec(),
                membership: None,
                cluster_id: Some(42),
            },
        )
        .unwrap();
        let (dump, _, _) = kv.dump();
        let source = backup::Source {
            member: "m1".into(),
            member_id: 1,
            raft_term: 1,
            raft_index: 3,
        };
        backup::build(&dump, &source).unwrap().1
    }

    #[test]
    fn load_opens_sealed_files_and_asks_for_a_secret() {
        let plain = plain_file();
        let key = Secret::Key([9; 32]);
        let file = sealed::seal(&plain, &key).unwrap();

        let (b, enc) = load(&plain, None).unwrap();
        assert_eq!((b.header.key_count, enc), (3, None));
        // A secret given for a plain file is not needed, and not an error.
        assert!(load(&plain, Some(&key)).is_ok());

        let (b, enc) = load(&file, Some(&key)).unwrap();
        assert_eq!(b.header.key_count, 3);
        assert_eq!(enc, Some("XChaCha20-Poly1305, key from a key file"));

        let e = load(&file, None).unwrap_err();
        assert!(e.is::<NeedsSecret>());
        assert_eq!(
            e.to_string(),
            "this backup is encrypted: pass --passphrase-file, KEEL_BACKUP_PASSPHRASE or --key-file"
        );
        let e = load(&file, Some(&Secret::Key([8; 32]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrong passphrase or key, or the file is corrupt"
        );
    }

    #[test]
    fn signature_is_inside_the_seal() {
        let mut plain = plain_file();
        let k = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        backup::sign(&mut plain, &k);
        let key = Secret::Key([9; 32]);
        let (b, _) = load(&sealed::seal(&plain, &key).unwrap(), Some(&key)).unwrap();
        assert_eq!(b.signer, Some(*k.verifying_key().as_bytes()));
    }

    #[test]
    fn inspect_never_prints_secret_values() {
        let (b, _) = load(&plain_file(), None).unwrap();
        for prefix in [None, Some(""), Some("/keel/"), Some("/keel/pki/")] {
            let text = inspect_lines(&b, prefix).join("\n");
            assert!(!text.contains(CA_KEY), "{text}");
            assert!(!text.contains(TOKEN_HASH), "{text}");
        }
        let text = inspect_lines(&b, Some("/keel/")).join("\n");
        assert!(text.contains("/keel/pki/ca.key"), "{text}");
        assert!(text.contains("/keel/tokens/t1"), "{text}");
    }

    #[test]
    fn secret_sources() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("pass");
        std::fs::write(&pf, "s3cret words\r\n").unwrap();
        let kf = dir.path().join("key");
        std::fs::write(&kf, format!("{}\n", "ab".repeat(32))).unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();

        assert_eq!(resolve_secret(None, None, None).unwrap(), None);
        assert_eq!(
            resolve_secret(Some(&pf), None, None).unwrap(),
            Some(Secret::Passphrase("s3cret words".into()))
        );
        assert_eq!(
            resolve_secret(None, None, Some("from env".into())).unwrap(),
            Some(Secret::Passphrase("from env".into()))
        );
        assert_eq!(
            resolve_secret(None, Some(&kf), None).unwrap(),
            Some(Secret::Key([0xab; 32]))
        );
        let e = resolve_secret(Some(&pf), Some(&kf), None).unwrap_err();
        assert!(e.to_string().contains("give only one of"), "{e}");
        let e = resolve_secret(None, Some(&kf), Some("x".into())).unwrap_err();
        assert!(e.to_string().contains("give only one of"), "{e}");
        let e = resolve_secret(Some(&empty), None, None).unwrap_err();
        assert!(e.to_string().contains("the passphrase is empty"), "{e}");
        let e = resolve_secret(None, None, Some("".into())).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        // A passphrase file is not a key file.
        assert!(resolve_secret(None, Some(&pf), None).is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: BackupArgs,
    }

    #[test]
    fn secret_flags_parse_on_every_subcommand() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "keel",
            "save",
            "--endpoints",
            "127.0.0.1:2479",
            "--out",
            "b.keelbak",
            "--encrypt",
            "--key-file",
            "enc.key",
        ])
        .unwrap();
        let BackupCmd::Save {
            encrypt, secret, ..
        } = c.a.cmd
        else {
            panic!("not save")
        };
        assert!(encrypt);
        assert_eq!(secret.key_file, Some(PathBuf::from("enc.key")));
        for sub in ["verify", "inspect", "restore", "drill"] {
            let mut args = vec!["keel", sub, "b.keelbak", "--passphrase-file", "p"];
            if sub == "restore" {
                args.extend(["--data-dir", "d"]);
            }
            assert!(Cli::try_parse_from(&args).is_ok(), "{sub}");
        }
        assert!(
            Cli::try_parse_from(["keel", "list", "--backup-dir", "d", "--key-file", "k"]).is_ok()
        );
        // The passphrase itself is never a flag (it would show in `ps`).
        assert!(Cli::try_parse_from(["keel", "verify", "b", "--passphrase", "x"]).is_err());
        assert!(Cli::try_parse_from(["keel", "keygen", "--out", "k", "--encryption"]).is_ok());
    }

    #[test]
    fn encryption_keys_are_private_and_load_as_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("enc.key");
        enc_keygen(&out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            resolve_secret(None, Some(&out), None).unwrap(),
            Some(Secret::Key(_))
        ));
        // Never overwrites an existing key.
        assert!(enc_keygen(&out).is_err());
    }
}
