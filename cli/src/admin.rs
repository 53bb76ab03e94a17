//! `keel token create|list|revoke` and `keel audit tail`: bearer tokens and
//! the masters' audit logs, through the REST API (admin only).

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use keel_controlplane::api::admin::{TokenCreated, TokenView};
use keel_controlplane::auth::Role;
use keel_controlplane::auth::audit::AuditEntry;
use keel_proto::client::ApiClient;
use serde_json::{Value, json};

use crate::kubectl::Target;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; prints it once (only its hash is stored).
    Create {
        /// admin, edit or view (bootstrap tokens are for nodes).
        #[arg(long, default_value = "view")]
        role: Role,
        /// The user the token authenticates as.
        #[arg(long, default_value = "")]
        user: String,
        /// Lifetime: a number with s, m, h or d (0: never expires).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// A node bootstrap token: good for one `keel agent --join-token`
        /// of the node named by --node.
        #[arg(long, requires = "node")]
        bootstrap: bool,
        /// The one node a bootstrap token admits.
        #[arg(long, default_value = "")]
        node: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id (the part after `keel.`).
    Revoke { id: String },
}

fn ttl_secs(s: &str) -> anyhow::Result<i64> {
    if s == "0" {
        return Ok(0);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: not like 30m, 24h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("--ttl {s:?}: the unit must be s, m, h or d"),
    };
    Ok(n * mult)
}

pub async fn token(t: &Target, cmd: TokenCmd) -> anyhow::Result<()> {
    let c = t.client();
    match cmd {
        TokenCmd::Create {
            role,
            user,
            ttl,
            bootstrap,
            node,
        } => {
            let user = if user.is_empty() {
                if bootstrap {
                    "bootstrap".into()
                } else {
                    format!("{role}-user")
                }
            } else {
                user
            };
            let r: TokenCreated = c
                .post(
                    "/keel/v1/tokens",
                    &json!({"user": user, "role": role, "ttlSeconds": ttl_secs(&ttl)?,
                            "bootstrap": bootstrap, "nodeName": node}),
                )
                .await?;
            println!("{}", r.token);
        }
        TokenCmd::List => {
            let v: Value = c.get_value("/keel/v1/tokens").await?;
            let items: Vec<TokenView> = serde_json::from_value(v["items"].clone())?;
            println!(
                "{:<14} {:<16} {:<6} {:<10} {:<20}",
                "ID", "USER", "ROLE", "STATE", "EXPIRES"
            );
            for t in items {
                let state = if t.revoked {
                    "revoked".to_string()
                } else if !t.used_by.is_empty() {
                    format!("used:{}", t.used_by)
                } else if t.bootstrap {
                    "bootstrap".into()
                } else {
                    "active".into()
                };
                let exp = if t.expires_at == 0 {
                    "never".to_string()
                } else {
                    format!(
                        "{}s from now",
                        t.expires_at - keel_controlplane::auth::credentials::now()
                    )
                };
                println!(
                    "{:<14} {:<16} {:<6} {:<10} {:<20}",
                    t.id, t.user, t.role, state, exp
                );
            }
        }
        TokenCmd::Revoke { id } => {
            let id = id.strip_prefix("keel.").unwrap_or(&id);
            let id = id.split('.').next().unwrap_or(id);
            c.call::<Value>(
                reqwest::Method::DELETE,
                &format!("/keel/v1/tokens/{id}"),
                None,
            )
            .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Refuse every certificate issued to NODE until now, on every master.
    Revoke { node: String },
}

pub async fn node(t: &Target, cmd: NodeCmd) -> anyhow::Result<()> {
    let NodeCmd::Revoke { node } = cmd;
    let _: Value = t
        .client()
        .post("/keel/v1/revoked-nodes", &json!({ "nodeName": node }))
        .await?;
    println!("node {node}: certificates revoked");
    Ok(())
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// The last entries of every master's audit log, merged by time.
    Tail {
        /// Entries per master.
        #[arg(long, default_value_t = 20)]
        lines: usize,
        /// Print the JSON lines as they are.
        #[arg(long)]
        json: bool,
    },
}

pub async fn audit(t: &Target, cmd: AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::Tail { lines, json } = cmd;
    // Each master keeps its own log: ask each one, not just any one.
    let servers = t.client().servers().to_vec();
    let mut all: Vec<(String, AuditEntry)> = Vec::new();
    for s in servers {
        let one = ApiClient::new(std::slice::from_ref(&s), &t.conn.creds);
        let r = one
            .send(
                reqwest::Method::GET,
                &format!("/keel/v1/audit?lines={lines}"),
                None,
                Some(Duration::from_secs(5)),
            )
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                for l in r.text().await?.lines().filter(|l| !l.is_empty()) {
                    if let Ok(e) = serde_json::from_str::<AuditEntry>(l) {
                        all.push((s.clone(), e));
                    }
                }
            }
            Ok(r) => eprintln!("{s}: {}", r.status()),
            Err(e) => eprintln!("{s}: {e}"),
        }
    }
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    for (s, e) in all {
        if json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            let obj = if e.namespace.is_empty() {
                e.name.clone()
            } else {
                format!("{}/{}", e.namespace, e.name)
            };
            println!(
                "{} {:<22} {:<16} {:<7} {:<20} {:<24} {}",
                e.time, s, e.user, e.verb, e.resource, obj, e.code
            );
        }
    }
    Ok(())
}
