//! Debian's real `etcdctl` (v3.4, API 3) against a 3-member Keel cluster:
//! the KV, txn, watch, lease, cluster and maintenance commands an operator
//! uses must work unchanged, with etcd's output.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::etcdctl::*;
use common::*;
use serde_json::Value;

/// A cluster plus the comma-separated list of its client endpoints.
struct Ctl {
    tc: TestCluster,
    all: String,
}

impl Ctl {
    async fn start() -> Ctl {
        // Fail before starting a cluster when etcdctl is missing.
        etcdctl_bin();
        let tc = start(3, &[]).await;
        let all = tc.c.endpoints().join(",");
        Ctl { tc, all }
    }

    async fn run(&self, args: &[&str]) -> String {
        ctl_on(&self.all, args, None)
            .await
            .expect_ok(&args.join(" "))
    }

    async fn run_stdin(&self, args: &[&str], stdin: &str) -> String {
        ctl_on(&self.all, args, Some(stdin))
            .await
            .expect_ok(&args.join(" "))
    }

    /// `<args> -w json`, parsed; `None` if etcdctl failed (for polling).
    async fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-w", "json"]);
        let out = ctl_on(&self.all, &a, None).await;
        if !out.ok {
            eprintln!("etcdctl {a:?} failed (will retry): {}", out.stderr);
            return None;
        }
        Some(
            serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("etcdctl {a:?}: bad JSON ({e}):\n{}", out.stdout)),
        )
    }

    /// `endpoint status` as (member id, leader id) per endpoint.
    async fn statuses(&self) -> Option<Vec<(u64, u64)>> {
        let v = self.json(&["endpoint", "status"]).await?;
        v.as_array()?
            .iter()
            .map(|e| {
                let s = &e["Status"];
                Some((
                    s["header"]["member_id"].as_u64()?,
                    s["leader"].as_u64().unwrap_or(0),
                ))
            })
            .collect()
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_kv_txn_and_watch() {
    let ctl = Ctl::start().await;

    // put / get --prefix / del
    assert_eq!(ctl.run(&["put", "app/a", "1"]).await.trim(), "OK");
    assert_eq!(ctl.run(&["put", "app/b", "2"]).await.trim(), "OK");
    assert_eq!(ctl.run(&["put", "other", "3"]).await.trim(), "OK");
    let got = ctl.run(&["get", "app/", "--prefix"]).await;
    assert_eq!(
        lines(&got),
        ["app/a", "1", "app/b", "2"],
        "get --prefix:\n{got}"
    );
    let got = ctl.run(&["get", "app/", "--prefix", "--keys-only"]).await;
    assert_eq!(
        got.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        ["app/a", "app/b"]
    );
    assert_eq!(ctl.run(&["del", "app/a"]).await.trim(), "1");
    assert_eq!(ctl.run(&["del", "app/a"]).await.trim(), "0");
    let got = ctl.run(&["get", "app/", "--prefix"]).await;
    assert_eq!(lines(&got), ["app/b", "2"], "after del:\n{got}");
    assert_eq!(ctl.run(&["del", "--prefix", "app/"]).await.trim(), "1");
    assert_eq!(ctl.run(&["get", "app/", "--prefix"]).await.trim(), "");

    // txn: compares, blank line, success ops, blank line, failure ops, blank line.
    ctl.run(&["put", "tx", "v1"]).await;
    let out = ctl
        .run_stdin(
            &["txn"],
            "value(\"tx\") = \"v1\"\n\nput tx v2\n\nput tx failed\n\n",
        )
        .await;
    assert_eq!(out.lines().next(), Some("SUCCESS"), "txn:\n{out}");
    assert!(out.contains("OK"), "txn put result missing:\n{out}");
    assert_eq!(lines(&ctl.run(&["get", "tx"]).await), ["tx", "v2"]);
    // The same compare now fails: the failure branch runs.
    let out = ctl
        .run_stdin(
            &["txn"],
            "value(\"tx\") = \"v1\"\n\nput tx v3\n\nput tx failed\nget other\n\n",
        )
        .await;
    assert_eq!(out.lines().next(), Some("FAILURE"), "txn:\n{out}");
    assert!(
        out.contains("other\n3"),
        "txn get in failure branch missing:\n{out}"
    );
    assert_eq!(lines(&ctl.run(&["get", "tx"]).await), ["tx", "failed"]);
    // A version compare against a missing key (version 0) succeeds.
    let out = ctl
        .run_stdin(
            &["txn"],
            "version(\"fresh\") = \"0\"\n\nput fresh yes\n\n\n",
        )
        .await;
    assert_eq!(out.lines().next(), Some("SUCCESS"), "txn:\n{out}");
    assert_eq!(lines(&ctl.run(&["get", "fresh"]).await), ["fresh", "yes"]);

    // watch: start from the next revision, so no event can be missed
    // whenever the watch is actually established.
    let rev = put(&ctl.tc.c.endpoints()[0], "w-marker", "x")
        .await
        .expect("put marker");
    let out_path = ctl.tc.dir.path().join("watch.out");
    let out_file = std::fs::File::create(&out_path).expect("watch output file");
    let mut watch = command(&ctl.all)
        .args(["watch", "wk", "--prefix", &format!("--rev={}", rev + 1)])
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .expect("spawn etcdctl watch");
    // Running (not exited with an error) before writing.
    assert!(
        watch.try_wait().expect("try_wait").is_none(),
        "watch exited at once"
    );
    assert_eq!(ctl.run(&["put", "wk/1", "hello"]).await.trim(), "OK");
    assert_eq!(ctl.run(&["put", "unwatched", "no"]).await.trim(), "OK");
    assert_eq!(ctl.run(&["del", "wk/1"]).await.trim(), "1");
    let seen = poll(
        Duration::from_secs(15),
        "PUT and DELETE events from etcdctl watch",
        || {
            let p = out_path.clone();
            async move {
                let s = std::fs::read_to_string(&p).ok()?;
                (s.contains("DELETE")).then_some(s)
            }
        },
    )
    .await;
    assert!(
        watch.try_wait().expect("try_wait").is_none(),
        "watch exited:\n{seen}"
    );
    watch.kill().await.expect("kill watch");
    let l = lines(&seen);
    assert!(l.len() >= 5, "watch output:\n{seen}");
    assert_eq!(&l[..3], ["PUT", "wk/1", "hello"], "watch output:\n{seen}");
    assert_eq!(&l[3..5], ["DELETE", "wk/1"], "watch output:\n{seen}");
    assert!(
        !seen.contains("unwatched"),
        "watch saw a key outside its prefix:\n{seen}"
    );
}

/// The hex lease id in "lease <hex> granted with TTL(100s)".
fn lease_id(out: &str) -> String {
    let mut w = out.split_whitespace();
    assert_eq!(w.next(), Some("lease"), "lease grant output: {out}");
    let id = w.next().expect("lease id").to_string();
    assert!(
        u64::from_str_radix(&id, 16).is_ok(),
        "lease id {id} is not hex: {out}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_leases() {
    let ctl = Ctl::start().await;

    let out = ctl.run(&["lease", "grant", "100"]).await;
    let id = lease_id(&out);
    assert!(out.contains("granted with TTL(100s)"), "lease grant: {out}");

    let lease_flag = format!("--lease={id}");
    assert_eq!(
        ctl.run(&["put", &lease_flag, "leased/k", "v"]).await.trim(),
        "OK"
    );
    assert_eq!(
        lines(&ctl.run(&["get", "leased/k"]).await),
        ["leased/k", "v"]
    );

    let out = ctl.run(&["lease", "keep-alive", "--once", &id]).await;
    assert!(
        out.contains(&format!("lease {id} keepalived with TTL(100)")),
        "keep-alive --once: {out}"
    );

    let out = ctl.run(&["lease", "timetolive", "--keys", &id]).await;
    assert!(
        out.contains(&format!("lease {id} granted with TTL(100s)")),
        "timetolive: {out}"
    );
    assert!(
        out.contains("attached keys([leased/k])"),
        "timetolive keys: {out}"
    );
    let remaining: i64 = out
        .split("remaining(")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in: {out}"));
    assert!(
        (90..=100).contains(&remaining),
        "remaining TTL {remaining}: {out}"
    );

    let out = ctl.run(&["lease", "revoke", &id]).await;
    assert!(
        out.contains(&format!("lease {id} revoked")),
        "revoke: {out}"
    );
    assert_eq!(
        ctl.run(&["get", "leased/k"]).await.trim(),
        "",
        "key survived revoke"
    );
    let out = ctl.run(&["lease", "timetolive", &id]).await;
    assert!(
        out.contains("already expired"),
        "timetolive after revoke: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_and_maintenance() {
    let ctl = Ctl::start().await;
    let eps = ctl.tc.c.endpoints();
    for i in 0..20 {
        ctl.run(&["put", &format!("m/{i}"), "x"]).await;
    }

    // member list: "id, started, name, peer URLs, client URLs, is learner"
    // Each member publishes its client URL shortly after starting (as etcd
    // members publish their attributes): wait until all three have.
    let out = poll(
        Duration::from_secs(10),
        "client URLs of all members",
        || async {
            let out = ctl.run(&["member", "list"]).await;
            let published = out
                .lines()
                .filter(|l| !l.is_empty())
                .all(|l| l.split(", ").nth(4).is_some_and(|u| !u.is_empty()));
            published.then_some(out)
        },
    )
    .await;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(", ").collect())
        .collect();
    assert_eq!(rows.len(), 3, "member list:\n{out}");
    let mut names: Vec<&str> = rows.iter().map(|r| r[2]).collect();
    names.sort();
    assert_eq!(names, ["m1", "m2", "m3"], "member list:\n{out}");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(ctl.tc.c.status(i).await.expect("status").0);
    }
    for r in &rows {
        assert_eq!(r.len(), 6, "member list row {r:?}");
        assert_eq!(r[1], "started", "member list row {r:?}");
        assert_eq!(r[5], "false", "member list row {r:?}: not a learner");
        let i = (r[2][1..].parse::<usize>().unwrap()) - 1;
        assert_eq!(r[0], format!("{:x}", ids[i]), "member id of {}", r[2]);
        assert_eq!(
            r[4],
            format!("https://{}", eps[i]),
            "client URL of {}",
            r[2]
        );
    }

    // endpoint status: exactly one leader, and every member names it.
    let st = ctl.statuses().await.expect("endpoint status");
    assert_eq!(st.len(), 3, "{st:?}");
    let leaders: Vec<u64> = st
        .iter()
        .filter(|(id, l)| id == l)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(leaders.len(), 1, "IS LEADER true on exactly one: {st:?}");
    assert!(st.iter().all(|(_, l)| *l == leaders[0]), "{st:?}");
    let table = ctl.run(&["endpoint", "status", "-w", "table"]).await;
    let cells: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let col = cells[0]
        .iter()
        .position(|c| *c == "IS LEADER")
        .unwrap_or_else(|| panic!("no IS LEADER column:\n{table}"));
    let is_leader: Vec<&str> = cells[1..].iter().map(|r| r[col]).collect();
    assert_eq!(is_leader.len(), 3, "table:\n{table}");
    assert_eq!(
        is_leader.iter().filter(|c| **c == "true").count(),
        1,
        "IS LEADER true on exactly one:\n{table}"
    );

    // endpoint hashkv: equal on every member once they applied everything.
    let hashes = poll(
        Duration::from_secs(15),
        "equal hashkv on all members",
        || async {
            let v = ctl.json(&["endpoint", "hashkv"]).await?;
            let h: Vec<u64> = v
                .as_array()?
                .iter()
                .map(|e| e["HashKV"]["hash"].as_u64().unwrap_or(0))
                .collect();
            (h.len() == 3 && h.iter().all(|x| *x == h[0])).then_some(h)
        },
    )
    .await;
    assert_ne!(hashes[0], 0, "hash of a non-empty key space is 0");

    // snapshot save (etcdctl requires exactly one endpoint for it).
    let file = ctl.tc.dir.path().join("backup.db");
    let out = ctl_on(&eps[0], &["snapshot", "save", file.to_str().unwrap()], None)
        .await
        .expect_ok("snapshot save");
    assert!(out.contains("Snapshot saved at"), "snapshot save: {out}");
    let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(len > 0, "snapshot file {} missing or empty", file.display());
    assert!(!Path::new(&format!("{}.part", file.display())).exists());

    // move-leader to a follower, by its hex id.
    let leader = leaders[0];
    let target = *ids.iter().find(|id| **id != leader).unwrap();
    let out = ctl.run(&["move-leader", &format!("{target:x}")]).await;
    assert!(
        out.contains(&format!(
            "Leadership transferred from {leader:x} to {target:x}"
        )),
        "move-leader: {out}"
    );
    poll(
        Duration::from_secs(10),
        "every member to follow the new leader",
        || async {
            let st = ctl.statuses().await?;
            (st.len() == 3 && st.iter().all(|(_, l)| *l == target)).then_some(())
        },
    )
    .await;
    // The cluster still takes writes under the new leader.
    assert_eq!(ctl.run(&["put", "after-move", "ok"]).await.trim(), "OK");
}
