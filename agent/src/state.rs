//! What the agent runs, persisted in its data dir (`state.json`): every pod's
//! sandbox and the PID and start time of each container. A restarted agent
//! reads it to adopt the processes still running (same PID *and* same start
//! time, so a reused PID is never mistaken for ours) instead of starting
//! duplicates, and to stop pods deleted while it was down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::runtime::{ContainerHandle, Sandbox};

/// One pod as the agent last recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub sandbox: Sandbox,
    /// terminationGracePeriodSeconds, to stop it without its spec.
    pub grace_seconds: i64,
    /// The running process of each container (absent: not running).
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerHandle>,
    /// Restart counts, so they survive an agent restart.
    #[serde(default)]
    pub restarts: BTreeMap<String, i64>,
    /// Exit codes of containers that ended for good (not to be restarted).
    #[serde(default)]
    pub finished: BTreeMap<String, i32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    pods: BTreeMap<String, PodRecord>,
}

/// The persisted state, written atomically (temp file + rename) on every change.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    pods: Mutex<BTreeMap<String, PodRecord>>,
}

impl StateStore {
    /// Opens (or starts) the state in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, AgentError> {
        let path = dir.join("state.json");
        let pods = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<File>(&b)
                    .map_err(|e| AgentError::State {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?
                    .pods
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(AgentError::io(format!("reading {}", path.display()), e)),
        };
        Ok(StateStore {
            path,
            pods: Mutex::new(pods),
        })
    }

    /// Every recorded pod.
    pub fn pods(&self) -> Vec<PodRecord> {
        self.pods
            .lock()
            .expect("state lock")
            .values()
            .cloned()
            .collect()
    }

    /// Records (or replaces) a pod.
    pub fn put(&self, rec: PodRecord) {
        let mut pods = self.pods.lock().expect("state lock");
        pods.insert(rec.uid.clone(), rec);
        self.save(&pods);
    }

    /// Forgets a pod.
    pub fn remove(&self, uid: &str) {
        let mut pods = self.pods.lock().expect("state lock");
        if pods.remove(uid).is_some() {
            self.save(&pods);
        }
    }

    fn save(&self, pods: &BTreeMap<String, PodRecord>) {
        let file = File { pods: pods.clone() };
        let tmp = self.path.with_extension("json.tmp");
        let r = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = r {
            // Losing this only costs adoption after a restart; pods keep running.
            tracing::error!(path = %self.path.display(), error = %e, "cannot save agent state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        let rec = PodRecord {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u1".into(),
            sandbox: Sandbox {
                id: "u1".into(),
                ip: "127.9.0.2".parse().unwrap(),
                dir: dir.path().join("pods/u1"),
                runtime_id: String::new(),
            },
            grace_seconds: 30,
            containers: BTreeMap::new(),
            restarts: BTreeMap::new(),
            finished: BTreeMap::new(),
        };
        s.put(rec.clone());
        let again = StateStore::open(dir.path()).unwrap();
        assert_eq!(again.pods(), vec![rec]);
        again.remove("u1");
        assert!(StateStore::open(dir.path()).unwrap().pods().is_empty());
    }
}
