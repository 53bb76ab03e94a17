//! `keel kubeconfig`: a kubeconfig for kubectl (and every client library
//! that reads one): the API server, the cluster CA inline and a bearer
//! token (the config's, which `keel up` sets to the admin token, or `--token`).

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    /// The API server URL written in the kubeconfig (default: the config's
    /// first server, else https://127.0.0.1:6443).
    #[arg(long = "api-url", env = "KEEL_KUBECONFIG_API_URL")]
    pub api_url: Option<String>,
    /// The user's name in the kubeconfig (its context is `<user>@keel`).
    #[arg(long, env = "KEEL_KUBECONFIG_USER", default_value = "admin")]
    pub user: String,
    /// Write the kubeconfig to this file (owner-only) instead of printing it.
    #[arg(long, short = 'o', env = "KEEL_KUBECONFIG_OUT")]
    pub out: Option<std::path::PathBuf>,
}

/// A kubeconfig with one cluster (`keel`), one user and one context.
pub fn render(server: &str, ca_pem: &str, user: &str, token: &str) -> anyhow::Result<String> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let context = format!("{user}@keel");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "keel", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "keel", "user": user, "namespace": "default"}}],
        "current-context": context,
        "preferences": {},
    });
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// The server URL of `host:port` or a URL.
fn url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    }
}

/// Writes a kubeconfig readable only by its owner (it holds a token).
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    keel_proto::pki::write_private(path, &render(server, ca_pem, user, token)?)?;
    Ok(())
}

pub fn run(a: KubeconfigArgs, conn: &crate::config::Connection) -> anyhow::Result<()> {
    let d = conn.creds.clone();
    let ca = d.tls.as_ref().map(|t| t.ca_pem.clone()).context(
        "no cluster CA: pass --ca-cert or a config with certificateAuthority (keel up writes one)",
    )?;
    let token = d.token.context(
        "no token: pass --token or a config with a token (keel up writes the admin token)",
    )?;
    let server = a.api_url.unwrap_or_else(|| {
        conn.servers
            .first()
            .map(|s| url(s))
            .unwrap_or_else(|| "https://127.0.0.1:6443".into())
    });
    match &a.out {
        Some(p) => write(p, &server, &ca, &a.user, &token),
        None => {
            print!("{}", render(&server, &ca, &a.user, &token)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_kubeconfig_with_the_ca_inline() {
        let y = render("https://127.0.0.1:6443", "PEM", "alice", "keel.t").unwrap();
        let v: serde_json::Value = serde_yaml_ng::from_str(&y).unwrap();
        assert_eq!(v["current-context"], "alice@keel");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(v["users"][0]["user"]["token"], "keel.t");
        assert_eq!(url("127.0.0.1:6444"), "https://127.0.0.1:6444");
    }
}
