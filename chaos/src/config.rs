//! What a chaos run is asked to do (`keel chaos run`'s options): the
//! cluster, the workloads, the nemeses, the seed and the budgets. The run
//! (`run.rs`) carries it out and the report (`report/`) echoes it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::nemesis::schedule::Nemesis;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Register,
    Kv,
    Watch,
    Deployments,
}

impl Workload {
    pub fn parse(s: &str) -> Result<Workload, String> {
        match s {
            "register" => Ok(Workload::Register),
            "kv" => Ok(Workload::Kv),
            "watch" => Ok(Workload::Watch),
            "deployments" => Ok(Workload::Deployments),
            _ => Err(format!(
                "unknown workload {s:?}; known: register, kv, watch, deployments"
            )),
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `keel` binary the masters run.
    pub bin: PathBuf,
    pub masters: usize,
    pub duration: Duration,
    pub nemeses: Vec<Nemesis>,
    pub workloads: Vec<Workload>,
    pub clients: u64,
    pub seed: u64,
    pub out: PathBuf,
    /// Start the masters with the unsafe debug flag (the harness must then fail).
    pub unsafe_local_reads: bool,
    /// Per-request timeout of the workload clients.
    pub op_timeout: Duration,
    /// Register keys per generation, and how often the generation moves on.
    pub keys: u64,
    pub key_period: Duration,
    /// Search steps per key for the linearizability checker.
    pub budget: u64,
}
