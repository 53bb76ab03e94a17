//! The container runtime interface, shaped like the CRI so Docker and
//! containerd fit behind it later: a pod **sandbox** owns the pod's network
//! identity (its IP) and directories, and **containers** run inside it. The
//! agent's lifecycle code only talks to this trait.

pub mod process;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use process::ProcessRuntime;

/// A boxed future, so the trait stays object-safe.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why the runtime could not do something.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The container's command cannot be started (missing binary, not
    /// executable, no command): Kubernetes' `ContainerCannotRun`.
    #[error("{0}")]
    CannotRun(String),
    /// Preparing the sandbox or container failed (directories, log files).
    #[error("{0}")]
    Setup(String),
}

/// What a sandbox is created from.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

/// A pod's sandbox: its network identity and where its files live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The pod's uid.
    pub id: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
}

/// What a container is started from (already resolved by the agent).
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    pub name: String,
    /// Command and arguments, `$(VAR)` references expanded.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The container's `workingDir`: absolute, or relative to its directory.
    pub working_dir: String,
    /// `resources.limits.memory` in bytes, applied as an address-space rlimit.
    pub memory_limit: Option<u64>,
}

/// A running (or adopted) container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerHandle {
    pub name: String,
    pub pid: u32,
    /// The process start time in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22): with the PID, it identifies the process across PID reuse.
    pub start_ticks: u64,
    /// RFC 3339.
    pub started_at: String,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// The exit code (128 + signal when killed); None when unknown (an
    /// adopted process that is not our child).
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// RFC 3339.
    pub finished_at: String,
}

/// A container runtime.
pub trait Runtime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Creates a pod's sandbox (idempotent for an existing one).
    fn create_sandbox(&self, c: &SandboxConfig) -> Result<Sandbox, RuntimeError>;
    /// Removes a sandbox whose containers all stopped.
    fn remove_sandbox(&self, s: &Sandbox);
    /// Starts a container in a sandbox.
    fn start_container(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
    ) -> Result<ContainerHandle, RuntimeError>;
    /// Whether the container `h` names is still the same live process.
    fn is_running(&self, h: &ContainerHandle) -> bool;
    /// Takes over a container a previous agent started in sandbox `s`;
    /// false when it is no longer running.
    fn adopt(&self, s: &Sandbox, h: &ContainerHandle) -> bool;
    /// Resolves when the container exits.
    fn wait(&self, h: &ContainerHandle) -> BoxFut<Exit>;
    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    fn stop(&self, h: &ContainerHandle, grace: Duration) -> BoxFut<Exit>;
    /// Runs a command inside a container's environment (exec probes);
    /// returns its exit code.
    fn exec(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
        argv: &[String],
        timeout: Duration,
    ) -> BoxFut<Result<i32, RuntimeError>>;
    /// Where a container's log lives.
    fn log_path(&self, s: &Sandbox, container: &str) -> PathBuf;
}
