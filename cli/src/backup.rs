//! `keel backup save|verify|inspect`: online backups into one self-checking
//! file, checked and listed offline (format: docs/backup-format.md).

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
        #[arg(long, env = "KEEL_BACKUP_SIGN_KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Check a backup file offline: checksum, format, every record, header
    /// and, with --verify-key, that this key signed it.
    Verify {
        file: PathBuf,
        #[arg(long, env = "KEEL_BACKUP_VERIFY_KEY")]
        verify_key: Option<PathBuf>,
    },
    /// List the backups in a directory (scheduled ones included), each verified.
    List {
        #[arg(long, env = "KEEL_BACKUP_DIR")]
        backup_dir: PathBuf,
    },
    /// Create an Ed25519 key pair for signing backups: KEY (secret, mode
    /// 0600) and KEY.pub (for auditors).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// List what a backup holds (kinds and counts, keys under a prefix).
    Inspect {
        file: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
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
    },
    /// Restore into a throw-away single-member cluster, start it, and check
    /// its HashKV at the backup's revision against the header: a report an
    /// auditor can file.
    Drill { file: PathBuf },
}

pub async fn run(a: BackupArgs) -> anyhow::Result<()> {
    match a.cmd {
        BackupCmd::Save {
            endpoints,
            out,
            sign_key,
        } => {
            let key = sign_key.as_deref().map(read_secret).transpose()?;
            save(&parse_endpoints(&endpoints), &out, key.as_ref()).await
        }
        BackupCmd::Verify { file, verify_key } => {
            let b = read(&file)?;
            if let Some(k) = &verify_key {
                backup::check_signer(&b, &read_public(k)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            }
            print_header(&b.header);
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
        BackupCmd::Keygen { out } => keygen(&out),
        BackupCmd::List { backup_dir } => list(&backup_dir),
        BackupCmd::Restore {
            file,
            data_dir,
            all_members,
            name,
            initial_cluster,
            bump_revision,
        } => {
            let b = read(&file)?;
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
        BackupCmd::Drill { file } => drill(&file).await,
        BackupCmd::Inspect { file, prefix } => {
            let b = read(&file)?;
            print_header(&b.header);
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
                println!("by namespace:");
                for ((kind, ns), n) in &by_ns {
                    println!("  {kind:<20} {ns:<20} {n}");
                }
            }
            if let Some(p) = prefix {
                println!("keys under {p:?}:");
                for (k, _) in b.records.iter().filter(|(k, _)| k.first() == Some(&b'k')) {
                    if k[1..].starts_with(p.as_bytes()) {
                        println!("  {}", String::from_utf8_lossy(&k[1..]));
                    }
                }
            }
            Ok(())
        }
    }
}

fn read(file: &Path) -> anyhow::Result<backup::Backup> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    backup::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn print_header(h: &BackupHeader) {
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
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    writeln!(f, "{}", backup::hex(&seed))?;
    f.sync_all()?;
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

fn read_hex32(path: &Path) -> anyhow::Result<[u8; 32]> {
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
    endpoints: &[String],
    out: &Path,
    sign_key: Option<&ed25519_dalek::SigningKey>,
) -> anyhow::Result<()> {
    let ch = connect_any(endpoints).await?;
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
    if let Some(k) = sign_key {
        backup::sign(&mut file, k);
    }
    backup::write_atomically(out, &file).with_context(|| format!("writing {}", out.display()))?;
    // Read it back before claiming success.
    read(out)?;
    print_header(&header);
    println!("saved {} ({} bytes)", out.display(), file.len());
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
    Ok(())
}

async fn drill(file: &Path) -> anyhow::Result<()> {
    let b = read(file)?;
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
        let ch = crate::client::connect(&cluster.endpoints()[0]).await?;
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
    print_header(&b.header);
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

fn list(dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "keelbak"))
        .collect();
    files.sort();
    println!(
        "{:<56} {:>9} {:>7} {:>12} {:>9}  STATUS",
        "FILE", "REVISION", "KEYS", "CREATED", "BYTES"
    );
    let mut bad = 0;
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        match std::fs::read(f)
            .map_err(|e| e.to_string())
            .and_then(|b| backup::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(b) => println!(
                "{name:<56} {:>9} {:>7} {:>12} {size:>9}  ok",
                b.header.revision, b.header.key_count, b.header.created_at_unix
            ),
            Err(e) => {
                bad += 1;
                println!(
                    "{name:<56} {:>9} {:>7} {:>12} {size:>9}  BAD: {e}",
                    "-", "-", "-"
                );
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} backups do not verify", files.len());
    }
    Ok(())
}
