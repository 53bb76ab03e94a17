//! TODO

use super::Ctx;

pub async fn run(ctx: Ctx) {
    let _ = ctx;
    std::future::pending::<()>().await
}
