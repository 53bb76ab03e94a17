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

/// The endpoints a command dials: the flag (or `KEEL_ENDPOINTS`) if given,
/// else the client config's (`keel up` writes them to `~/.keel/config`),
/// else `fallback`. None at all is an error that says where to give them.
pub fn choose_endpoints(
    flag: Option<&str>,
    config: &[String],
    fallback: &[&str],
) -> anyhow::Result<Vec<String>> {
    let eps = match flag {
        Some(f) => parse_endpoints(f),
        None if !config.is_empty() => config.to_vec(),
        None => fallback.iter().map(|s| s.to_string()).collect(),
    };
    if eps.is_empty() {
        bail!(
            "no endpoints: give --endpoints (or KEEL_ENDPOINTS), or list them under \
             `endpoints` in the client config (`keel up` writes ~/.keel/config)"
        );
    }
    Ok(eps)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_config_then_the_fallback() {
        let cfg = vec!["10.0.0.1:2479".to_string()];
        let flag = choose_endpoints(Some("http://a:1/, b:2"), &cfg, &["c:3"]).unwrap();
        assert_eq!(flag, ["a:1", "b:2"]);
        assert_eq!(choose_endpoints(None, &cfg, &["c:3"]).unwrap(), cfg);
        assert_eq!(choose_endpoints(None, &[], &["c:3"]).unwrap(), ["c:3"]);
        let none = choose_endpoints(None, &[], &[]).unwrap_err().to_string();
        assert!(none.contains("--endpoints"), "{none}");
        // An empty flag is not "no flag": it is an error, not the config.
        assert!(choose_endpoints(Some(" , "), &cfg, &["c:3"]).is_err());
    }
}
