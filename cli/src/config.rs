//! How the CLI reaches a cluster: `~/.keel/config` (written by `keel up`; the
//! API servers, the CA to trust, a client certificate and a token), each
//! setting overridable by a flag or `KEEL_*` variable.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use keel_proto::pki::{Credentials, Pair, TlsBundle};
use serde::{Deserialize, Serialize};

/// Connection flags shared by every client command.
#[derive(Args, Debug, Clone, Default)]
pub struct Auth {
    /// The client config file (default: ~/.keel/config).
    #[arg(long, global = true, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bearer token for the REST API (overrides the config's).
    #[arg(long, global = true, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA certificate to trust (overrides the config's).
    #[arg(long, global = true, env = "KEEL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (needed on the etcd client port: `cluster`, `backup`).
    #[arg(long, global = true, env = "KEEL_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Key of --client-cert.
    #[arg(long, global = true, env = "KEEL_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Talk plain text to masters started with --insecure (tests only).
    #[arg(long, global = true, env = "KEEL_PLAINTEXT")]
    pub plaintext: bool,
}

/// The config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// REST API servers (`host:port`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// etcd client endpoints (`host:port`), for `keel cluster` and `keel backup`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub certificate_authority: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `~/.keel/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".keel").join("config"))
}

/// What a client command dials a running cluster with: the servers of the
/// config file and the credentials built from it and the flags. Built once
/// by `load` and handed to the command (nothing keeps it globally).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// REST API servers (`host:port`) from the config (empty if none).
    pub servers: Vec<String>,
    /// etcd client endpoints (`host:port`) from the config (empty if none):
    /// what `keel backup save` and `keel cluster` dial without --endpoints.
    pub endpoints: Vec<String>,
    pub creds: Credentials,
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// Loads the config file and flags into the connection every client of
/// this command is built from.
pub fn load(a: &Auth) -> anyhow::Result<Connection> {
    let path = a.config.clone().or_else(default_path);
    let file: Option<ClientConfig> = match &path {
        Some(p) if p.exists() => Some(
            serde_yaml_ng::from_str(&read(p)?)
                .with_context(|| format!("parsing {}", p.display()))?,
        ),
        Some(p) if a.config.is_some() => anyhow::bail!("{} does not exist", p.display()),
        _ => None,
    };
    let cfg = file.clone().unwrap_or_default();
    let ca = a
        .ca_cert
        .clone()
        .or_else(|| file.as_ref().map(|f| f.certificate_authority.clone()));
    let tls = match ca {
        Some(ca) if !a.plaintext => {
            let me = match (
                a.client_cert.clone().or(cfg.client_certificate.clone()),
                a.client_key.clone().or(cfg.client_key.clone()),
            ) {
                (Some(c), Some(k)) => Some(Pair {
                    cert_pem: read(&c)?,
                    key_pem: read(&k)?,
                }),
                _ => None,
            };
            Some(TlsBundle {
                ca_pem: read(&ca)?,
                me,
            })
        }
        _ => None,
    };
    Ok(Connection {
        creds: Credentials {
            tls,
            token: a.token.clone().or(cfg.token.clone()),
        },
        servers: cfg.servers,
        endpoints: cfg.endpoints,
    })
}

/// Writes a config file readable only by its owner.
pub fn write(path: &Path, cfg: &ClientConfig) -> anyhow::Result<()> {
    let y = serde_yaml_ng::to_string(cfg)?;
    keel_proto::pki::write_private(path, &y)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_refuses_unknown_fields() {
        let c = ClientConfig {
            servers: vec!["127.0.0.1:6443".into()],
            endpoints: vec![],
            certificate_authority: "/x/ca.crt".into(),
            client_certificate: None,
            client_key: None,
            token: Some("keel.t".into()),
        };
        let y = serde_yaml_ng::to_string(&c).unwrap();
        let back: ClientConfig = serde_yaml_ng::from_str(&y).unwrap();
        assert_eq!(back.servers, c.servers);
        assert!(serde_yaml_ng::from_str::<ClientConfig>(&format!("{y}bogus: 1\n")).is_err());
    }
}
