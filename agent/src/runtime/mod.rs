//! The container runtime interface, shaped like the CRI: a pod **sandbox**
//! owns the pod's network identity (its IP) and directories, and
//! **containers** run inside it. The agent's lifecycle code only talks to
//! this trait; two implementations sit behind it: [`process`] (local
//! processes, no images) and [`docker`] (real containers through the
//! Docker Engine API, one pause container per pod holding its network);
//! unit tests use `fake`, an in-memory one.

pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod pod_user;
pub mod process;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use docker::DockerRuntime;
pub use process::{PodUsers, ProcessRuntime};

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
    /// The image could not be pulled: `ErrImagePull`, then
    /// `ImagePullBackOff` while the agent waits to retry.
    #[error("{0}")]
    ImagePull(String),
    /// The image is missing and `imagePullPolicy: Never` forbids pulling it.
    #[error("{0}")]
    ImageNeverPull(String),
}

/// What a sandbox is created from.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod IP, for runtimes whose addresses the agent allocates (None:
    /// the runtime's network assigns it, as Docker's does).
    pub ip: Option<Ipv4Addr>,
    /// The pod's hostname.
    pub hostname: String,
}

/// A pod's sandbox: its network identity and where its files live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The pod's uid.
    pub id: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    /// The runtime's own id of the sandbox (Docker: the pause container).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_id: String,
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
    /// `resources.limits.memory` in bytes: an address-space rlimit for a
    /// process, the cgroup memory limit for a container.
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu` in billionths of a CPU (container runtimes).
    pub nano_cpus: Option<i64>,
    /// The image and its pull policy (Always, IfNotPresent or Never;
    /// already defaulted by tag).
    pub image: String,
    pub pull_policy: String,
    /// `command` and `args` apart, `$(VAR)` expanded, for runtimes with
    /// images: `command` replaces the image's entrypoint, `args` its cmd.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `ports` as `(containerPort, protocol)` (informational).
    pub ports: Vec<(u16, String)>,
    /// Volumes to mount.
    pub mounts: Vec<Mount>,
    /// `securityContext.runAsUser` and `runAsGroup` (the container's, else
    /// the pod's).
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
}

/// A host directory mounted into a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
    /// An emptyDir: the runtime creates `host_path` if missing.
    pub create: bool,
}

/// What `kubectl logs` asks of a container's log.
#[derive(Debug, Clone, Default)]
pub struct LogRequest {
    pub tail: Option<usize>,
    pub follow: bool,
    /// The log of the previous instance of the container.
    pub previous: bool,
}

/// What `kubectl exec` runs.
#[derive(Debug, Clone, Default)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    /// Whether the caller sends stdin.
    pub stdin: bool,
    /// Whether it asked for a terminal.
    pub tty: bool,
}

/// Which stream a piece of an exec'd command's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The output of an exec'd command, piece by piece.
pub type ExecOutput = Pin<
    Box<dyn futures::Stream<Item = Result<(OutputStream, bytes::Bytes), std::io::Error>> + Send>,
>;

/// A command running in a container for `kubectl exec`. Dropping it
/// before it ends kills the command (the process runtime) or abandons it
/// (Docker ends it with the container).
pub struct ExecSession {
    /// Its stdin, when asked for (dropped: end of input).
    pub stdin: Option<Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    /// Its stdout and stderr; ends when the command closes both.
    pub output: ExecOutput,
    /// Its exit code, once the output has ended.
    pub exit: BoxFut<Result<i32, RuntimeError>>,
}

/// A stream of log bytes.
pub type LogStream =
    Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>>;

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
    /// The runtime's own id of the container (Docker's container id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
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
    /// Why it ended when the runtime knows better than the code
    /// (`OOMKilled`).
    pub reason: Option<String>,
}

/// A container runtime.
pub trait Runtime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether the runtime assigns pod IPs itself (the agent's IPAM does
    /// otherwise).
    fn assigns_ips(&self) -> bool {
        false
    }
    /// The pod CIDR the node advertises, when the runtime owns it.
    fn pod_cidr(&self) -> Option<String> {
        None
    }
    /// Whether containers take their `PATH` from their image (so the
    /// agent's own `PATH` must not leak into them).
    fn uses_images(&self) -> bool {
        false
    }
    /// Creates a pod's sandbox (idempotent for an existing one).
    fn create_sandbox(&self, c: &SandboxConfig) -> BoxFut<Result<Sandbox, RuntimeError>>;
    /// Removes a sandbox whose containers all stopped.
    fn remove_sandbox(&self, s: &Sandbox) -> BoxFut<()>;
    /// Starts a container in a sandbox.
    fn start_container(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
    ) -> BoxFut<Result<ContainerHandle, RuntimeError>>;
    /// Whether the container `h` names is still the same live process.
    fn is_running(&self, h: &ContainerHandle) -> BoxFut<bool>;
    /// Takes over a container a previous agent started in sandbox `s`;
    /// false when it is no longer running.
    fn adopt(&self, s: &Sandbox, h: &ContainerHandle) -> BoxFut<bool>;
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
    /// Starts a command inside a running container for a user (`kubectl
    /// exec`): its stdin when asked for, its output as it comes, its exit
    /// code at the end. With `tty`, output is one stream, as a terminal's.
    fn exec_stream(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
        h: &ContainerHandle,
        cmd: ExecCommand,
    ) -> BoxFut<Result<ExecSession, RuntimeError>>;
    /// Where a container's log file lives, for runtimes that write one
    /// (None: read it with [`Runtime::logs`]).
    fn log_path(&self, s: &Sandbox, container: &str) -> Option<PathBuf>;
    /// A container's log from the runtime (runtimes without a log file).
    fn logs(
        &self,
        _s: &Sandbox,
        container: &str,
        _r: &LogRequest,
    ) -> BoxFut<Result<LogStream, RuntimeError>> {
        let msg = format!(
            "container {container:?}: the {} runtime keeps no log stream",
            self.name()
        );
        Box::pin(async move { Err(RuntimeError::Setup(msg)) })
    }
    /// Removes what this runtime runs for pods the agent no longer knows
    /// (`known` holds the uids it keeps); only objects the runtime labelled
    /// as the agent's own are touched. Returns how many pods it removed.
    fn remove_unknown(&self, _known: Vec<String>) -> BoxFut<usize> {
        Box::pin(async { 0 })
    }
}
