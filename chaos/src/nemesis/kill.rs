//! SIGKILL a member (or whoever leads), keep it down for the hold, then
//! restart it on its data dir: a crash with the disk intact. What it proves:
//! the survivors elect a leader and keep every acknowledged write, and the
//! restarted member catches up from its fsynced log.

use super::schedule::Planned;
use super::{Ctx, Injected, hold};

pub async fn run(ctx: &mut Ctx<'_>, p: &Planned) -> Injected {
    let i = ctx.member(&p.target).await?;
    let target = ctx.describe(i).await;
    ctx.cluster.kill(i);
    tracing::info!(%target, "nemesis: SIGKILL");
    hold(p.hold_ms).await;
    ctx.cluster.restart(i)?;
    Ok((target, vec![i]))
}
