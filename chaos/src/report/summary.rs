//! The figures of a run: operations by workload and outcome, faults by
//! kind, the longest write unavailability around each kind of fault,
//! leader changes, violations; and the same as readable Markdown.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::{Histories, Violation};
use crate::check::leaders;
use crate::check::linearizable::{Op, Outcome};
use crate::config::RunConfig;
use crate::nemesis::FaultRecord;
use crate::nemesis::schedule::Planned;
use crate::workload::kv::KvOutcome;

/// Operations by outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub total: u64,
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
}

impl Counts {
    fn add(&mut self, outcome: &str) {
        self.total += 1;
        match outcome {
            "ok" => self.ok += 1,
            "fail" => self.fail += 1,
            _ => self.unknown += 1,
        }
    }
}

/// Everything `summary.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub passed: bool,
    pub seed: u64,
    pub masters: usize,
    pub duration_s: f64,
    pub clients: u64,
    pub workloads: Vec<String>,
    pub nemeses: Vec<String>,
    pub unsafe_local_reads: bool,
    pub ops: BTreeMap<String, Counts>,
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Per fault kind: the longest time (ms) without any acknowledged write
    /// in a window overlapping one such fault (from injection to recovery).
    pub longest_write_unavailability_ms: BTreeMap<String, f64>,
    /// Per fault kind: the longest time (ms) in which no member the fault
    /// did not touch acknowledged a probe write (one sticky writer per
    /// member, `workload::probe`): the cluster's own unavailability, free of
    /// clients waiting on the faulted member.
    pub longest_write_unavailability_untouched_ms: BTreeMap<String, f64>,
    /// The same outside every fault window, for comparison.
    pub longest_write_gap_without_faults_ms: f64,
    pub leader_changes: usize,
    pub violations: Vec<Violation>,
    pub notes: Vec<String>,
    pub schedule: Vec<Planned>,
    pub faults: Vec<FaultRecord>,
}

/// Completion times (µs) of every acknowledged write, sorted.
pub fn write_acks(h: &Histories) -> Vec<u64> {
    let mut acks: Vec<u64> = h
        .register
        .iter()
        .filter(|o| {
            !matches!(o.op, Op::Read) && matches!(o.outcome, Outcome::Written | Outcome::Swapped(_))
        })
        .map(|o| o.ret)
        .chain(
            h.kv.iter()
                .chain(&h.watch.writes)
                .filter(|o| o.value.is_some() && matches!(o.outcome, KvOutcome::Ok(_)))
                .map(|o| o.ret),
        )
        .collect();
    acks.sort_unstable();
    acks
}

/// The longest gap between consecutive acknowledgements (with the run's
/// start and end as bounds) that overlaps `[from, to]`.
pub fn longest_gap(acks: &[u64], from: u64, to: u64, end: u64) -> u64 {
    let mut prev = 0u64;
    let mut best = 0u64;
    for t in acks.iter().copied().chain(std::iter::once(end)) {
        if t >= from && prev <= to {
            best = best.max(t - prev);
        }
        prev = t;
        if prev > to {
            break;
        }
    }
    best
}

/// The longest gap lying entirely outside every window.
fn longest_quiet_gap(acks: &[u64], windows: &[(u64, u64)]) -> u64 {
    acks.windows(2)
        .filter(|w| !windows.iter().any(|(f, t)| w[1] >= *f && w[0] <= *t))
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
}

/// Builds the summary.
pub fn summarize(
    cfg: &RunConfig,
    _names: &[String],
    plan: &[Planned],
    faults: &[FaultRecord],
    h: &Histories,
    violations: Vec<Violation>,
    notes: Vec<String>,
) -> Summary {
    let mut ops: BTreeMap<String, Counts> = BTreeMap::new();
    for o in &h.register {
        let outcome = match o.outcome {
            Outcome::Failed => "fail",
            Outcome::Unknown => "unknown",
            _ => "ok",
        };
        ops.entry("register".into()).or_default().add(outcome);
    }
    for (name, list) in [("kv", &h.kv), ("watch-writes", &h.watch.writes)] {
        for o in list {
            let outcome = match o.outcome {
                KvOutcome::Ok(_) => "ok",
                KvOutcome::Fail => "fail",
                KvOutcome::Unknown => "unknown",
            };
            ops.entry(name.into()).or_default().add(outcome);
        }
    }
    for o in &h.deployments {
        ops.entry(format!("deployments-{}", o.op))
            .or_default()
            .add(o.outcome);
    }
    for p in &h.probes {
        ops.entry("probe".into())
            .or_default()
            .add(if p.ok { "ok" } else { "fail" });
    }
    if !h.watch.received.is_empty() {
        ops.insert(
            "watch-events".into(),
            Counts {
                total: h.watch.received.len() as u64,
                ok: h.watch.received.len() as u64,
                ..Default::default()
            },
        );
    }
    let mut faults_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut unavailable: BTreeMap<String, f64> = BTreeMap::new();
    let acks = write_acks(h);
    let end = cfg.duration.as_micros() as u64;
    let mut untouched: BTreeMap<String, f64> = BTreeMap::new();
    let mut windows = Vec::new();
    for f in faults {
        let kind = f.nemesis.name().to_string();
        *faults_by_kind.entry(kind.clone()).or_default() += 1;
        let to = f.recovered.unwrap_or(f.healed).max(f.healed);
        windows.push((f.start, to));
        let gap = longest_gap(&acks, f.start, to, end) as f64 / 1000.0;
        let e = unavailable.entry(kind.clone()).or_default();
        *e = e.max(gap);
        let mut probe_acks: Vec<u64> = h
            .probes
            .iter()
            .filter(|p| p.ok && !f.affected.contains(&p.member))
            .map(|p| p.ret)
            .collect();
        if !probe_acks.is_empty() {
            probe_acks.sort_unstable();
            let gap = longest_gap(&probe_acks, f.start, to, end) as f64 / 1000.0;
            let e = untouched.entry(kind).or_default();
            *e = e.max(gap);
        }
    }
    Summary {
        passed: violations.is_empty(),
        seed: cfg.seed,
        masters: cfg.masters,
        duration_s: cfg.duration.as_secs_f64(),
        clients: cfg.clients,
        workloads: cfg
            .workloads
            .iter()
            .map(|w| format!("{w:?}").to_lowercase())
            .collect(),
        nemeses: cfg.nemeses.iter().map(|n| n.name().to_string()).collect(),
        unsafe_local_reads: cfg.unsafe_local_reads,
        ops,
        faults_by_kind,
        longest_write_unavailability_ms: unavailable,
        longest_write_unavailability_untouched_ms: untouched,
        longest_write_gap_without_faults_ms: longest_quiet_gap(&acks, &windows) as f64 / 1000.0,
        leader_changes: leaders::changes(&h.status).len().saturating_sub(1),
        violations,
        notes,
        schedule: plan.to_vec(),
        faults: faults.to_vec(),
    }
}

/// `report.md`.
pub fn markdown(s: &Summary) -> String {
    let mut m = String::new();
    let verdict = if s.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(m, "# Keel chaos run: {verdict}\n");
    let _ = writeln!(
        m,
        "{} masters, {:.0} s, {} clients, seed {}, workloads {}, nemeses {}{}.\n",
        s.masters,
        s.duration_s,
        s.clients,
        s.seed,
        s.workloads.join(","),
        s.nemeses.join(","),
        if s.unsafe_local_reads {
            ", **--unsafe-local-reads**"
        } else {
            ""
        }
    );
    let _ = writeln!(m, "![timeline](timeline.svg)\n");
    let _ = writeln!(m, "## Violations: {}\n", s.violations.len());
    for v in &s.violations {
        let _ = writeln!(m, "- **{}**: {}", v.checker, v.message);
    }
    for n in &s.notes {
        let _ = writeln!(m, "- note: {n}");
    }
    let _ = writeln!(
        m,
        "\n## Operations\n\n| workload | total | ok | fail | unknown |\n|---|---|---|---|---|"
    );
    for (w, c) in &s.ops {
        let _ = writeln!(
            m,
            "| {w} | {} | {} | {} | {} |",
            c.total, c.ok, c.fail, c.unknown
        );
    }
    let _ = writeln!(
        m,
        "\n## Faults\n\nLongest write unavailability: for the clients (no write acknowledged to any client), and on the members the fault did not touch (no probe write acknowledged by any of them).\n\n| kind | injected | clients | untouched members |\n|---|---|---|---|"
    );
    for (k, n) in &s.faults_by_kind {
        let u = s
            .longest_write_unavailability_ms
            .get(k)
            .copied()
            .unwrap_or(0.0);
        let t = s
            .longest_write_unavailability_untouched_ms
            .get(k)
            .map(|t| format!("{t:.0} ms"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(m, "| {k} | {n} | {u:.0} ms | {t} |");
    }
    let _ = writeln!(
        m,
        "\nLongest gap between acknowledged writes outside any fault: {:.0} ms. Leader changes: {}.\n",
        s.longest_write_gap_without_faults_ms, s.leader_changes
    );
    let _ = writeln!(
        m,
        "## Timeline of faults\n\n| start | healed | recovered | kind | target | error |\n|---|---|---|---|---|---|"
    );
    let sec = |us: u64| format!("{:.2}s", us as f64 / 1e6);
    for f in &s.faults {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} |",
            sec(f.start),
            sec(f.healed),
            f.recovered.map(sec).unwrap_or_else(|| "never".into()),
            f.nemesis.name(),
            f.target.replace('|', "\\|"),
            f.error.clone().unwrap_or_default().replace('|', "\\|")
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_overlapping_a_window() {
        let acks = [10, 20, 30, 100, 110];
        // The fault from 35 to 40: the gap 30..100 overlaps it.
        assert_eq!(longest_gap(&acks, 35, 40, 200), 70);
        // A window after the last ack runs to the end.
        assert_eq!(longest_gap(&acks, 150, 160, 200), 90);
        assert_eq!(longest_quiet_gap(&acks, &[(35, 40)]), 10);
    }
}
