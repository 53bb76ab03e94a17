//! `keel backup save` takes an online backup of a live 3-member cluster
//! whose recorded content hash equals the cluster's HashKV at the backup's
//! revision; `verify` and `inspect` work offline and refuse corrupt files.

mod common;

use std::time::Duration;

use common::*;
use keel_chaos::{Flavor, ProcessCluster};
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{HashKvRequest, RangeRequest, StatusRequest};

fn keel(args: &[&str]) -> std::process::Output {
    common::keel().args(args).output().expect("run keel")
}

fn field(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))[name.len()..]
        .trim()
        .to_string()
}

/// What `keel backup save` reported.
struct Saved {
    stdout: String,
    revision: i64,
    /// The content hash, as printed (8 hex digits).
    hash: String,
}

/// Runs `keel backup save` against `endpoints`, failing the test if it fails.
fn save(endpoints: &str, out: &str) -> Saved {
    let o = keel(&["backup", "save", "--endpoints", endpoints, "--out", out]);
    assert!(
        o.status.success(),
        "save failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let first = |name: &str| {
        field(&stdout, name)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    Saved {
        revision: first("revision").parse().unwrap(),
        hash: first("content hash"),
        stdout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_live_cluster_verifies_offline_and_corruption_is_caught() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    // The control plane writes its own keys at start (the default
    // namespaces, the leader's fencing token, the CA, the admin token's
    // hash); count them first.
    let base = poll(
        Duration::from_secs(20),
        "the control plane's keys",
        || async {
            let ns = keys_with_prefix(&eps[0], "/registry/namespaces/", false)
                .await
                .ok()?;
            let fence = keys_with_prefix(&eps[0], "/keel/leader", false)
                .await
                .ok()?;
            // The CA and the admin token's hash.
            let creds = keys_with_prefix(&eps[0], "/keel/pki/", false)
                .await
                .ok()?
                .len()
                + keys_with_prefix(&eps[0], "/keel/tokens/", false)
                    .await
                    .ok()?
                    .len();
            (ns.len() == 3 && fence.len() == 1 && creds == 2)
                .then_some(ns.len() + fence.len() + creds)
        },
    )
    .await;
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
    let saved = save(&eps.join(","), f);
    let stdout = saved.stdout.clone();
    assert_eq!(field(&stdout, "keys"), (base + 21).to_string());

    // Without --endpoints, save dials the client config's endpoints (what
    // `keel up` writes); a config without any is a clear error.
    let o = keel(&["backup", "save", "--out", f]);
    assert!(!o.status.success(), "save without endpoints succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no endpoints"), "{err}");
    let shared = std::fs::read_to_string(shared_pki().join("client-config.yaml")).unwrap();
    let with_eps = tc.dir.path().join("config-with-endpoints.yaml");
    let list: String = eps.iter().map(|e| format!("- {e}\n")).collect();
    std::fs::write(&with_eps, format!("{shared}endpoints:\n{list}")).unwrap();
    let from_config = tc.dir.path().join("from-config.keelbak");
    let o = keel(&[
        "--config",
        with_eps.to_str().unwrap(),
        "backup",
        "save",
        "--out",
        from_config.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = keel(&["backup", "verify", from_config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The backup carries the cluster CA (its key included), so it can be
    // sealed: `save --encrypt` leaves no readable key in the file, opening
    // needs the passphrase, and `inspect` never prints secret values.
    let plain = std::fs::read(&file).unwrap();
    let has_key = |b: &[u8]| b.windows(11).any(|w| w == b"PRIVATE KEY");
    assert!(has_key(&plain), "the backup should carry the CA key");
    let pass = tc.dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let wrong = tc.dir.path().join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let sealed = tc.dir.path().join("b1.sealed.keelbak");
    let (p, w, sf) = (
        pass.to_str().unwrap(),
        wrong.to_str().unwrap(),
        sealed.to_str().unwrap(),
    );
    let o = keel(&[
        "backup",
        "save",
        "--endpoints",
        &eps.join(","),
        "--out",
        sf,
        "--encrypt",
        "--passphrase-file",
        p,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !has_key(&std::fs::read(&sealed).unwrap()),
        "sealed file shows the key"
    );
    let o = keel(&["backup", "verify", sf, "--passphrase-file", p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = keel(&["backup", "verify", sf]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("encrypted"),
        "{o:?}"
    );
    let o = keel(&["backup", "verify", sf, "--passphrase-file", w]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{o:?}"
    );
    for (file, extra) in [(f, vec![]), (sf, vec!["--passphrase-file", p])] {
        let mut args = vec!["backup", "inspect", file, "--prefix", "/keel/"];
        args.extend(extra);
        let o = keel(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("/keel/pki/ca"), "{out}");
        assert!(
            !out.contains("PRIVATE KEY") && !out.contains("secretSha256"),
            "{out}"
        );
    }

    // The recorded content hash is the cluster's HashKV at that revision.
    let (rev, hash) = (saved.revision, saved.hash);
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
    // Offline commands read files only: a client config naming certificates
    // that are gone (a cluster since deleted) must not stop them.
    let stale = tc.dir.path().join("stale-config.yaml");
    std::fs::write(
        &stale,
        "certificateAuthority: /nonexistent/ca.crt\nclientCertificate: /nonexistent/admin.crt\n\
         clientKey: /nonexistent/admin.key\n",
    )
    .unwrap();
    let v = common::keel()
        .args(["--config", stale.to_str().unwrap(), "backup", "verify", f])
        .output()
        .unwrap();
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
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "default", "20"]),
        "no per-namespace count: {listing}"
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
    // Restore refuses the corrupt file and leaves the target untouched.
    let target = tc.dir.path().join("never");
    let r = keel(&[
        "backup",
        "restore",
        bad.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(
        !target.exists(),
        "restore of a corrupt file created the target dir"
    );

    // Signed backups: the right public key verifies, another one is refused.
    let key = tc.dir.path().join("backup.key");
    let other = tc.dir.path().join("other.key");
    for k in [&key, &other] {
        let g = keel(&["backup", "keygen", "--out", k.to_str().unwrap()]);
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    }
    let signed = tc.dir.path().join("signed.keelbak");
    let s = signed.to_str().unwrap();
    let out = keel(&[
        "backup",
        "save",
        "--endpoints",
        &eps.join(","),
        "--out",
        s,
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = key.with_extension("pub");
    let ok = keel(&[
        "backup",
        "verify",
        s,
        "--verify-key",
        pubkey.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("signature       valid"));
    let wrong = keel(&[
        "backup",
        "verify",
        s,
        "--verify-key",
        other.with_extension("pub").to_str().unwrap(),
    ]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("signed by another key"),
        "{wrong:?}"
    );
    let unsigned = keel(&[
        "backup",
        "verify",
        f,
        "--verify-key",
        pubkey.to_str().unwrap(),
    ]);
    assert!(!unsigned.status.success());
    assert!(
        String::from_utf8_lossy(&unsigned.stderr).contains("not signed"),
        "{unsigned:?}"
    );
}

async fn hash_at(ep: &str, revision: i64) -> Result<u32, tonic::Status> {
    Ok(MaintenanceClient::new(channel(ep).await)
        .hash_kv(HashKvRequest { revision })
        .await?
        .into_inner()
        .hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_builds_an_identical_new_cluster_and_drill_passes() {
    let tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    for i in 0..15 {
        put(
            &eps[i % 3],
            &format!("/registry/deployments/default/d{i}"),
            "x",
        )
        .await
        .unwrap();
    }
    let file = tc.dir.path().join("b.keelbak");
    let f = file.to_str().unwrap().to_string();
    let saved = save(&eps.join(","), &f);
    let (stdout, rev, hash) = (saved.stdout, saved.revision, saved.hash);
    let old_cluster = field(&stdout, "cluster id");

    // All members of a new cluster, then start it.
    let new_root = tempfile::tempdir().unwrap();
    let root = new_root.path().to_str().unwrap();
    let ic = "m1=127.0.0.1:1,m2=127.0.0.1:2,m3=127.0.0.1:3";
    let r = keel(&[
        "backup",
        "restore",
        &f,
        "--all-members",
        root,
        "--initial-cluster",
        ic,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Restoring over data is refused.
    let again = keel(&[
        "backup",
        "restore",
        &f,
        "--all-members",
        root,
        "--initial-cluster",
        ic,
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // No --pki-dir: each member serves with the CA the restore wrote into
    // its data dir (taken from the backup: the shared PKI's), which the
    // test clients trust.
    let mut new =
        ProcessCluster::plan(Flavor::Keel, &bin(), new_root.path(), 3, None, &[]).unwrap();
    new.set_credentials(common::shared_credentials());
    new.spawn_all().unwrap();
    new.wait_ready(Duration::from_secs(30)).await.unwrap();
    let neps = new.endpoints();
    for ep in &neps {
        let h = poll(Duration::from_secs(10), "restored hash", || async {
            hash_at(ep, rev).await.ok()
        })
        .await;
        assert_eq!(
            format!("{h:08x}"),
            hash,
            "member {ep} differs from the backup"
        );
    }
    assert_eq!(
        keys_with_prefix(&neps[0], "/registry/deployments/", false)
            .await
            .unwrap()
            .len(),
        15
    );
    let st = MaintenanceClient::new(channel(&neps[0]).await)
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        format!("{:x}", st.header.unwrap().cluster_id),
        old_cluster,
        "cluster id must be new"
    );
    // The restored cluster takes writes after the backup's revision.
    // Revisions before the backup's read as compacted: old watchers relist.
    let before = kv(&neps[0])
        .await
        .range(RangeRequest {
            key: b"/registry/".to_vec(),
            range_end: b"/registry0".to_vec(),
            revision: rev - 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(before.code(), tonic::Code::OutOfRange, "{before:?}");
    assert!(put(&neps[1], "after", "restore").await.unwrap() > rev);
    // Credentials survive the restore: the old admin token (its hash came
    // with the backup; no token file was given to the new masters) works on
    // the REST API, over HTTPS with the CA the backup carried.
    let token = std::fs::read_to_string(common::shared_pki().join("admin.token")).unwrap();
    let apis: Vec<String> = new.members.iter().map(|m| m.api_addr()).collect();
    let by_token = keel_proto::client::ApiClient::try_new(
        &apis,
        &keel_proto::client::Credentials::tls(
            std::fs::read_to_string(new_root.path().join("m1/pki/ca.crt")).unwrap(),
            None,
        )
        .with_token(token.trim()),
    )
    .unwrap();
    poll(
        Duration::from_secs(20),
        "the old token on the restored cluster",
        || async { by_token.get_value("/api/v1/namespaces/default").await.ok() },
    )
    .await;
    assert!(!new_root.path().join("m1/pki/admin.token").exists());
    drop(new);

    // With a revision bump, old revisions read as compacted.
    let bumped = tempfile::tempdir().unwrap();
    let d = bumped.path().join("m1");
    let r = keel(&[
        "backup",
        "restore",
        &f,
        "--data-dir",
        d.to_str().unwrap(),
        "--bump-revision",
        "1000",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // No --pki-dir: each member serves with the CA the restore wrote into
    // its data dir (taken from the backup), which the test clients trust.
    let mut one = ProcessCluster::plan(Flavor::Keel, &bin(), bumped.path(), 1, None, &[]).unwrap();
    one.set_credentials(common::shared_credentials());
    one.spawn_all().unwrap();
    one.wait_ready(Duration::from_secs(30)).await.unwrap();
    let ep = one.endpoints()[0].clone();
    let old = kv(&ep)
        .await
        .range(RangeRequest {
            key: b"/registry/".to_vec(),
            range_end: b"/registry0".to_vec(),
            revision: rev,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::OutOfRange, "{old:?}");
    assert!(put(&ep, "k", "v").await.unwrap() > rev + 1000);
    drop(one);

    // The drill restores, starts, compares and reports.
    let drill = keel(&["backup", "drill", &f]);
    let report = String::from_utf8_lossy(&drill.stdout);
    assert!(
        drill.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&drill.stderr)
    );
    assert!(report.contains("RESULT: PASS"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_writes_scheduled_verified_backups_and_keeps_the_newest() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backups");
    let d = dir.to_str().unwrap().to_string();
    // Scheduled backups hold the CA key: seal them with a key file.
    let key = root.path().join("enc.key");
    let k = key.to_str().unwrap().to_string();
    let out = keel(&["backup", "keygen", "--encryption", "--out", &k]);
    assert!(out.status.success(), "{out:?}");
    let tc = start(
        3,
        &[
            "--backup-dir",
            &d,
            "--backup-interval",
            "1s",
            "--backup-retain",
            "2",
            "--backup-key-file",
            &k,
        ],
    )
    .await;
    let eps = tc.c.endpoints();
    // Keep writing so each backup is at a new revision (names are unique).
    poll(Duration::from_secs(20), "3 scheduled backups", || async {
        put(&eps[0], "/registry/pods/default/tick", "x")
            .await
            .ok()?;
        let logs = std::fs::read_to_string(tc.c.log_path(tc.c.leader().await?)).ok()?;
        let written = logs
            .matches("scheduled backup written and verified")
            .count();
        (written >= 3).then_some(())
    })
    .await;
    // Retention keeps 2: the third write pruned (a fourth may be in flight).
    let backups = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "keelbak"))
            .count()
    };
    poll(
        Duration::from_secs(10),
        "at most 2 backups kept",
        || async {
            let n = backups();
            (n > 0 && n <= 2).then_some(())
        },
    )
    .await;
    // Without the key they are only known to be encrypted; with it, verified.
    let out = keel(&["backup", "list", "--backup-dir", &d]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("encrypted"), "{listing}");
    assert!(!listing.contains("  ok"), "{listing}");
    let out = keel(&["backup", "list", "--backup-dir", &d, "--key-file", &k]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listing}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing.matches("  ok").count() >= 1, "{listing}");

    // A damaged backup in the directory makes `list` fail, naming it.
    std::fs::write(dir.join("keel-damaged.keelbak"), b"KEELBAK1\nxx").unwrap();
    let out = keel(&["backup", "list", "--backup-dir", &d, "--key-file", &k]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("BAD: truncated"));
}

/// A key-value as compared across clusters: key, value, create and mod revision, version.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

async fn all_at(ep: &str, revision: i64) -> Vec<Row> {
    kv(ep)
        .await
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .into_iter()
        .map(|k| (k.key, k.value, k.create_revision, k.mod_revision, k.version))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_write_load_restores_exactly_and_old_watchers_see_compaction() {
    use futures::StreamExt;
    use keel_proto::etcdserverpb::watch_client::WatchClient;
    use keel_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};

    let tc = start(3, &["--auto-compact-revisions", "0"]).await;
    let eps = tc.c.endpoints();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (eps, stop) = (eps.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = put(
                    &eps[n % 3],
                    &format!("/registry/pods/default/w{}", n % 40),
                    &n.to_string(),
                )
                .await;
                n += 1;
            }
            n
        })
    };
    poll(Duration::from_secs(10), "writes under way", || async {
        (keys_with_prefix(&eps[0], "/registry/pods/", true)
            .await
            .ok()?
            .len()
            >= 20)
            .then_some(())
    })
    .await;
    let file = tc.dir.path().join("load.keelbak");
    let f = file.to_str().unwrap();
    let rev = save(&eps[1], f).revision;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let source = all_at(&eps[0], rev).await;
    assert!(!source.is_empty());

    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("m1");
    let r = keel(&[
        "backup",
        "restore",
        f,
        "--data-dir",
        d.to_str().unwrap(),
        "--bump-revision",
        "100",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // No --pki-dir: each member serves with the CA the restore wrote into
    // its data dir (taken from the backup), which the test clients trust.
    let mut restored =
        ProcessCluster::plan(Flavor::Keel, &bin(), root.path(), 1, None, &[]).unwrap();
    restored.set_credentials(common::shared_credentials());
    restored.spawn_all().unwrap();
    restored.wait_ready(Duration::from_secs(30)).await.unwrap();
    let rep = restored.endpoints()[0].clone();
    // Every key, value and revision as the source had them at the backup revision.
    // The restored cluster's leader writes its own fencing token (runtime
    // state, not data); everything else must be exactly the source's.
    let data =
        |v: Vec<Row>| -> Vec<Row> { v.into_iter().filter(|k| k.0 != b"/keel/leader").collect() };
    let now = data(all_at(&rep, 0).await);
    let source = data(source);
    assert_eq!(
        now, source,
        "restored state differs from the source at revision {rev} ({writes} writes ran)"
    );

    // A watcher of the old cluster reconnecting with a later revision gets
    // a compaction error, never events from an older history.
    let req = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"/registry/".to_vec(),
                range_end: b"/registry0".to_vec(),
                start_revision: rev + 1,
                ..Default::default()
            },
        )),
    };
    let mut s = WatchClient::new(channel(&rep).await)
        .watch(futures::stream::iter(vec![req]).chain(futures::stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let canceled = loop {
        let m = tokio::time::timeout_at(deadline, s.next())
            .await
            .expect("no compaction cancel within 10 s")
            .expect("watch stream ended")
            .expect("watch error");
        assert!(
            m.events.is_empty(),
            "old watcher got events from the restored history"
        );
        if m.canceled {
            break m;
        }
    };
    assert!(canceled.compact_revision > rev, "{canceled:?}");
}
