//! An in-memory [`Runtime`] for unit tests (compiled only for tests): a
//! container is a record with a made-up PID, a start can be scripted to
//! fail (`fail_next_start`), and a test ends a container with the [`Exit`]
//! it chooses (`exit`); `stop` ends it as a process that honours SIGTERM
//! does. So the lifecycle's state machine runs on plain values, no
//! processes and no Docker.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::api::meta::now_rfc3339;
use tokio::sync::watch;

use super::{
    BoxFut, ContainerConfig, ContainerHandle, Exit, Runtime, RuntimeError, Sandbox, SandboxConfig,
};

/// The exit of a container stopped with SIGTERM (128 + 15).
pub const SIGTERM_EXIT: i32 = 143;

/// The in-memory runtime (see the module doc).
#[derive(Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_pid: u32,
    /// Errors the next starts of a container (by name) fail with, in order.
    start_errors: HashMap<String, VecDeque<RuntimeError>>,
    /// Every successful start: (container name, pid).
    starts: Vec<(String, u32)>,
    /// Running containers by pid: where their exit is announced.
    live: HashMap<u32, watch::Sender<Option<Exit>>>,
    /// PIDs stopped through `stop`, in order.
    stops: Vec<u32>,
    /// The exit code every exec (probe) answers.
    exec_code: i32,
}

impl FakeRuntime {
    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake runtime lock")
    }

    /// The next start of `container` fails with `e`.
    pub fn fail_next_start(&self, container: &str, e: RuntimeError) {
        self.lock()
            .start_errors
            .entry(container.to_string())
            .or_default()
            .push_back(e);
    }

    /// How many times `container` was started (successfully).
    pub fn starts_of(&self, container: &str) -> usize {
        self.lock()
            .starts
            .iter()
            .filter(|(n, _)| n == container)
            .count()
    }

    /// The PID of the running instance of `container`.
    pub fn running_pid(&self, container: &str) -> Option<u32> {
        let g = self.lock();
        g.starts
            .iter()
            .rev()
            .find(|(n, pid)| n == container && g.live.contains_key(pid))
            .map(|(_, pid)| *pid)
    }

    /// The PIDs stopped through `stop`, in order.
    pub fn stops(&self) -> Vec<u32> {
        self.lock().stops.clone()
    }

    /// Ends the container with PID `pid` as `exit` says.
    pub fn exit(&self, pid: u32, exit: Exit) {
        if let Some(tx) = self.lock().live.remove(&pid) {
            let _ = tx.send(Some(exit));
        }
    }
}

/// An exit with `code` and no reason of the runtime's own.
pub fn exit_code(code: i32) -> Exit {
    Exit {
        code: Some(code),
        signal: None,
        finished_at: now_rfc3339(),
        reason: None,
    }
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn create_sandbox(&self, c: &SandboxConfig) -> BoxFut<Result<Sandbox, RuntimeError>> {
        let s = Sandbox {
            id: c.uid.clone(),
            ip: c.ip.unwrap_or(Ipv4Addr::new(10, 0, 0, 1)),
            dir: PathBuf::from("/nonexistent/keel-fake").join(&c.uid),
            runtime_id: String::new(),
        };
        Box::pin(async move { Ok(s) })
    }

    fn remove_sandbox(&self, _s: &Sandbox) -> BoxFut<()> {
        Box::pin(async {})
    }

    fn start_container(
        &self,
        _s: &Sandbox,
        c: &ContainerConfig,
    ) -> BoxFut<Result<ContainerHandle, RuntimeError>> {
        let mut g = self.lock();
        let r = match g
            .start_errors
            .get_mut(&c.name)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => {
                g.next_pid += 1;
                let pid = g.next_pid;
                g.starts.push((c.name.clone(), pid));
                g.live.insert(pid, watch::channel(None).0);
                Ok(ContainerHandle {
                    name: c.name.clone(),
                    pid,
                    start_ticks: 0,
                    started_at: now_rfc3339(),
                    id: String::new(),
                })
            }
        };
        Box::pin(async move { r })
    }

    fn is_running(&self, h: &ContainerHandle) -> BoxFut<bool> {
        let live = self.lock().live.contains_key(&h.pid);
        Box::pin(async move { live })
    }

    fn adopt(&self, _s: &Sandbox, h: &ContainerHandle) -> BoxFut<bool> {
        self.is_running(h)
    }

    fn wait(&self, h: &ContainerHandle) -> BoxFut<Exit> {
        let rx = self.lock().live.get(&h.pid).map(watch::Sender::subscribe);
        Box::pin(async move {
            let Some(mut rx) = rx else {
                return Exit {
                    code: None,
                    signal: None,
                    finished_at: now_rfc3339(),
                    reason: None,
                };
            };
            let exit = rx.wait_for(Option::is_some).await.map(|e| e.clone());
            match exit {
                Ok(Some(e)) => e,
                // The runtime went away: the container never ends.
                _ => std::future::pending().await,
            }
        })
    }

    fn stop(&self, h: &ContainerHandle, _grace: Duration) -> BoxFut<Exit> {
        let exit = Exit {
            code: Some(SIGTERM_EXIT),
            signal: Some(15),
            finished_at: now_rfc3339(),
            reason: None,
        };
        self.lock().stops.push(h.pid);
        self.exit(h.pid, exit.clone());
        Box::pin(async move { exit })
    }

    fn exec(
        &self,
        _s: &Sandbox,
        _c: &ContainerConfig,
        _argv: &[String],
        _timeout: Duration,
    ) -> BoxFut<Result<i32, RuntimeError>> {
        let code = self.lock().exec_code;
        Box::pin(async move { Ok(code) })
    }

    fn exec_stream(
        &self,
        _s: &Sandbox,
        _c: &ContainerConfig,
        _h: &ContainerHandle,
        _cmd: super::ExecCommand,
    ) -> BoxFut<Result<super::ExecSession, RuntimeError>> {
        Box::pin(async {
            Err(RuntimeError::CannotRun(
                "the fake runtime runs nothing".into(),
            ))
        })
    }

    fn log_path(&self, _s: &Sandbox, _container: &str) -> Option<PathBuf> {
        None
    }
}
