//! Joining the cluster (TLS bootstrap, as kubelet's): on first start the
//! agent makes a key and a certificate request, presents a single-use
//! bootstrap token once, and gets back a node certificate (CN `node:<name>`)
//! signed by the cluster CA; from then on it authenticates with that
//! certificate only. The key never leaves the node. Node certificates are
//! short-lived (`pki::NODE_VALIDITY_DAYS`): the agent renews its own, with a
//! new key, once less than a third of its lifetime is left.

use std::path::{Path, PathBuf};

use keel_proto::client::ApiClient;
use keel_proto::pki::{self, Credentials, Pair, PkiDir};
use serde_json::{Value, json};

use crate::credentials::SharedCredentials;
use crate::error::AgentError;

/// The node certificate's name in the agent's PKI dir (node.crt, node.key).
const NODE_CERT: &str = "node";

fn pki_err(e: pki::PkiError) -> AgentError {
    AgentError::Config(e.to_string())
}

/// The agent's PKI directory.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// This node's credentials: its saved certificate, or a new one bought with
/// `join_token`. `ca_pem` is the cluster CA to trust (required the first
/// time; saved for later starts).
pub async fn credentials(
    data_dir: &Path,
    node: &str,
    masters: &[String],
    ca_pem: Option<String>,
    join_token: Option<&str>,
) -> Result<Credentials, AgentError> {
    let dir = PkiDir(pki_dir(data_dir));
    let ca_pem = match ca_pem {
        Some(c) => c,
        None => std::fs::read_to_string(dir.ca_cert()).map_err(|_| {
            AgentError::Config(
                "no cluster CA: pass --ca-cert (the masters' ca.crt) on the first start".into(),
            )
        })?,
    };
    let me = match dir.load_pair(NODE_CERT) {
        Ok(p) if renewal_due(&p, now()) => {
            tracing::info!("the node certificate expires soon: renewing it");
            let fresh = renew(node, masters, &ca_pem, &p).await?;
            dir.save_pair(NODE_CERT, &fresh).map_err(pki_err)?;
            fresh
        }
        Ok(p) => {
            tracing::info!("using the node certificate in {}", dir.0.display());
            p
        }
        Err(_) => {
            let token = join_token.ok_or_else(|| {
                AgentError::Config(format!(
                    "node {node} has no certificate yet: pass --join-token (from \
                     `keel token create --bootstrap`)"
                ))
            })?;
            let p = join(node, masters, &ca_pem, token).await?;
            dir.save_pair(NODE_CERT, &p).map_err(pki_err)?;
            pki::write_private(&dir.ca_cert(), &ca_pem).map_err(pki_err)?;
            tracing::info!(node, "joined: got a node certificate");
            p
        }
    };
    Ok(Credentials::tls(ca_pem, Some(me)))
}

/// Spends the bootstrap token on a certificate for a new key.
async fn join(
    node: &str,
    masters: &[String],
    ca_pem: &str,
    token: &str,
) -> Result<Pair, AgentError> {
    let creds = Credentials::tls(ca_pem, None).with_token(token);
    request_certificate(node, masters, &creds, "/keel/v1/bootstrap", true).await
}

/// A new key, and a certificate for it asked of the masters at `path` with
/// `creds` (the CSR, and the node's name when `named`, in the body).
async fn request_certificate(
    node: &str,
    masters: &[String],
    creds: &Credentials,
    path: &str,
    named: bool,
) -> Result<Pair, AgentError> {
    let (csr, key_pem) = pki::node_csr(node).map_err(pki_err)?;
    let c = ApiClient::try_new(masters, creds)?;
    let body = if named {
        json!({"nodeName": node, "csr": csr})
    } else {
        json!({ "csr": csr })
    };
    let r: Value = c.post(path, &body).await?;
    let cert_pem = r["certificate"]
        .as_str()
        .ok_or_else(|| AgentError::Config(format!("the answer of {path} has no certificate")))?
        .to_string();
    Ok(Pair { cert_pem, key_pem })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// True once less than a third of the certificate's lifetime is left (or
/// it cannot be read).
pub fn renewal_due(p: &Pair, now: i64) -> bool {
    match pki::pem_validity(&p.cert_pem) {
        Some((issued, expires)) => expires - now < (expires - issued) / 3,
        None => true,
    }
}

/// A new key and certificate for `node`, asked for with its current one.
async fn renew(
    node: &str,
    masters: &[String],
    ca_pem: &str,
    me: &Pair,
) -> Result<Pair, AgentError> {
    let creds = Credentials::tls(ca_pem, Some(me.clone()));
    let path = format!("/keel/v1/certificates/{node}");
    let p = request_certificate(node, masters, &creds, &path, false).await?;
    tracing::info!(node, "renewed the node certificate");
    Ok(p)
}

/// Renews the node certificate whenever it is due (checked every hour),
/// saving it and putting it into the agent's credentials (`creds`, the
/// handle its clients read), until the process ends. A failed renewal is
/// retried at the next check.
pub async fn renewal_loop(
    data_dir: PathBuf,
    node: String,
    masters: Vec<String>,
    creds: SharedCredentials,
) {
    let dir = PkiDir(pki_dir(&data_dir));
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        let (Ok(me), Ok(ca_pem)) = (
            dir.load_pair(NODE_CERT),
            std::fs::read_to_string(dir.ca_cert()),
        ) else {
            continue;
        };
        if !renewal_due(&me, now()) {
            continue;
        }
        match renew(&node, &masters, &ca_pem, &me).await {
            Ok(fresh) => {
                if let Err(e) = dir.save_pair(NODE_CERT, &fresh) {
                    tracing::error!(error = %e, "cannot save the renewed node certificate");
                    continue;
                }
                creds.set(Credentials::tls(ca_pem, Some(fresh)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the node certificate failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_in_the_last_third_of_a_certificates_life() {
        let ca = pki::Ca::generate("t").unwrap();
        let (csr, key_pem) = pki::node_csr("n1").unwrap();
        let cert_pem = ca.sign_node_csr(&csr, "n1").unwrap();
        let p = Pair { cert_pem, key_pem };
        let (issued, expires) = pki::pem_validity(&p.cert_pem).unwrap();
        assert_eq!(expires - issued, pki::NODE_VALIDITY_DAYS * 86_400);
        assert!(!renewal_due(&p, issued));
        assert!(!renewal_due(&p, expires - (expires - issued) / 2));
        assert!(renewal_due(&p, expires - (expires - issued) / 4));
        assert!(renewal_due(&p, expires + 1));
    }
}
