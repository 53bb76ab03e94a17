//! SIGSTOP a member (often the leader) for the hold, then SIGCONT. A paused
//! leader wakes up still believing it leads; the checkers prove that it
//! commits nothing and serves no stale linearizable read after the others
//! moved on.

use super::schedule::Planned;
use super::{Ctx, Injected, hold};

pub async fn run(ctx: &mut Ctx<'_>, p: &Planned) -> Injected {
    let i = ctx.member(&p.target).await?;
    let target = ctx.describe(i).await;
    ctx.cluster.pause(i);
    tracing::info!(%target, "nemesis: SIGSTOP");
    hold(p.hold_ms).await;
    ctx.cluster.resume(i);
    Ok((target, vec![i]))
}
