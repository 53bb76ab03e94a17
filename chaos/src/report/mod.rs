//! The run's report in `--out DIR`: `history.json` (every operation with
//! its invocation, completion, outcome and result; the status polls; the
//! faults), `summary.json` (counts, faults, unavailability, violations),
//! a readable `report.md` and the `timeline.svg` picture. `summary` computes
//! the figures, `timeline` draws.

pub mod summary;
pub mod timeline;

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::check::leaders::Observation;
use crate::check::linearizable::{Op, Operation, Outcome};
use crate::workload::kv::KvOp;
use crate::workload::probe::ProbeOp;
use crate::workload::watch::WatchHistory;

pub use summary::{Summary, summarize};

/// Everything the workloads and the status poller recorded.
#[derive(Debug, Default, Clone)]
pub struct Histories {
    pub register: Vec<Operation>,
    pub kv: Vec<KvOp>,
    pub watch: WatchHistory,
    pub status: Vec<Observation>,
    pub probes: Vec<ProbeOp>,
    pub deployments: Vec<crate::workload::deployments::DeployOp>,
}

/// One violation found by a checker.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// `linearizability`, `lost-write`, `two-leaders`, `watch`, `recovery` or `convergence`.
    pub checker: String,
    pub message: String,
    pub detail: Value,
}

impl Violation {
    pub fn new(checker: &str, message: &str) -> Self {
        Violation {
            checker: checker.into(),
            message: message.into(),
            detail: Value::Null,
        }
    }

    /// A violation described by a checker's own value.
    pub fn detail<T: Serialize + std::fmt::Debug>(checker: &str, v: &T) -> Self {
        Violation {
            checker: checker.into(),
            message: format!("{v:?}"),
            detail: serde_json::to_value(v).unwrap_or(Value::Null),
        }
    }
}

/// The history record of a register operation.
pub fn register_record(o: &Operation) -> Value {
    let (op, value, from) = match &o.op {
        Op::Read => ("read", None, None),
        Op::Write(v) => ("write", Some(*v), None),
        Op::Cas(f, t) => ("cas", Some(*t), Some(*f)),
    };
    let (outcome, result) = match &o.outcome {
        Outcome::Read(v) => ("ok", json!(v)),
        Outcome::Written => ("ok", Value::Null),
        Outcome::Swapped(s) => ("ok", json!(s)),
        Outcome::Failed => ("fail", Value::Null),
        Outcome::Unknown => ("unknown", Value::Null),
    };
    json!({
        "client": o.client, "key": o.key, "op": op, "value": value, "from": from,
        "invoke_us": o.call, "complete_us": o.ret, "outcome": outcome, "result": result,
    })
}

/// A linearizability violation with its window, for the summary.
pub fn linearizability_violation(v: &crate::check::linearizable::Violation) -> Violation {
    Violation {
        checker: "linearizability".into(),
        message: format!(
            "key {} is not linearizable in the window {:.3}s..{:.3}s ({} operations could not be placed)",
            v.key,
            v.from as f64 / 1e6,
            v.to as f64 / 1e6,
            v.ops.len()
        ),
        detail: json!({
            "key": v.key, "from_us": v.from, "to_us": v.to,
            "ops": v.ops.iter().map(register_record).collect::<Vec<_>>(),
        }),
    }
}

/// Writes every report file into `out`.
pub fn write(out: &Path, s: &Summary, h: &Histories, names: &[String]) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let history = json!({
        "register": h.register.iter().map(register_record).collect::<Vec<_>>(),
        "kv": h.kv,
        "watch": h.watch,
        "status": h.status,
        "probes": h.probes,
        "deployments": h.deployments,
        "members": names,
        "faults": s.faults,
    });
    let f = std::fs::File::create(out.join("history.json")).map_err(io)?;
    serde_json::to_writer(std::io::BufWriter::new(f), &history).map_err(|e| e.to_string())?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(s).map_err(|e| e.to_string())?,
    )
    .map_err(io)?;
    std::fs::write(out.join("report.md"), summary::markdown(s)).map_err(io)?;
    timeline::draw(&out.join("timeline.svg"), s, h, names)
}
