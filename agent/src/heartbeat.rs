//! The node heartbeat: renews the Lease `kube-node-lease/<node>` every
//! `--heartbeat` (2 s), which the masters' node lifecycle controller watches,
//! and every few renewals re-asserts the node's Ready condition (a node
//! marked NotReady while this agent was cut off becomes Ready again, and a
//! deleted Node is registered again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_proto::api::coordination::NODE_LEASE_NAMESPACE;
use keel_proto::api::meta::{condition, rfc3339};
use keel_proto::api::{Lease, Node};
use serde_json::json;

use crate::Ctx;
use crate::register;

/// Now as RFC 3339 with microseconds (Kubernetes' MicroTime).
pub fn micro_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let s = rfc3339(d.as_secs() as i64);
    format!("{}.{:06}Z", &s[..19], d.subsec_micros())
}

/// Renews the lease once, creating it when missing.
pub async fn renew(ctx: &Ctx) -> Result<(), keel_proto::client::ClientError> {
    let name = &ctx.cfg.name;
    let now = micro_now();
    let patch = json!({"spec": {
        "holderIdentity": name,
        "leaseDurationSeconds": ctx.cfg.lease_duration_seconds,
        "renewTime": now,
    }});
    match ctx
        .client
        .get()
        .merge_patch::<Lease>(NODE_LEASE_NAMESPACE, name, &patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == 404 => {
            let mut l = Lease::new(NODE_LEASE_NAMESPACE, name);
            l.spec.holder_identity = name.clone();
            l.spec.lease_duration_seconds = Some(ctx.cfg.lease_duration_seconds);
            l.spec.acquire_time = Some(now.clone());
            l.spec.renew_time = Some(now);
            match ctx.client.get().create(&l).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Makes sure the Node exists and says Ready.
async fn ensure_ready(ctx: &Ctx, agent: SocketAddr) {
    let c = ctx.client.get();
    match c.get::<Node>("", &ctx.cfg.name).await {
        Ok(n) => {
            if condition(&n.status.conditions, "Ready").is_some_and(|r| r.status == "True") {
                return;
            }
            let mut s = n.clone();
            s.status = register::node_status(ctx, agent, &n.status);
            match c.update_status(&s).await {
                Ok(_) => tracing::info!("node Ready again"),
                Err(e) => tracing::warn!(error = %e, "cannot mark the node Ready"),
            }
        }
        Err(e) if e.code() == 404 => {
            if let Err(e) = register::register(ctx, agent).await {
                tracing::warn!(error = %e, "cannot register the node again");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the node"),
    }
}

/// Renews the lease forever.
pub async fn run(ctx: Arc<Ctx>, agent: SocketAddr) {
    let mut tick = tokio::time::interval(ctx.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut failing = false;
    loop {
        tick.tick().await;
        match renew(&ctx).await {
            Ok(()) => {
                if failing {
                    tracing::info!("lease renewed again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot renew the node lease");
                }
                failing = true;
            }
        }
        n += 1;
        if n.is_multiple_of(5) {
            ensure_ready(&ctx, agent).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn micro_time_parses_as_rfc3339() {
        let t = super::micro_now();
        assert_eq!(t.len(), 27, "{t}");
        assert!(keel_proto::api::meta::parse_rfc3339(&t).is_some());
    }
}
