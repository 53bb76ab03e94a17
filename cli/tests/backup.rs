//! `keel backup save` takes an online backup of a live 3-member cluster
//! whose recorded content hash equals the cluster's HashKV at the backup's
//! revision; `verify` and `inspect` work offline and refuse corrupt files.

mod common;

use std::process::Command;

use common::*;
use keel_proto::etcdserverpb::HashKvRequest;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().expect("run keel")
}

fn field(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))[name.len()..]
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_live_cluster_verifies_offline_and_corruption_is_caught() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    for i in 0..20 {
        put(
            &eps[i % 3],
            &format!("/registry/pods/default/p{i:02}"),
            "spec",
        )
        .await
        .unwrap();
    }
    put(&eps[0], "/registry/services/default/web", "svc")
        .await
        .unwrap();
    let file = tc.dir.path().join("b1.keelbak");
    let f = file.to_str().unwrap();
    let out = keel(&["backup", "save", "--endpoints", &eps.join(","), "--out", f]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "save failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(&stdout, "keys"), "21");

    // The recorded content hash is the cluster's HashKV at that revision.
    let rev: i64 = field(&stdout, "revision")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let hash = field(&stdout, "content hash");
    let live = MaintenanceClient::new(channel(&eps[1]).await)
        .hash_kv(HashKvRequest { revision: rev })
        .await
        .unwrap()
        .into_inner()
        .hash;
    assert_eq!(
        hash.split_whitespace().next().unwrap(),
        format!("{live:08x}")
    );

    let v = keel(&["backup", "verify", f]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let i = keel(&["backup", "inspect", f, "--prefix", "/registry/services/"]);
    let listing = String::from_utf8_lossy(&i.stdout);
    assert!(
        listing.contains("pods") && listing.contains("20"),
        "{listing}"
    );
    assert!(
        listing.contains("/registry/services/default/web"),
        "{listing}"
    );
    assert!(!listing.contains("/registry/pods/default/p00"), "{listing}");

    // A flipped byte and a truncated copy are refused with the reason.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    let bad = tc.dir.path().join("flipped.keelbak");
    std::fs::write(&bad, &flipped).unwrap();
    let r = keel(&["backup", "verify", bad.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("checksum mismatch"),
        "{r:?}"
    );
    let cut = tc.dir.path().join("cut.keelbak");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let r = keel(&["backup", "verify", cut.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("truncated"),
        "{r:?}"
    );
}
