//! Connecting to masters' client endpoints (etcd v3 gRPC API).

use std::time::Duration;

use anyhow::{Context, bail};
use keel_proto::pki::Credentials;
use tonic::transport::Channel;

/// Splits `a,b,c` endpoint lists, accepting `http://` prefixes.
pub fn parse_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(|e| e.trim().trim_start_matches("http://").trim_end_matches('/'))
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// A channel to one endpoint dialed with `creds`, connected now.
pub async fn connect(creds: &Credentials, endpoint: &str) -> anyhow::Result<Channel> {
    creds
        .endpoint(endpoint)?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

/// A channel to the first endpoint that answers.
pub async fn connect_any(creds: &Credentials, endpoints: &[String]) -> anyhow::Result<Channel> {
    let mut last = None;
    for e in endpoints {
        match connect(creds, e).await {
            Ok(c) => return Ok(c),
            Err(err) => last = Some(err),
        }
    }
    match last {
        Some(e) => Err(e),
        None => bail!("no endpoints given"),
    }
}
