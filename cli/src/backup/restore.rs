//! Restoring a backup into a new member's data dir, and `keel backup
//! drill`: restore into a scratch one-member cluster and check it serves
//! the same content.

use std::path::Path;

use anyhow::bail;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_store::backup;
use keel_store::sealed::Secret;

use super::file::{print_header, read};

/// Fills an empty data dir with the backup's key space.
pub(super) async fn restore_into(b: &backup::Backup, dir: &Path, bump: i64) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: restore only into a new data dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let kv = keel_store::mvcc::KvStore::open(dir)?;
    kv.restore(&b.records(), bump).await?;
    // The cluster CA travels in the key space; the restored member serves
    // with it (its default --pki-dir), so existing clients keep working.
    crate::pki::restore_ca(&kv, dir)?;
    Ok(())
}

pub(super) async fn drill(file: &Path, secret: Option<&Secret>) -> anyhow::Result<()> {
    let (b, enc) = read(file, secret)?;
    let tmp = std::env::temp_dir().join(format!("keel-drill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    restore_into(&b, &tmp.join("m1"), 0).await?;
    let bin = std::env::current_exe()?;
    let cluster =
        keel_chaos::ProcessCluster::start(keel_chaos::Flavor::Keel, &bin, &tmp, 1, None, &[])?;
    let result = async {
        cluster
            .wait_ready(std::time::Duration::from_secs(30))
            .await?;
        let ch = crate::client::connect(cluster.credentials(), &cluster.endpoints()[0]).await?;
        let r = MaintenanceClient::new(ch)
            .hash_kv(keel_proto::etcdserverpb::HashKvRequest {
                revision: b.header.revision,
            })
            .await?
            .into_inner();
        anyhow::Ok(r)
    }
    .await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&tmp);
    let r = result?;
    println!("Keel backup drill report");
    println!("  file            {}", file.display());
    print_header(&b.header, enc);
    println!(
        "  restored into   a single-member cluster (new cluster id {:x})",
        r.header.map(|h| h.cluster_id).unwrap_or(0)
    );
    println!(
        "  HashKV at rev {} = {:08x}, header content hash = {:08x}",
        b.header.revision, r.hash, b.header.content_hash
    );
    if r.hash == b.header.content_hash {
        println!("RESULT: PASS");
        Ok(())
    } else {
        println!("RESULT: FAIL");
        bail!("drill failed: restored HashKV differs from the backup's content hash")
    }
}
