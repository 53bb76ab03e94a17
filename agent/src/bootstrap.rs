//! Joining the cluster (TLS bootstrap, as kubelet's): on first start the
//! agent makes a key and a certificate request, presents a single-use
//! bootstrap token once, and gets back a node certificate (CN `node:<name>`)
//! signed by the cluster CA; from then on it authenticates with that
//! certificate only. The key never leaves the node.

use std::path::{Path, PathBuf};

use keel_proto::client::{ApiClient, Credentials};
use keel_proto::pki::{self, ClientDefaults, Pair, PkiDir, TlsBundle};
use serde_json::{Value, json};

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
) -> Result<ClientDefaults, AgentError> {
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
    Ok(ClientDefaults {
        tls: Some(TlsBundle {
            ca_pem,
            me: Some(me),
        }),
        token: None,
    })
}

/// Spends the bootstrap token on a certificate for a new key.
async fn join(
    node: &str,
    masters: &[String],
    ca_pem: &str,
    token: &str,
) -> Result<Pair, AgentError> {
    let (csr, key_pem) = pki::node_csr(node).map_err(pki_err)?;
    let c = ApiClient::with_credentials(
        masters,
        &Credentials {
            ca_pem: Some(ca_pem.to_string()),
            identity: None,
            token: Some(token.to_string()),
        },
    )?;
    let r: Value = c
        .post("/keel/v1/bootstrap", &json!({"nodeName": node, "csr": csr}))
        .await?;
    let cert_pem = r["certificate"]
        .as_str()
        .ok_or_else(|| AgentError::Config("the bootstrap answer has no certificate".into()))?
        .to_string();
    Ok(Pair { cert_pem, key_pem })
}
