//! A graceful restart: SIGTERM (the member shuts down cleanly), then start it
//! again on the same data dir, as a rolling upgrade does.

use std::time::Duration;

use super::schedule::Planned;
use super::{Ctx, Injected};

pub async fn run(ctx: &mut Ctx<'_>, p: &Planned) -> Injected {
    let i = ctx.member(&p.target).await?;
    let target = ctx.describe(i).await;
    tracing::info!(%target, "nemesis: restart");
    tokio::task::block_in_place(|| ctx.cluster.stop(i, Duration::from_secs(5)));
    ctx.cluster.restart(i)?;
    Ok((target, vec![i]))
}
