//! `keel pki ...` and each master's TLS material: `keel pki init` creates a
//! cluster CA, an admin client certificate and an admin token (0600) in a
//! directory every master's `--pki-dir` gets a copy of; `keel pki issue`
//! makes user certificates; at start a master issues its own serving and
//! peer certificate (its addresses as SANs) from the CA.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keel_controlplane::auth::Role;
use keel_controlplane::auth::tokens::{self, TokenRecord};
use keel_proto::pki::{self, ADMIN_CERT, ADMIN_TOKEN, Ca, PkiDir, TlsBundle, Usage};

#[derive(Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    cmd: PkiCmd,
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a cluster CA, an admin certificate and an admin token in DIR.
    Init {
        #[arg(long, env = "KEEL_PKI_DIR")]
        dir: PathBuf,
        /// Names the CA.
        #[arg(long, env = "KEEL_CLUSTER_NAME", default_value = "keel")]
        cluster: String,
    },
    /// Issue a client certificate for a user with a role (OUT.crt, OUT.key).
    Issue {
        #[arg(long, env = "KEEL_PKI_DIR")]
        dir: PathBuf,
        /// The user's name (certificate CN).
        #[arg(long)]
        user: String,
        /// admin, edit or view.
        #[arg(long)]
        role: Role,
        /// File prefix of the certificate and key.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: PkiArgs) -> anyhow::Result<()> {
    match a.cmd {
        PkiCmd::Init { dir, cluster } => {
            init(&dir, &cluster)?;
            println!(
                "created the cluster CA, admin.crt/admin.key and {ADMIN_TOKEN} in {}",
                dir.display()
            );
            println!("copy ca.crt and ca.key to every master's --pki-dir before its first start");
            Ok(())
        }
        PkiCmd::Issue {
            dir,
            user,
            role,
            out,
        } => {
            let org = match role {
                Role::Admin => pki::ORG_ADMIN,
                Role::Edit => pki::ORG_EDIT,
                Role::View => pki::ORG_VIEW,
                Role::Node => bail!("node certificates come from `keel agent --join-token`"),
            };
            let ca = PkiDir(dir.clone()).load_ca().context("loading the CA")?;
            let p = ca.issue(&user, Some(org), &[], Usage::Client)?;
            pki::write_private(&out.with_extension("key"), &p.key_pem)?;
            pki::write_private(&out.with_extension("crt"), &p.cert_pem)?;
            println!(
                "wrote {0}.crt and {0}.key ({user}, role {role})",
                out.display()
            );
            Ok(())
        }
    }
}

/// Creates a CA, the admin client certificate and the admin token in `dir`;
/// refuses to overwrite an existing CA.
pub fn init(dir: &Path, cluster: &str) -> anyhow::Result<()> {
    let d = PkiDir(dir.to_path_buf());
    if d.ca_cert().exists() {
        bail!("{} already holds a CA", dir.display());
    }
    let ca = Ca::generate(cluster)?;
    d.save_ca(&ca)?;
    let admin = ca.issue(ADMIN_CERT, Some(pki::ORG_ADMIN), &[], Usage::Client)?;
    d.save_pair(ADMIN_CERT, &admin)?;
    let (token, _) = tokens::generate("admin", Role::Admin, 0, false, 0);
    pki::write_private(&dir.join(ADMIN_TOKEN), &format!("{token}\n"))?;
    Ok(())
}

/// Writes the cluster CA a restored key space holds into the member's
/// default PKI dir (DATA_DIR/pki), so the restored cluster serves with the
/// CA its clients already trust; false if the backup holds no CA.
pub fn restore_ca(kv: &keel_store::mvcc::KvStore, data_dir: &Path) -> anyhow::Result<bool> {
    let r = kv.range(&keel_proto::etcdserverpb::RangeRequest {
        key: keel_controlplane::auth::credentials::CA_KEY
            .as_bytes()
            .to_vec(),
        ..Default::default()
    })?;
    let Some(ca) = r
        .kvs
        .first()
        .and_then(|v| keel_controlplane::auth::credentials::decode_ca(&v.value))
    else {
        return Ok(false);
    };
    PkiDir(data_dir.join("pki")).save_ca(&ca)?;
    Ok(true)
}

/// The record of the admin token in `dir` (ADMIN_TOKEN), creating the
/// token file (0600) first when `create` and it is missing.
pub fn admin_token(dir: &Path, create: bool) -> anyhow::Result<Option<TokenRecord>> {
    let path = dir.join(ADMIN_TOKEN);
    if create && !path.exists() {
        let (token, _) = tokens::generate("admin", Role::Admin, 0, false, 0);
        pki::write_private(&path, &format!("{token}\n"))?;
    }
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(
            tokens::record_for(
                t.trim(),
                "admin",
                Role::Admin,
                keel_controlplane::auth::credentials::now(),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        Err(_) => Ok(None),
    }
}

/// A master's TLS material, ready to serve.
pub struct MasterPki {
    pub ca: Ca,
    /// The master's own certificate (CN `master:<name>`, O keel:masters).
    pub bundle: TlsBundle,
    /// The admin token's record, if the PKI dir holds the admin token: the
    /// masters make sure it is in the store.
    pub admin_token: Option<TokenRecord>,
}

/// The host part of `host:port` (IPv6 in brackets allowed).
fn host_of(addr: &str) -> Option<String> {
    let host = keel_proto::pki::addr_host(addr);
    (!host.is_empty() && host != "0.0.0.0" && host != "::").then(|| host.to_string())
}

/// Loads the CA from `dir` (creating a new one when this master bootstraps
/// a new single-member cluster and finds none) and issues this master's
/// certificate for `addrs`, written to `own_dir` (the PKI dir may be shared
/// by several masters on one machine).
pub fn master(
    dir: &Path,
    own_dir: &Path,
    name: &str,
    addrs: &[&str],
    may_create_ca: bool,
) -> anyhow::Result<MasterPki> {
    let d = PkiDir(dir.to_path_buf());
    if !d.ca_cert().exists() {
        if !may_create_ca {
            bail!(
                "no cluster CA in {0}: run `keel pki init --dir {0}` once, then copy ca.crt and \
                 ca.key into every master's --pki-dir (a single-member bootstrap creates its own)",
                dir.display()
            );
        }
        tracing::info!(dir = %dir.display(), "no cluster CA found: creating one");
        init(dir, "keel")?;
    }
    let ca = d.load_ca().context("loading the cluster CA")?;
    let mut sans: Vec<String> = vec!["127.0.0.1".into(), "::1".into(), "localhost".into()];
    for a in addrs {
        if let Some(h) = host_of(a)
            && !sans.contains(&h)
        {
            sans.push(h);
        }
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_string();
        if !h.is_empty() && !sans.contains(&h) {
            sans.push(h);
        }
    }
    let me = ca.issue(
        &format!("master:{name}"),
        Some(pki::ORG_MASTERS),
        &sans,
        Usage::ServerAndClient,
    )?;
    PkiDir(own_dir.to_path_buf()).save_pair("master", &me)?;
    let admin_token = admin_token(dir, false)?;
    Ok(MasterPki {
        bundle: TlsBundle {
            ca_pem: ca.cert_pem.clone(),
            me: Some(me),
        },
        ca,
        admin_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn init_then_master_issues_a_certificate_for_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "t").unwrap();
        assert!(
            init(dir.path(), "t").is_err(),
            "a second init must not replace the CA"
        );
        let own = tempfile::tempdir().unwrap();
        let m = master(
            dir.path(),
            own.path(),
            "m1",
            &["10.1.2.3:7101", "0.0.0.0:6443"],
            false,
        )
        .unwrap();
        assert!(own.path().join("master.key").exists());
        let cert = m.bundle.me.as_ref().unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            pki::subject(&der),
            Some(("master:m1".into(), pki::ORG_MASTERS.into()))
        );
        assert!(m.admin_token.is_some());
        let d = PkiDir(dir.path().to_path_buf())
            .admin_credentials()
            .unwrap();
        assert!(tokens::parse(&d.token.unwrap()).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let empty = tempfile::tempdir().unwrap();
        let e = master(empty.path(), own.path(), "m2", &[], false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("keel pki init"), "{e}");
    }

    #[test]
    fn hosts_come_from_addresses() {
        assert_eq!(host_of("10.0.0.1:7101").as_deref(), Some("10.0.0.1"));
        assert_eq!(host_of("[::1]:7101").as_deref(), Some("::1"));
        assert_eq!(host_of("0.0.0.0:6443"), None);
        assert_eq!(host_of("m1.example:6443").as_deref(), Some("m1.example"));
    }
}
