//! One conformance suite for every container runtime: the same test bodies
//! run against the process runtime and the Docker runtime (on the real
//! Docker Engine, which must be reachable: these tests fail, never skip,
//! without it). Exit codes, logs, graceful stop with SIGKILL after the
//! grace period, a missing command, exec inside the container, a
//! container restarted in the same sandbox, and a restarted runtime that
//! adopts its running containers and removes those of unknown pods.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use futures::StreamExt;
use keel_agent::runtime::docker::{DockerConfig, agent_id, connect_engine, remove_agent};
use keel_agent::runtime::{
    ContainerConfig, DockerRuntime, ExecCommand, LogRequest, OutputStream, PodUsers,
    ProcessRuntime, Runtime, RuntimeError, Sandbox, SandboxConfig,
};

const BUSYBOX: &str = "keel-test/busybox:latest";
const PAUSE: &str = "keel-test/pause:latest";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Process,
    Docker,
}

/// Builds the local test images once per test binary (fails loudly when
/// the Docker daemon is unreachable).
fn test_images() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-images.sh");
        let st = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .expect("running scripts/test-images.sh");
        assert!(st.success(), "scripts/test-images.sh failed: {st}");
    });
}

/// A runtime under test, in its own data dir; removes what it made.
struct Env {
    kind: Kind,
    dir: tempfile::TempDir,
    rt: Arc<dyn Runtime>,
}

impl Env {
    async fn new(kind: Kind) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let rt = Self::runtime(kind, dir.path()).await;
        Env { kind, dir, rt }
    }

    /// A runtime on `data_dir` (a second one plays a restarted agent).
    async fn runtime(kind: Kind, data_dir: &Path) -> Arc<dyn Runtime> {
        match kind {
            Kind::Process => Arc::new(ProcessRuntime::new(
                data_dir.join("pods"),
                1 << 20,
                PodUsers::PerPod,
            )),
            Kind::Docker => {
                test_images();
                Arc::new(
                    DockerRuntime::connect(&DockerConfig {
                        node: "conf".into(),
                        root: data_dir.join("pods"),
                        pause_image: PAUSE.into(),
                        log_max_bytes: 1 << 20,
                    })
                    .await
                    .expect("the Docker daemon must be reachable for the docker runtime tests"),
                )
            }
        }
    }

    async fn sandbox(&self, uid: &str) -> Sandbox {
        self.rt
            .create_sandbox(&SandboxConfig {
                uid: uid.into(),
                namespace: "default".into(),
                name: format!("p-{uid}"),
                ip: (!self.rt.assigns_ips()).then_some(Ipv4Addr::new(127, 9, 0, 2)),
                hostname: format!("p-{uid}"),
            })
            .await
            .expect("sandbox")
    }

    fn cfg(&self, name: &str, script: &str) -> ContainerConfig {
        let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut env = vec![("GREETING".to_string(), "hello".to_string())];
        if self.kind == Kind::Process {
            env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
        }
        ContainerConfig {
            name: name.into(),
            argv: argv.clone(),
            command: argv,
            env,
            image: BUSYBOX.into(),
            pull_policy: "IfNotPresent".into(),
            ..Default::default()
        }
    }

    async fn log(&self, s: &Sandbox, name: &str, previous: bool) -> String {
        if let Some(p) = self.rt.log_path(s, name) {
            assert!(!previous, "file logs have no previous");
            return std::fs::read_to_string(p).unwrap_or_default();
        }
        let req = LogRequest {
            previous,
            ..Default::default()
        };
        let Ok(mut st) = self.rt.logs(s, name, &req).await else {
            return String::new();
        };
        let mut out = Vec::new();
        while let Some(Ok(b)) = st.next().await {
            out.extend_from_slice(&b);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn log_until(&self, s: &Sandbox, name: &str, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.log(s, name, false).await.contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{needle:?} never logged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.kind == Kind::Docker {
            let agent = agent_id("conf", self.dir.path());
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok(d) = connect_engine().await {
                        remove_agent(&d, &agent).await;
                    }
                })
            })
            .join()
            .unwrap();
        }
    }
}

async fn exit_code_env_and_logs(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let h =
        e.rt.start_container(&sb, &e.cfg("c", "echo $GREETING; exit 3"))
            .await
            .unwrap();
    let x = tokio::time::timeout(Duration::from_secs(20), e.rt.wait(&h))
        .await
        .expect("exit in time");
    assert_eq!(x.code, Some(3));
    assert!(!e.rt.is_running(&h).await);
    assert_eq!(e.log(&sb, "c", false).await, "hello\n");
    e.rt.remove_sandbox(&sb).await;
    assert!(!sb.dir.exists());
}

async fn stop_sigkills_after_the_grace_period(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let h =
        e.rt.start_container(&sb, &e.cfg("c", "trap '' TERM; echo trapped; sleep 60"))
            .await
            .unwrap();
    assert!(e.rt.is_running(&h).await);
    e.log_until(&sb, "c", "trapped").await;
    let t = tokio::time::Instant::now();
    let x = e.rt.stop(&h, Duration::from_millis(300)).await;
    assert_eq!((x.code, x.signal), (Some(137), Some(9)));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(!e.rt.is_running(&h).await);
    e.rt.remove_sandbox(&sb).await;
}

async fn a_missing_command_cannot_run(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let mut c = e.cfg("c", "");
    c.argv = vec!["no-such-command-keel".into()];
    c.command = c.argv.clone();
    let err = e.rt.start_container(&sb, &c).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::CannotRun(m) if m.contains("executable file not found")),
        "{err}"
    );
    e.rt.remove_sandbox(&sb).await;
}

async fn exec_runs_inside_the_container(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let c = e.cfg("c", "echo ok > marker-keel; echo made; exec sleep 60");
    let h = e.rt.start_container(&sb, &c).await.unwrap();
    e.log_until(&sb, "c", "made").await;
    let t = Duration::from_secs(5);
    let argv = |s: &str| vec!["test".to_string(), "-f".to_string(), s.to_string()];
    assert_eq!(e.rt.exec(&sb, &c, &argv("marker-keel"), t).await, Ok(0));
    assert_eq!(e.rt.exec(&sb, &c, &argv("no-marker-keel"), t).await, Ok(1));
    e.rt.stop(&h, Duration::from_secs(1)).await;
    e.rt.remove_sandbox(&sb).await;
}

async fn a_restarted_container_keeps_its_sandbox(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let again = e.sandbox("u1").await;
    assert_eq!(sb, again, "creating a sandbox is idempotent");
    let c = e.cfg("c", "echo run; exit 1");
    let h1 = e.rt.start_container(&sb, &c).await.unwrap();
    assert_eq!(e.rt.wait(&h1).await.code, Some(1));
    let h2 = e.rt.start_container(&sb, &c).await.unwrap();
    assert_eq!(e.rt.wait(&h2).await.code, Some(1));
    assert_ne!((h1.pid, &h1.id), (h2.pid, &h2.id));
    assert_eq!(
        e.sandbox("u1").await.ip,
        sb.ip,
        "same pod IP after a restart"
    );
    if e.rt.log_path(&sb, "c").is_none() {
        // Runtimes with per-instance logs keep the previous one.
        assert_eq!(e.log(&sb, "c", true).await, "run\n");
        assert_eq!(e.log(&sb, "c", false).await, "run\n");
    }
    e.rt.remove_sandbox(&sb).await;
}

async fn a_restarted_runtime_adopts_and_removes_unknown_pods(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let orphan = e.sandbox("u2").await;
    let c = e.cfg("c", "echo up; exec sleep 60");
    let h = e.rt.start_container(&sb, &c).await.unwrap();
    let ho = e.rt.start_container(&orphan, &c).await.unwrap();
    e.log_until(&sb, "c", "up").await;
    // The agent restarts on the same data dir.
    let rt2 = Env::runtime(kind, e.dir.path()).await;
    assert!(rt2.adopt(&sb, &h).await, "adopts its running container");
    let removed = rt2.remove_unknown(vec!["u1".into()]).await;
    if rt2.name() == "docker" {
        // Only the runtime's own labelled containers are listed; u2 goes.
        assert_eq!(removed, 1);
        assert!(!rt2.is_running(&ho).await);
    } else {
        rt2.stop(&ho, Duration::from_secs(1)).await;
    }
    assert!(rt2.is_running(&h).await, "the known pod keeps running");
    let x = rt2.stop(&h, Duration::from_secs(1)).await;
    assert!(x.code.is_some() || rt2.name() == "process", "{x:?}");
    assert!(
        !rt2.adopt(&sb, &h).await,
        "a stopped container is not adopted"
    );
    rt2.remove_sandbox(&sb).await;
    rt2.remove_sandbox(&orphan).await;
}

async fn a_container_runs_as_its_run_as_ids(kind: Kind) {
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let mut cfg = e.cfg("c", "echo ids=$(id -u):$(id -g)");
    cfg.run_as_user = Some(4321);
    cfg.run_as_group = Some(4322);
    let h = e.rt.start_container(&sb, &cfg).await.unwrap();
    let x = tokio::time::timeout(Duration::from_secs(20), e.rt.wait(&h))
        .await
        .expect("exit in time");
    assert_eq!(x.code, Some(0));
    assert_eq!(e.log(&sb, "c", false).await, "ids=4321:4322\n");
    // Exec probes run as the container's user too.
    let probe = ["sh", "-c", "test $(id -u):$(id -g) = 4321:4322"].map(String::from);
    let mut sleeper = e.cfg("d", "sleep 30");
    sleeper.run_as_user = Some(4321);
    sleeper.run_as_group = Some(4322);
    let h = e.rt.start_container(&sb, &sleeper).await.unwrap();
    assert_eq!(
        e.rt.exec(&sb, &sleeper, &probe, Duration::from_secs(10))
            .await
            .unwrap(),
        0
    );
    e.rt.stop(&h, Duration::from_secs(1)).await;
    e.rt.remove_sandbox(&sb).await;
}

async fn an_exec_session_streams_stdin_output_and_the_exit_code(kind: Kind) {
    use tokio::io::AsyncWriteExt;
    let e = Env::new(kind).await;
    let sb = e.sandbox("u1").await;
    let cfg = e.cfg("c", "echo ready; exec sleep 30");
    let h = e.rt.start_container(&sb, &cfg).await.unwrap();
    e.log_until(&sb, "c", "ready").await;
    let cmd = ExecCommand {
        argv: [
            "sh",
            "-c",
            "echo G=$GREETING; tr a-z A-Z; echo oops >&2; exit 5",
        ]
        .map(String::from)
        .to_vec(),
        stdin: true,
        tty: false,
    };
    let mut s = e.rt.exec_stream(&sb, &cfg, &h, cmd).await.unwrap();
    let mut stdin = s.stdin.take().expect("stdin asked for");
    stdin.write_all(b"some input\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let collect = async {
        while let Some(piece) = s.output.next().await {
            let (which, b) = piece.unwrap();
            match which {
                OutputStream::Stdout => out.extend_from_slice(&b),
                OutputStream::Stderr => err.extend_from_slice(&b),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("the output ends");
    assert_eq!(String::from_utf8_lossy(&out), "G=hello\nSOME INPUT\n");
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    assert_eq!(s.exit.await.unwrap(), 5);
    assert!(
        e.rt.is_running(&h).await,
        "the container itself keeps running"
    );
    e.rt.stop(&h, Duration::from_secs(1)).await;
    e.rt.remove_sandbox(&sb).await;
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Process).await
                }
            )*
        }
        mod docker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Docker).await
                }
            )*
        }
    };
}

conformance!(
    exit_code_env_and_logs,
    stop_sigkills_after_the_grace_period,
    a_missing_command_cannot_run,
    exec_runs_inside_the_container,
    a_restarted_container_keeps_its_sandbox,
    a_restarted_runtime_adopts_and_removes_unknown_pods,
    a_container_runs_as_its_run_as_ids,
    an_exec_session_streams_stdin_output_and_the_exit_code,
);

/// Runs `script` in a new process-runtime container of sandbox `sb` and
/// returns its log once it exits.
async fn run_to_end(e: &Env, sb: &Sandbox, cfg: ContainerConfig) -> String {
    let name = cfg.name.clone();
    let h = e.rt.start_container(sb, &cfg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), e.rt.wait(&h))
        .await
        .expect("exit in time");
    e.log(sb, &name, false).await
}

/// The process runtime's isolation, on an agent running as root (as CI
/// runs): each pod gets a user of its own, so it can neither read a file
/// only root may read (the node's key is one, mode 0600) nor signal
/// another pod; the same commands as root can, so the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pods_run_as_users_of_their_own() {
    // SAFETY: geteuid(2) cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, as CI has it: the agent drops to per-pod users only as root"
    );
    let e = Env::new(Kind::Process).await;
    let victim = e.sandbox("victim").await;
    let other =
        e.rt.create_sandbox(&SandboxConfig {
            uid: "other".into(),
            namespace: "default".into(),
            name: "p-other".into(),
            ip: Some(Ipv4Addr::new(127, 9, 0, 3)),
            hostname: "p-other".into(),
        })
        .await
        .unwrap();
    let sleeper =
        e.rt.start_container(&victim, &e.cfg("sleeper", "sleep 60"))
            .await
            .unwrap();
    // A root-only file in a directory anyone may enter.
    let open = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let key = open.path().join("node.key");
    std::fs::write(&key, "secret").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let script = format!(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); cat {} >/dev/null 2>&1; echo read=$?; kill -0 {} 2>/dev/null; echo signal=$?",
        key.display(),
        sleeper.pid
    );
    let out = run_to_end(&e, &other, e.cfg("probe", &script)).await;
    let uid = keel_agent::runtime::process::pod_uid(Ipv4Addr::new(127, 9, 0, 3));
    assert!(
        out.contains(&format!("uid={uid} gid={uid} groups={uid}\n")),
        "{out}"
    );
    assert!(out.contains("read=1"), "the key was readable: {out}");
    assert!(out.contains("signal=1"), "another pod was signalled: {out}");
    assert!(e.rt.is_running(&sleeper).await);
    // The same as root (what an admin may ask for) reaches both.
    let mut as_root = e.cfg("root", &script);
    as_root.run_as_user = Some(0);
    let out = run_to_end(&e, &other, as_root).await;
    assert!(out.contains("uid=0 ") && out.contains("read=0"), "{out}");
    assert!(out.contains("signal=0"), "{out}");
    // The pod's working directory is its own, and nobody else's.
    let mut writer = e.cfg("writer", "echo x > here && stat -c %u here");
    writer.run_as_user = None;
    let out = run_to_end(&e, &other, writer).await;
    assert_eq!(
        out.trim().lines().last(),
        Some(uid.to_string().as_str()),
        "{out}"
    );
    e.rt.stop(&sleeper, Duration::from_secs(1)).await;
    e.rt.remove_sandbox(&victim).await;
    e.rt.remove_sandbox(&other).await;
}
