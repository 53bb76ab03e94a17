//! `keel cluster ...`: member status with zones, and membership changes.

use keel_proto::pki::Credentials;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, MoveLeaderRequest, StatusRequest,
};

use crate::client::{choose_endpoints, connect, connect_any};
use crate::config::Connection;

#[derive(Args)]
pub struct ClusterArgs {
    /// Client endpoints of the cluster's masters (default: the client
    /// config's, else `keel up`'s three on this host).
    #[arg(long, global = true, env = "KEEL_ENDPOINTS")]
    endpoints: Option<String>,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Each member with zone, role, term, applied index and health.
    Status,
    /// Add a member (it joins as a learner; without --learner it is promoted once caught up).
    Add {
        #[arg(long)]
        name: String,
        /// The new member's peer address.
        #[arg(long)]
        peer: String,
        #[arg(long, default_value = "")]
        client: String,
        #[arg(long, default_value = "")]
        zone: String,
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (refused if the rest would lose quorum).
    Remove { member: String },
    /// Promote a learner that caught up to a voter.
    Promote { member: String },
    /// Change a member's addresses (its id stays the same).
    Update {
        member: String,
        #[arg(long)]
        peer: Option<String>,
        #[arg(long)]
        client: Option<String>,
    },
    /// Transfer leadership to a member.
    MoveLeader { member: String },
    /// After quorum loss: inspect stopped members' data dirs and say which
    /// one to restart with `keel master --force-new-cluster`.
    Recover {
        #[arg(long = "data-dir", required = true)]
        data_dirs: Vec<std::path::PathBuf>,
    },
}

async fn members(creds: &Credentials, endpoints: &[String]) -> anyhow::Result<Vec<Member>> {
    let ch = connect_any(creds, endpoints).await?;
    Ok(ClusterClient::new(ch)
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await?
        .into_inner()
        .members)
}

/// Resolves a member given by name or (hex or decimal) id.
fn find(members: &[Member], key: &str) -> anyhow::Result<u64> {
    if let Some(m) = members.iter().find(|m| m.name == key) {
        return Ok(m.id);
    }
    let parsed = u64::from_str_radix(key.trim_start_matches("0x"), 16)
        .ok()
        .filter(|id| members.iter().any(|m| m.id == *id))
        .or_else(|| key.parse::<u64>().ok());
    match parsed {
        Some(id) if members.iter().any(|m| m.id == id) => Ok(id),
        _ => bail!("no member named {key:?}"),
    }
}

/// Where `keel up` puts its masters' client ports.
const UP_ENDPOINTS: [&str; 3] = ["127.0.0.1:2479", "127.0.0.1:2480", "127.0.0.1:2481"];

pub async fn run(a: ClusterArgs, conn: &Connection) -> anyhow::Result<()> {
    let creds = &conn.creds;
    let eps = choose_endpoints(a.endpoints.as_deref(), &conn.endpoints, &UP_ENDPOINTS)?;
    match a.cmd {
        ClusterCmd::Status => status(creds, &eps).await,
        ClusterCmd::Recover { data_dirs } => recover(&data_dirs).await,
        ClusterCmd::Add {
            name,
            peer,
            client,
            zone,
            learner,
        } => {
            let ch = connect_any(creds, &eps).await?;
            ClusterClient::new(ch)
                .member_add(MemberAddRequest {
                    peer_ur_ls: vec![peer],
                    is_learner: learner,
                    name: name.clone(),
                    client_ur_ls: if client.is_empty() {
                        vec![]
                    } else {
                        vec![client]
                    },
                    zone,
                })
                .await
                .context("member add")?;
            println!("member {name} added");
            Ok(())
        }
        ClusterCmd::Remove { member } => {
            let id = find(&members(creds, &eps).await?, &member)?;
            let ch = connect_any(creds, &eps).await?;
            ClusterClient::new(ch)
                .member_remove(MemberRemoveRequest { id })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("member {member} ({id:x}) removed");
            Ok(())
        }
        ClusterCmd::Promote { member } => {
            let id = find(&members(creds, &eps).await?, &member)?;
            let ch = connect_any(creds, &eps).await?;
            ClusterClient::new(ch)
                .member_promote(MemberPromoteRequest { id })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("member {member} promoted");
            Ok(())
        }
        ClusterCmd::Update {
            member,
            peer,
            client,
        } => {
            let id = find(&members(creds, &eps).await?, &member)?;
            let ch = connect_any(creds, &eps).await?;
            ClusterClient::new(ch)
                .member_update(MemberUpdateRequest {
                    id,
                    peer_ur_ls: peer.into_iter().collect(),
                    client_ur_ls: client.into_iter().collect(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("member {member} updated");
            Ok(())
        }
        ClusterCmd::MoveLeader { member } => {
            let id = find(&members(creds, &eps).await?, &member)?;
            let ch = connect_any(creds, &eps).await?;
            MaintenanceClient::new(ch)
                .move_leader(MoveLeaderRequest { target_id: id })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("leadership moved to {member}");
            Ok(())
        }
    }
}

async fn status(creds: &Credentials, eps: &[String]) -> anyhow::Result<()> {
    let members = members(creds, eps).await?;
    println!(
        "{:<8} {:<16} {:<8} {:<9} {:>5} {:>9}  {:<22} HEALTH",
        "NAME", "ID", "ZONE", "ROLE", "TERM", "APPLIED", "CLIENT"
    );
    for m in &members {
        let client = m.client_ur_ls.first().cloned().unwrap_or_default();
        let addr = client.trim_start_matches("http://").to_string();
        let st = match connect(creds, &addr).await {
            Ok(ch) => MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .ok(),
            Err(_) => None,
        };
        let (role, term, applied, health) = match &st {
            Some(s) => {
                let role = if s.leader == m.id {
                    "leader"
                } else if m.is_learner {
                    "learner"
                } else {
                    "follower"
                };
                let health = if s.errors.is_empty() {
                    "healthy".to_string()
                } else {
                    s.errors.join("; ")
                };
                (
                    role,
                    s.raft_term.to_string(),
                    s.raft_applied_index.to_string(),
                    health,
                )
            }
            None => ("-", "-".into(), "-".into(), "unreachable".to_string()),
        };
        println!(
            "{:<8} {:<16x} {:<8} {:<9} {:>5} {:>9}  {:<22} {}",
            m.name, m.id, m.zone, role, term, applied, addr, health
        );
    }
    for w in zone_warnings(&members) {
        println!("WARNING: {w}");
    }
    Ok(())
}

/// Warns when two voters share a zone while another known zone has none.
pub fn zone_warnings(members: &[Member]) -> Vec<String> {
    let mut voters: BTreeMap<&str, usize> = BTreeMap::new();
    let zones: BTreeSet<&str> = members
        .iter()
        .map(|m| m.zone.as_str())
        .filter(|z| !z.is_empty())
        .collect();
    for m in members
        .iter()
        .filter(|m| !m.is_learner && !m.zone.is_empty())
    {
        *voters.entry(m.zone.as_str()).or_default() += 1;
    }
    let empty: Vec<&str> = zones
        .iter()
        .filter(|z| !voters.contains_key(*z))
        .copied()
        .collect();
    voters
        .iter()
        .filter(|(_, n)| **n > 1)
        .filter(|_| !empty.is_empty())
        .map(|(z, n)| {
            format!(
                "{n} voters share zone {z} while zone(s) {} have none: losing {z} loses them all",
                empty.join(", ")
            )
        })
        .collect()
}

async fn recover(dirs: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut states = Vec::new();
    println!(
        "{:<40} {:>14} {:>14} {:>9}",
        "DATA DIR", "LAST LOG", "APPLIED", "REVISION"
    );
    let fmt = |t: Option<(u64, u64)>| t.map(|(t, i)| format!("{t}/{i}")).unwrap_or("-".into());
    for d in dirs {
        match keel_store::recover::inspect(d).await {
            Ok(s) => {
                println!(
                    "{:<40} {:>14} {:>14} {:>9}",
                    d.display(),
                    fmt(s.last_log),
                    fmt(s.applied),
                    s.revision
                );
                states.push(s);
            }
            Err(e) => println!("{:<40} unusable: {e}", d.display()),
        }
    }
    let best =
        keel_store::recover::best(&states).ok_or_else(|| anyhow::anyhow!("no usable data dir"))?;
    println!(
        "\nMost recent state: {} (last log term/index {}).\n\
         Restart it alone with: keel master --force-new-cluster --data-dir {} --name <its name> ...\n\
         then add the other members back one by one with --join.",
        best.dir.display(),
        fmt(best.last_log),
        best.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, zone: &str, learner: bool) -> Member {
        Member {
            name: name.into(),
            zone: zone.into(),
            is_learner: learner,
            ..Default::default()
        }
    }

    #[test]
    fn warns_only_when_a_zone_is_left_without_voters() {
        let spread = [
            m("a", "z1", false),
            m("b", "z2", false),
            m("c", "z3", false),
        ];
        assert!(zone_warnings(&spread).is_empty());
        let skewed = [m("a", "z1", false), m("b", "z1", false), m("c", "z2", true)];
        let w = zone_warnings(&skewed);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("z1") && w[0].contains("z2"), "{w:?}");
        let two_zones_full = [
            m("a", "z1", false),
            m("b", "z1", false),
            m("c", "z2", false),
        ];
        assert!(zone_warnings(&two_zones_full).is_empty());
    }
}
