//! `keel rollout status|history|undo|pause|resume` for Deployments.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use keel_proto::api::apps::{REVISION_ANNOTATION, ROLLBACK_ANNOTATION};
use keel_proto::api::{Deployment, ReplicaSet};
use serde_json::json;

use super::{Target, kind_and_name};

#[derive(Subcommand, Debug)]
pub enum RolloutCmd {
    /// Follow a rollout until it completes (or --timeout passes).
    Status(RolloutArgs),
    /// List the revisions of a Deployment.
    History(RolloutArgs),
    /// Roll back to the previous revision, or to --to-revision.
    Undo(RolloutArgs),
    /// Stop a rollout where it is (scaling still applies).
    Pause(RolloutArgs),
    /// Continue a paused rollout.
    Resume(RolloutArgs),
}

#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// deployment/NAME, or `deployment` followed by NAME.
    pub what: String,
    pub name: Option<String>,
    /// For undo: the revision to go back to (0: the previous one).
    #[arg(long, default_value_t = 0)]
    pub to_revision: i64,
    /// For status: give up after this long.
    #[arg(long, default_value = "300", value_parser = |s: &str| s.trim_end_matches('s').parse::<u64>().map(Duration::from_secs))]
    pub timeout: Duration,
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The ReplicaSets a Deployment controls, oldest revision first.
async fn owned(
    c: &keel_proto::client::ApiClient,
    d: &Deployment,
) -> anyhow::Result<Vec<ReplicaSet>> {
    let mut rss: Vec<ReplicaSet> = c
        .list::<ReplicaSet>(&d.metadata.namespace, "")
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .controller()
                .is_some_and(|o| o.uid == d.metadata.uid)
        })
        .collect();
    rss.sort_by_key(revision);
    Ok(rss)
}

/// What a rollout still waits for, or None when it is complete.
pub fn pending(d: &Deployment) -> Option<String> {
    let s = &d.status;
    let want = d.replicas();
    if s.observed_generation < d.metadata.generation {
        return Some("waiting for the deployment spec update to be observed".into());
    }
    if s.updated_replicas < want {
        return Some(format!(
            "{} out of {want} new replicas have been updated",
            s.updated_replicas
        ));
    }
    if s.replicas > s.updated_replicas {
        return Some(format!(
            "{} old replicas are pending termination",
            s.replicas - s.updated_replicas
        ));
    }
    if s.available_replicas < s.updated_replicas {
        return Some(format!(
            "{} of {} updated replicas are available",
            s.available_replicas, s.updated_replicas
        ));
    }
    None
}

pub async fn run(t: &Target, cmd: RolloutCmd) -> anyhow::Result<()> {
    let c = t.client();
    let a = match &cmd {
        RolloutCmd::Status(a)
        | RolloutCmd::History(a)
        | RolloutCmd::Undo(a)
        | RolloutCmd::Pause(a)
        | RolloutCmd::Resume(a) => a,
    };
    let (k, name) = kind_and_name(&a.what, a.name.as_deref())?;
    if k.kind != "Deployment" {
        anyhow::bail!("rollout works on deployments, not {}", k.resource());
    }
    let ns = &t.namespace;
    match &cmd {
        RolloutCmd::Status(a) => {
            let deadline = Instant::now() + a.timeout;
            let mut last = String::new();
            loop {
                let d: Deployment = c.get(ns, &name).await?;
                match pending(&d) {
                    None => {
                        println!("deployment \"{name}\" successfully rolled out");
                        return Ok(());
                    }
                    Some(msg) => {
                        if d.spec.paused {
                            anyhow::bail!(
                                "deployment \"{name}\" is paused: resume it to continue ({msg})"
                            );
                        }
                        if msg != last {
                            println!(
                                "Waiting for deployment \"{name}\" rollout to finish: {msg}..."
                            );
                            last = msg;
                        }
                    }
                }
                if Instant::now() >= deadline {
                    anyhow::bail!("timed out waiting for the rollout of \"{name}\"");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        RolloutCmd::History(_) => {
            let d: Deployment = c.get(ns, &name).await?;
            println!("deployment.apps/{name}");
            let rows: Vec<Vec<String>> = owned(&c, &d)
                .await?
                .iter()
                .map(|rs| {
                    vec![
                        revision(rs).to_string(),
                        rs.metadata
                            .annotations
                            .get("kubernetes.io/change-cause")
                            .cloned()
                            .unwrap_or_else(|| "<none>".into()),
                    ]
                })
                .collect();
            println!(
                "{}",
                super::table::render(&["REVISION".into(), "CHANGE-CAUSE".into()], &rows)
            );
            Ok(())
        }
        RolloutCmd::Undo(a) => {
            // The Deployment controller performs the rollback (it copies the
            // chosen revision's template); here we only check that the
            // revision exists, for a clear error, and ask for it.
            let d: Deployment = c.get(ns, &name).await?;
            let revs: Vec<i64> = owned(&c, &d).await?.iter().map(revision).collect();
            let current = d
                .metadata
                .annotations
                .get(REVISION_ANNOTATION)
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or_else(|| revs.last().copied().unwrap_or(0));
            let target = if a.to_revision > 0 {
                revs.iter().copied().find(|r| *r == a.to_revision)
            } else {
                revs.iter().rev().copied().find(|r| *r < current)
            };
            let Some(to) = target else {
                anyhow::bail!(
                    "no revision {} to roll back to (current revision {current}, known: {revs:?})",
                    if a.to_revision > 0 {
                        a.to_revision.to_string()
                    } else {
                        "before the current".into()
                    }
                );
            };
            let patch = json!({"metadata": {"annotations": {ROLLBACK_ANNOTATION: to.to_string()}}});
            c.merge_patch::<Deployment>(ns, &name, &patch).await?;
            println!("deployment.apps/{name} rolled back to revision {to}");
            Ok(())
        }
        RolloutCmd::Pause(_) | RolloutCmd::Resume(_) => {
            let paused = matches!(cmd, RolloutCmd::Pause(_));
            c.merge_patch::<Deployment>(ns, &name, &json!({"spec": {"paused": paused}}))
                .await?;
            println!(
                "deployment.apps/{name} {}",
                if paused { "paused" } else { "resumed" }
            );
            Ok(())
        }
    }
}
