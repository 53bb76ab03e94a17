//! The kubectl-like commands (`keel apply/get/describe/delete/scale/rollout`)
//! over the REST API of any master.

pub mod apply;
pub mod get;
pub mod manifest;
pub mod rollout;
pub mod table;

use clap::Args;
use keel_controlplane::kinds::{self, Kind};
use keel_proto::client::ApiClient;

/// Where the API is and which namespace to use.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// API servers (any master), comma-separated `host:port` or URLs
    /// (default: the config's servers, else 127.0.0.1:6443-6445).
    #[arg(long, global = true, env = "KEEL_SERVER")]
    pub server: Option<String>,
    /// Namespace of namespaced objects.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "KEEL_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// The config's servers and credentials (set by `main` after parsing).
    #[arg(skip)]
    pub conn: crate::config::Connection,
}

impl Target {
    /// A client of the target's servers with the config's credentials.
    pub fn client(&self) -> ApiClient {
        let mut servers: Vec<String> = self
            .server
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if servers.is_empty() {
            servers = self.conn.servers.clone();
        }
        if servers.is_empty() {
            servers = ["6443", "6444", "6445"]
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
        }
        ApiClient::new(&servers, &self.conn.creds)
    }
}

/// Resolves what a user typed as a kind (`po`, `pods`, `deployment`, `Deployment`).
pub fn kind(name: &str) -> anyhow::Result<&'static Kind> {
    kinds::by_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "the server doesn't have a resource type {name:?} (known: {})",
            kinds::KINDS
                .iter()
                .map(|k| k.plural)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Splits `deployment/web` or (`deployment`, `web`) into a kind and a name.
pub fn kind_and_name(a: &str, b: Option<&str>) -> anyhow::Result<(&'static Kind, String)> {
    match (a.split_once('/'), b) {
        (Some((k, n)), None) => Ok((kind(k)?, n.to_string())),
        (None, Some(n)) => Ok((kind(a)?, n.to_string())),
        _ => anyhow::bail!("name the object as KIND/NAME or KIND NAME"),
    }
}
