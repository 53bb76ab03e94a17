//! The process runtime, the embedded default: each container is a child
//! process (command + args) in its own process group, with a clean
//! environment, a working directory under the pod's sandbox directory,
//! stdout and stderr appended to a log file that is rotated by copy and
//! truncate (the child keeps its O_APPEND descriptor, so the agent can
//! restart without breaking it), and rlimits where the OS allows (no core
//! dumps; `limits.memory` as an address-space limit). Processes are not
//! tied to the agent: they survive its restart and are adopted by the next
//! one, identified by PID plus start time.
//!
//! Users: an agent running as root starts each pod's processes as a user
//! and group of the pod's own (`POD_UID_BASE` plus the low 24 bits of the
//! pod's IP, unique on the machine and the same after an agent restart),
//! with no supplementary groups, so a pod cannot read the node's key or
//! another pod's files, nor signal another pod's processes.
//! `securityContext.runAsUser`/`runAsGroup` choose the ids instead; the
//! API leaves root and the pod ids to admins. The pod's working
//! directories belong to its user (mode 0700); the log files stay the
//! agent's. The process enters its working directory before it drops
//! root, so the directories above it need not be open to it.
//!
//! Network identity: the sandbox's IP is an address on the loopback
//! interface (`127.N.x.y`). Nothing isolates the process's network; a
//! container gets its IP as `POD_IP` and should bind it (e.g.
//! `python3 -m http.server --bind $(POD_IP) 8000`) so two pods can use the
//! same port on one machine.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::api::meta::now_rfc3339;
use tokio::sync::watch;

use futures::StreamExt;

pub use super::pod_user::{PodUsers, pod_uid};
use super::pod_user::{give, ids_for};
use super::{
    BoxFut, ContainerConfig, ContainerHandle, ExecCommand, ExecSession, Exit, OutputStream,
    Runtime, RuntimeError, Sandbox, SandboxConfig,
};

/// An already-computed answer as the trait's future.
fn ready<T: Send + 'static>(v: T) -> BoxFut<T> {
    Box::pin(std::future::ready(v))
}

/// Runs containers as local processes.
pub struct ProcessRuntime {
    root: PathBuf,
    users: PodUsers,
    /// Exit notifications of the processes this agent spawned.
    exits: Arc<Mutex<HashMap<u32, watch::Receiver<Option<Exit>>>>>,
    /// Log files to rotate.
    logs: Arc<Mutex<HashSet<PathBuf>>>,
}

impl ProcessRuntime {
    /// A runtime keeping sandboxes under `root`; rotates logs above
    /// `log_max_bytes` (one old file kept as `.log.1`). Must be called
    /// inside a Tokio runtime.
    pub fn new(root: PathBuf, log_max_bytes: u64, users: PodUsers) -> Self {
        let logs: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let l = logs.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let paths: Vec<PathBuf> = l.lock().expect("logs lock").iter().cloned().collect();
                for p in paths {
                    if let Err(e) = rotate(&p, log_max_bytes) {
                        tracing::debug!(path = %p.display(), error = %e, "log rotation failed");
                    }
                }
            }
        });
        ProcessRuntime {
            root,
            users,
            exits: Arc::default(),
            logs,
        }
    }
}

/// Rotates `path` once it is larger than `max`: copies it to `path.1` and
/// truncates it in place (`copytruncate`), so writers keep their descriptor.
pub fn rotate(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    if len <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The state letter and start time (clock ticks since boot) of a process.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 (starttime) is index 19.
    Some((f.first()?.chars().next()?, f.get(19)?.parse().ok()?))
}

/// Whether `pid` is still the live process that started at `start_ticks`.
pub fn same_process(pid: u32, start_ticks: u64) -> bool {
    matches!(proc_stat(pid), Some((st, t)) if t == start_ticks && st != 'Z' && st != 'X')
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group the
    // container leads (we started it with its own group).
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (Some(c), None),
            (None, Some(sig)) => (Some(128 + sig), Some(sig)),
            _ => (None, None),
        },
        Err(_) => (None, None),
    };
    Exit {
        code,
        signal,
        finished_at: now_rfc3339(),
        reason: None,
    }
}

/// Whether a file named `argv0` is in one of `path`'s directories (looked
/// at as the agent: the pod's user may be refused some of them, and then
/// the search fails with "permission denied" though nothing is there).
fn on_path(argv0: &str, path: Option<&str>) -> bool {
    path.unwrap_or("")
        .split(':')
        .any(|d| !d.is_empty() && Path::new(d).join(argv0).is_file())
}

fn cannot_run(argv0: &str, path: Option<&str>, e: &std::io::Error) -> RuntimeError {
    // Nothing to run anywhere on the path: say so, whatever directory of it
    // the pod's user was refused on the way.
    let missing;
    let e = if e.kind() == std::io::ErrorKind::PermissionDenied
        && !argv0.contains('/')
        && !on_path(argv0, path)
    {
        missing = std::io::Error::from_raw_os_error(libc::ENOENT);
        &missing
    } else {
        e
    };
    let why = match e.kind() {
        std::io::ErrorKind::NotFound if !argv0.contains('/') => {
            "executable file not found in $PATH".to_string()
        }
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => "cannot execute".to_string(),
    };
    RuntimeError::CannotRun(format!("exec: {argv0:?}: {why} ({e})"))
}

/// The `PATH` a container's commands are looked up in.
fn env_path(c: &ContainerConfig) -> Option<&str> {
    c.env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
}

fn command(
    argv: &[String],
    c: &ContainerConfig,
    cwd: &Path,
    ids: Option<(u32, u32)>,
) -> Result<tokio::process::Command, RuntimeError> {
    let Some(argv0) = argv.first() else {
        return Err(RuntimeError::CannotRun(
            "no command: the process runtime runs spec.containers[].command and args (it does not run images)".into(),
        ));
    };
    let mut cmd = tokio::process::Command::new(argv0);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let dir = std::ffi::CString::new(cwd.as_os_str().as_encoded_bytes()).map_err(|_| {
        RuntimeError::Setup(format!("working directory {}: NUL byte", cwd.display()))
    })?;
    let mem = c.memory_limit;
    // SAFETY: chdir(2), setrlimit(2), setgroups(2), setgid(2) and setuid(2)
    // are async-signal-safe, and nothing here allocates; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The working directory first, while still root: the pod's user
            // may not be able to reach it through the agent's data dir.
            if libc::chdir(dir.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            if let Some(m) = mem {
                let lim = libc::rlimit {
                    rlim_cur: m as libc::rlim_t,
                    rlim_max: m as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = ids {
                // Groups, then group, then user: after setuid nothing else
                // may be changed. No supplementary groups (root's are gone).
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

impl ProcessRuntime {
    fn file(&self, s: &Sandbox, container: &str) -> PathBuf {
        s.dir.join("logs").join(format!("{container}.log"))
    }

    fn create_sandbox_now(&self, c: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let Some(ip) = c.ip else {
            return Err(RuntimeError::Setup(
                "the process runtime needs an IP from the agent".into(),
            ));
        };
        let dir = self.root.join(&c.uid);
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(|e| RuntimeError::Setup(format!("creating {}: {e}", dir.display())))?;
        // Logs are the agent's to write and the API's to serve, not other
        // pods' to read.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("logs"), std::fs::Permissions::from_mode(0o700))
                .map_err(|e| RuntimeError::Setup(format!("logs of {}: {e}", dir.display())))?;
        }
        Ok(Sandbox {
            id: c.uid.clone(),
            ip,
            dir,
            runtime_id: String::new(),
        })
    }

    fn start_now(&self, s: &Sandbox, c: &ContainerConfig) -> Result<ContainerHandle, RuntimeError> {
        let dir = self.container_dir(s, &c.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::Setup(format!("creating {}: {e}", dir.display())))?;
        let ids = ids_for(self.users, s, c)?;
        give(&dir, ids)?;
        let cwd = self.cwd(s, c);
        if !cwd.is_dir() {
            return Err(RuntimeError::CannotRun(format!(
                "working directory {}: no such directory",
                cwd.display()
            )));
        }
        let log_path = self.file(s, &c.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| RuntimeError::Setup(format!("opening {}: {e}", log_path.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| RuntimeError::Setup(format!("log file: {e}")))?;
        let mut cmd = command(&c.argv, c, &cwd, ids)?;
        cmd.stdout(log).stderr(err);
        let mut child = cmd
            .spawn()
            .map_err(|e| cannot_run(&c.argv[0], env_path(c), &e))?;
        let pid = child.id().unwrap_or(0);
        let start_ticks = proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        {
            let mut exits = self.exits.lock().expect("exits lock");
            exits.retain(|_, r| r.borrow().is_none());
            exits.insert(pid, rx);
        }
        tokio::spawn(async move {
            let st = child.wait().await;
            let _ = tx.send(Some(exit_of(st)));
        });
        self.logs.lock().expect("logs lock").insert(log_path);
        Ok(ContainerHandle {
            name: c.name.clone(),
            pid,
            start_ticks,
            started_at: now_rfc3339(),
            id: String::new(),
        })
    }

    fn container_dir(&self, s: &Sandbox, name: &str) -> PathBuf {
        s.dir.join("containers").join(name)
    }

    fn cwd(&self, s: &Sandbox, c: &ContainerConfig) -> PathBuf {
        let dir = self.container_dir(s, &c.name);
        match c.working_dir.as_str() {
            "" => dir,
            w if w.starts_with('/') => PathBuf::from(w),
            w => dir.join(w),
        }
    }
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn create_sandbox(&self, c: &SandboxConfig) -> BoxFut<Result<Sandbox, RuntimeError>> {
        ready(self.create_sandbox_now(c))
    }

    fn remove_sandbox(&self, s: &Sandbox) -> BoxFut<()> {
        self.logs
            .lock()
            .expect("logs lock")
            .retain(|p| !p.starts_with(&s.dir));
        if let Err(e) = std::fs::remove_dir_all(&s.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %s.dir.display(), error = %e, "cannot remove sandbox dir");
        }
        ready(())
    }

    fn start_container(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
    ) -> BoxFut<Result<ContainerHandle, RuntimeError>> {
        ready(self.start_now(s, c))
    }

    fn is_running(&self, h: &ContainerHandle) -> BoxFut<bool> {
        ready(same_process(h.pid, h.start_ticks))
    }

    fn adopt(&self, s: &Sandbox, h: &ContainerHandle) -> BoxFut<bool> {
        if !same_process(h.pid, h.start_ticks) {
            return ready(false);
        }
        if let Some(p) = self.log_path(s, &h.name) {
            self.logs.lock().expect("logs lock").insert(p);
        }
        ready(true)
    }

    fn wait(&self, h: &ContainerHandle) -> BoxFut<Exit> {
        let rx = self.exits.lock().expect("exits lock").get(&h.pid).cloned();
        let (pid, ticks) = (h.pid, h.start_ticks);
        match rx {
            Some(mut rx) => Box::pin(async move {
                loop {
                    if let Some(e) = rx.borrow_and_update().clone() {
                        return e;
                    }
                    if rx.changed().await.is_err() {
                        return exit_of(Err(std::io::Error::other("waiter gone")));
                    }
                }
            }),
            // Not our child (adopted): poll until the process is gone; its
            // exit code is not ours to read.
            None => Box::pin(async move {
                while same_process(pid, ticks) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                exit_of(Err(std::io::Error::other("adopted")))
            }),
        }
    }

    fn stop(&self, h: &ContainerHandle, grace: Duration) -> BoxFut<Exit> {
        let wait = self.wait(h);
        let live = same_process(h.pid, h.start_ticks);
        let pid = h.pid;
        Box::pin(async move {
            if live {
                signal_group(pid, libc::SIGTERM);
            }
            tokio::pin!(wait);
            let exit = match tokio::time::timeout(grace, &mut wait).await {
                Ok(e) => e,
                Err(_) => {
                    tracing::info!(pid, "grace period over, sending SIGKILL");
                    signal_group(pid, libc::SIGKILL);
                    wait.await
                }
            };
            // Whatever the leader left behind in its group goes too.
            if live {
                signal_group(pid, libc::SIGKILL);
            }
            exit
        })
    }

    fn exec(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
        argv: &[String],
        timeout: Duration,
    ) -> BoxFut<Result<i32, RuntimeError>> {
        let cwd = self.cwd(s, c);
        let cmd = ids_for(self.users, s, c).and_then(|ids| command(argv, c, &cwd, ids));
        let argv0 = argv.first().cloned().unwrap_or_default();
        let path = env_path(c).map(str::to_string);
        Box::pin(async move {
            let mut cmd = cmd?;
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| cannot_run(&argv0, path.as_deref(), &e))?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(st) => Ok(exit_of(st).code.unwrap_or(-1)),
                Err(_) => {
                    if let Some(pid) = child.id() {
                        signal_group(pid, libc::SIGKILL);
                    }
                    Err(RuntimeError::CannotRun(format!(
                        "command timed out after {timeout:?}"
                    )))
                }
            }
        })
    }

    fn exec_stream(
        &self,
        s: &Sandbox,
        c: &ContainerConfig,
        h: &ContainerHandle,
        cmd: ExecCommand,
    ) -> BoxFut<Result<ExecSession, RuntimeError>> {
        let r = (|| {
            if !same_process(h.pid, h.start_ticks) {
                return Err(RuntimeError::CannotRun(format!(
                    "container {} is not running",
                    c.name
                )));
            }
            let ids = ids_for(self.users, s, c)?;
            let mut p = command(&cmd.argv, c, &self.cwd(s, c), ids)?;
            // A terminal is not emulated: output keeps its two pipes, and
            // with `tty` both go to stdout, the one stream a terminal has.
            p.stdin(if cmd.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
            let mut child = p
                .spawn()
                .map_err(|e| cannot_run(&cmd.argv[0], env_path(c), &e))?;
            let stdin = child
                .stdin
                .take()
                .map(|w| Box::pin(w) as Pin<Box<dyn tokio::io::AsyncWrite + Send>>);
            let err_as = if cmd.tty {
                OutputStream::Stdout
            } else {
                OutputStream::Stderr
            };
            let output = match (child.stdout.take(), child.stderr.take()) {
                (Some(o), Some(e)) => futures::stream::select(
                    tokio_util::io::ReaderStream::new(o)
                        .map(|b| b.map(|b| (OutputStream::Stdout, b))),
                    tokio_util::io::ReaderStream::new(e).map(move |b| b.map(|b| (err_as, b))),
                )
                .boxed(),
                _ => return Err(RuntimeError::Setup("exec: no output pipes".into())),
            };
            let pgid = child.id();
            let exit: BoxFut<Result<i32, RuntimeError>> = Box::pin(async move {
                let st = child.wait().await;
                // Whatever the command left in its group goes with it.
                if let Some(pid) = pgid {
                    signal_group(pid, libc::SIGKILL);
                }
                Ok(exit_of(st).code.unwrap_or(-1))
            });
            Ok(ExecSession {
                stdin,
                output,
                exit,
            })
        })();
        ready(r)
    }

    fn log_path(&self, s: &Sandbox, container: &str) -> Option<PathBuf> {
        Some(self.file(s, container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_copies_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert!(!rotate(&p, 200).unwrap());
        assert!(rotate(&p, 50).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("c.log.1")).unwrap().len(),
            100
        );
    }
}
