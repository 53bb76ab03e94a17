//! `keel bench kv --against-etcd` end to end: it starts a 3-member Keel
//! cluster and a 3-member etcd cluster (Debian's etcd-server, which
//! scripts/test.sh installs; the test fails if `etcd` is missing), runs every
//! workload briefly against both and prints the comparison. Asserts the
//! report's shape and that both sides really served writes and reads
//! without errors, and that Keel's per-stage breakdown names a leader and
//! the log's fsync, and that the single-client rows really ran on the
//! leader and on a follower. No timing is asserted: figures live in
//! BENCHMARKS.md. Also `keel bench apply`, the apply path alone: every
//! round applies the puts it says and reports the bytes they wrote.

use std::process::Command;

#[test]
fn bench_kv_against_etcd_reports_both_clusters_and_the_stage_breakdown() {
    let etcd = Command::new("etcd").arg("--version").output();
    assert!(
        etcd.is_ok_and(|o| o.status.success()),
        "etcd is missing: install Debian's etcd-server (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "kv", "--against-etcd", "--seconds", "1", "--dir"])
        .arg(dir.path().join("bench"))
        .env_remove("KEEL_ENDPOINTS")
        .output()
        .expect("run keel bench kv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for workload in [
        "put, 1 client on the leader",
        "put, 1 client on a follower",
        "put, 64 clients",
        "put, 256 clients",
        "linearizable get, 64 clients",
        "serializable get, 64 clients",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {workload} | ")) && l.ends_with("| 0/0 |"))
            .unwrap_or_else(|| panic!("no error-free row for {workload:?} in:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let keel_ops: f64 = cells[2].parse().expect("Keel ops/s");
        let etcd_ops: f64 = cells[5].parse().expect("etcd ops/s");
        assert!(keel_ops > 0.0 && etcd_ops > 0.0, "no operations in {row}");
    }
    assert!(stdout.contains("| idle, % of one core |"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("(leader)") && l.contains("propose to applied")),
        "no leader stage figures in:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.contains("log fsync")),
        "no log fsync figures in:\n{stdout}"
    );
    // Placement: on the leader row the leader served the client's writes
    // itself; on the follower row a follower forwarded them. (The leader's
    // control plane writes a little of its own in every row, so runs are
    // compared, not merely present.)
    let runs = |row: &str, leader: bool, stage: &str| -> u64 {
        stdout
            .lines()
            .filter(|l| {
                l.starts_with(&format!("| {row} | "))
                    && l.contains("(leader)") == leader
                    && l.contains(stage)
            })
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells[4].parse::<u64>().expect("runs")
            })
            .sum()
    };
    // (writes the leader served itself, writes followers forwarded)
    let served = |row: &str| {
        (
            runs(row, true, "serve (client receive"),
            runs(row, false, "forward to leader"),
        )
    };
    let (on_leader, forwarded) = served("put, 1 client on the leader");
    assert!(
        on_leader > forwarded,
        "the leader row ran on a follower ({on_leader} served, {forwarded} forwarded):\n{stdout}"
    );
    let (on_leader, forwarded) = served("put, 1 client on a follower");
    assert!(
        forwarded > on_leader,
        "the follower row ran on the leader ({on_leader} served, {forwarded} forwarded):\n{stdout}"
    );
}

#[test]
fn bench_apply_applies_every_put_and_reports_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "apply", "--batches", "20", "--batch-size", "7"])
        .args(["--rounds", "2", "--value-size", "100", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run keel bench apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| round"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for r in &rows {
        assert_eq!(r[1], "140", "puts of a round: {stdout}");
        let bytes: f64 = r[4].parse().unwrap();
        // Every put's value reached sled's log at least once.
        assert!(bytes >= 100.0, "bytes written per put: {stdout}");
    }
    // Each round's key space is removed after it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
