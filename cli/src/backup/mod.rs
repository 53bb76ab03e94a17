//! `keel backup save|verify|list|keygen|inspect|restore|drill`: online
//! backups into one self-checking file, optionally encrypted, checked,
//! listed and restored offline (format: docs/backup-format.md).

mod file;
mod keys;
mod restore;
mod save;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use keel_store::backup;

use crate::client::choose_endpoints;
use crate::config::Connection;
use file::{inspect_lines, list, print_header, read};
pub use keys::read_hex32;
use keys::{SecretArgs, enc_keygen, keygen, read_public, read_secret};
use restore::{drill, restore_into};
use save::save;

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: BackupCmd,
}

impl BackupArgs {
    /// Only `save` dials a running cluster; the others read files (and
    /// `drill` starts its own cluster), so a stale `~/.keel/config` must not
    /// stop them.
    pub fn dials_a_running_cluster(&self) -> bool {
        matches!(self.cmd, BackupCmd::Save { .. })
    }

    /// `drill` starts a member of its own and talks to it until it kills
    /// it, so it must not die of SIGPIPE (see `main`).
    pub fn runs_a_cluster(&self) -> bool {
        matches!(self.cmd, BackupCmd::Drill { .. })
    }
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Take an online, consistent backup of a running cluster into one file.
    Save {
        /// Client endpoints of the cluster's masters (default: the client
        /// config's, which `keel up` writes).
        #[arg(long, env = "KEEL_ENDPOINTS")]
        endpoints: Option<String>,
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

pub async fn run(a: BackupArgs, conn: &Connection) -> anyhow::Result<()> {
    let creds = &conn.creds;
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
                &choose_endpoints(endpoints.as_deref(), &conn.endpoints, &[])?,
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
                b.records().len()
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

#[cfg(test)]
mod tests {
    use super::file::load;
    use super::keys::{NeedsSecret, resolve_secret};
    use super::*;
    use keel_proto::etcdserverpb::PutRequest;
    use keel_proto::keelraft::{Command, command};
    use keel_store::sealed::{self, Secret};

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
        backup::build(&dump, &source, 0).unwrap().1.concat()
    }

    #[test]
    fn load_opens_sealed_files_and_asks_for_a_secret() {
        let plain = plain_file();
        let key = Secret::Key([9; 32]);
        let file = sealed::seal(&plain, &key).unwrap();

        let (b, enc) = load(plain.clone(), None).unwrap();
        assert_eq!((b.header.key_count, enc), (3, None));
        // A secret given for a plain file is not needed, and not an error.
        assert!(load(plain.clone(), Some(&key)).is_ok());

        let (b, enc) = load(file.clone(), Some(&key)).unwrap();
        assert_eq!(b.header.key_count, 3);
        assert_eq!(enc, Some("XChaCha20-Poly1305, key from a key file"));

        let e = load(file.clone(), None).unwrap_err();
        assert!(e.is::<NeedsSecret>());
        assert_eq!(
            e.to_string(),
            "this backup is encrypted: pass --passphrase-file, KEEL_BACKUP_PASSPHRASE or --key-file"
        );
        let e = load(file.clone(), Some(&Secret::Key([8; 32]))).unwrap_err();
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
        let (b, _) = load(sealed::seal(&plain, &key).unwrap(), Some(&key)).unwrap();
        assert_eq!(b.signer, Some(*k.verifying_key().as_bytes()));
    }

    #[test]
    fn inspect_never_prints_secret_values() {
        let (b, _) = load(plain_file(), None).unwrap();
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
