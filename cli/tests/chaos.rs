//! `keel chaos run` end to end, as a user runs it (real processes): a short
//! run through leader kills, partitions and pauses passes with no
//! violation; and the proof that the harness catches a real bug: with the
//! debug flag that serves reads locally without read-index, a run that
//! isolates the leader fails the linearizability check, while the same
//! seed without the flag passes.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs `keel chaos run` with `args` into `out`, killing it after `max`;
/// returns whether it succeeded and its summary.
fn chaos(out: &Path, args: &[&str], max: Duration) -> (bool, serde_json::Value) {
    let mut child = common::keel()
        .args(["chaos", "run", "--out"])
        .arg(out)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::inherit())
        .stderr(Stdio::null())
        .spawn()
        .expect("start keel chaos run");
    let deadline = Instant::now() + max;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("keel chaos run {args:?} did not finish within {max:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let summary = std::fs::read_to_string(out.join("summary.json"))
        .unwrap_or_else(|e| panic!("no summary.json in {}: {e}", out.display()));
    (
        status.success(),
        serde_json::from_str(&summary).expect("summary is JSON"),
    )
}

fn violations(s: &serde_json::Value) -> Vec<String> {
    s["violations"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|v| format!("{}: {}", v["checker"], v["message"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_short_run_through_leader_kills_partitions_and_pauses_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, s) = chaos(
        dir.path(),
        &[
            "--masters",
            "3",
            "--duration",
            "45s",
            "--nemesis",
            "leader-kill,partition,pause",
            "--workload",
            "register,kv,watch,deployments",
            "--clients",
            "4",
            "--seed",
            "11",
        ],
        Duration::from_secs(150),
    );
    assert!(ok, "violations: {:#?}", violations(&s));
    assert_eq!(s["passed"], true);
    let faults: u64 = s["faults_by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(faults >= 4, "only {faults} faults: {}", s["faults"]);
    let reg_ok = s["ops"]["register"]["ok"].as_u64().unwrap_or(0);
    assert!(reg_ok >= 200, "only {reg_ok} register operations succeeded");
    // Deployments were scaled and rolled through the faults, and the control
    // plane converged afterwards (a failed convergence is a violation above).
    for op in ["deployments-scale", "deployments-update"] {
        let n = s["ops"][op]["ok"].as_u64().unwrap_or(0);
        assert!(n >= 10, "only {n} {op} operations succeeded");
    }
    for f in ["history.json", "report.md", "timeline.svg"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("leader-kill"));
}

#[test]
fn unsafe_local_reads_fail_the_linearizability_check_and_safe_reads_pass() {
    let args = [
        "--masters",
        "3",
        "--duration",
        "15s",
        "--nemesis",
        "partition-leader",
        "--workload",
        "register",
        "--seed",
        "3",
    ];
    let unsafe_dir = tempfile::tempdir().unwrap();
    let mut unsafe_args = args.to_vec();
    unsafe_args.push("--unsafe-local-reads");
    let (ok, s) = chaos(unsafe_dir.path(), &unsafe_args, Duration::from_secs(120));
    assert!(!ok, "a run with stale local reads passed: {s}");
    assert!(
        violations(&s).iter().any(|v| v.contains("linearizability")),
        "{:#?}",
        violations(&s)
    );
    let safe_dir = tempfile::tempdir().unwrap();
    let (ok, s) = chaos(safe_dir.path(), &args, Duration::from_secs(120));
    assert!(
        ok,
        "the same seed without the flag failed: {:#?}",
        violations(&s)
    );
    assert_eq!(
        s["schedule"],
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(unsafe_dir.path().join("summary.json")).unwrap()
        )
        .unwrap()["schedule"],
        "the same seed must give the same schedule"
    );
}
