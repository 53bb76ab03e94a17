//! A cluster of real master processes on loopback: Keel masters (the `keel`
//! binary) or, for comparison benchmarks, etcd members. Members can be
//! killed, paused, resumed and restarted with their data intact.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::StatusRequest;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::pki::{self, Credentials};

/// Errors starting or driving a process cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster not ready within {0:?}: {1}")]
    NotReady(Duration, String),
    #[error("cluster PKI: {0}")]
    Pki(String),
}

/// Which server the members run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Keel,
    Etcd,
}

/// One member: its identity, ports and process.
pub struct MemberProc {
    pub name: String,
    pub zone: String,
    pub peer_port: u16,
    pub client_port: u16,
    /// Port of the REST API (Keel only).
    pub api_port: u16,
    pub data_dir: PathBuf,
    /// Peer address this member joined through (None: an initial member).
    pub joined_via: Option<String>,
    /// Arguments for this member only (e.g. its `--peer-override`s).
    pub own_args: Vec<String>,
    child: Option<Child>,
}

impl MemberProc {
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }
    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A port on 127.0.0.1 that is free and that no other caller in this process
/// got. Ports come from 20000-29999, below Linux's ephemeral range
/// (32768-60999), so outgoing connections never take them between this
/// check and the member's bind; a process-wide cursor (starting at a
/// pid-derived offset) keeps parallel tests from picking the same one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 7919) % 10_000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..10_000 {
        let port = 20_000 + (NEXT.fetch_add(1, Ordering::SeqCst) % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    0
}

/// Asks the member at client address `addr` (dialed with `creds`) for its
/// status: (member id, leader id, raft term); `None` if it does not answer
/// within a second.
pub async fn status_of(creds: &Credentials, addr: &str) -> Option<(u64, u64, u64)> {
    let ch = creds
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(800))
        .connect()
        .await
        .ok()?;
    let r = MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .ok()?
        .into_inner();
    let id = r.header.map(|h| h.member_id).unwrap_or(0);
    Some((id, r.leader, r.raft_term))
}

/// A single-use bootstrap token for agent `node`, valid `ttl_secs`, made
/// through `client` (which must hold admin credentials).
pub async fn bootstrap_token(
    client: &keel_proto::client::ApiClient,
    node: &str,
    ttl_secs: i64,
) -> Result<String, keel_proto::client::ClientError> {
    let body = serde_json::json!({
        "user": format!("bootstrap-{node}"), "role": "node", "ttlSeconds": ttl_secs,
        "bootstrap": true, "nodeName": node
    });
    let r: serde_json::Value = client.post("/keel/v1/tokens", &body).await?;
    r["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| keel_proto::client::ClientError::Decode("no token in the answer".into()))
}

/// A set of member processes; dropping it kills them all.
pub struct ProcessCluster {
    pub flavor: Flavor,
    bin: PathBuf,
    pub members: Vec<MemberProc>,
    extra_args: Vec<String>,
    log_dir: PathBuf,
    /// The cluster's PKI (`keel pki init`), every member's `--pki-dir`.
    pub pki_dir: Option<PathBuf>,
    /// How clients dial this cluster: its admin certificate and token once
    /// it has a PKI (`use_pki`), plain text before (etcd, `--insecure`).
    credentials: Credentials,
}

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

impl ProcessCluster {
    /// Starts `n` members under `dir`. With `ports = Some((peer, client, api))`
    /// member `i` uses `peer+i`, `client+i` and `api+i`; with `None`, free ports.
    pub fn start(
        flavor: Flavor,
        bin: &Path,
        dir: &Path,
        n: usize,
        ports: Option<(u16, u16, u16)>,
        extra_args: &[String],
    ) -> Result<Self, ClusterError> {
        let mut c = Self::plan(flavor, bin, dir, n, ports, extra_args)?;
        if flavor == Flavor::Keel {
            c.use_pki(&dir.join("pki"))?;
        }
        c.spawn_all()?;
        Ok(c)
    }

    /// Like `start`, but starts nothing yet: the caller can give members
    /// their own arguments (`own_args`) and a PKI (`use_pki`; without one,
    /// each member uses the default in its data dir), then calls `spawn_all`.
    pub fn plan(
        flavor: Flavor,
        bin: &Path,
        dir: &Path,
        n: usize,
        ports: Option<(u16, u16, u16)>,
        extra_args: &[String],
    ) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir)?;
        let prefix = if flavor == Flavor::Keel { "m" } else { "e" };
        let members = (0..n)
            .map(|i| {
                let (peer_port, client_port, api_port) = match ports {
                    None => (free_port(), free_port(), free_port()),
                    Some((p, c, a)) => (p + i as u16, c + i as u16, a + i as u16),
                };
                MemberProc {
                    name: format!("{prefix}{}", i + 1),
                    zone: ZONES[i % ZONES.len()].to_string(),
                    peer_port,
                    client_port,
                    api_port,
                    data_dir: dir.join(format!("{prefix}{}", i + 1)),
                    joined_via: None,
                    own_args: Vec::new(),
                    child: None,
                }
            })
            .collect();
        let c = ProcessCluster {
            flavor,
            bin: bin.to_path_buf(),
            members,
            extra_args: extra_args.to_vec(),
            log_dir: dir.join("logs"),
            pki_dir: None,
            // etcd members run plain text, as the comparison baseline.
            credentials: Credentials::plaintext(),
        };
        std::fs::create_dir_all(&c.log_dir)?;
        Ok(c)
    }

    /// Makes `dir` the cluster's PKI (created with `keel pki init` if it
    /// holds none) and its admin certificate and token the cluster's
    /// credentials (`credentials`).
    pub fn use_pki(&mut self, dir: &Path) -> Result<(), ClusterError> {
        if !dir.join("ca.crt").exists() {
            let out = Command::new(&self.bin)
                .args(["pki", "init", "--dir"])
                .arg(dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|source| ClusterError::Spawn {
                    what: "keel pki init".into(),
                    source,
                })?;
            if !out.status.success() {
                return Err(ClusterError::Pki(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        self.credentials = pki::PkiDir(dir.to_path_buf())
            .admin_credentials()
            .map_err(|e| ClusterError::Pki(e.to_string()))?;
        self.pki_dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// How a client dials this cluster (its CA, admin certificate and token;
    /// plain text without a PKI).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Dials this cluster with `creds` from now on: for members that serve
    /// with TLS material of their own data dirs (restored from a backup,
    /// whose CA the caller knows) rather than a PKI given by `use_pki`.
    pub fn set_credentials(&mut self, creds: Credentials) {
        self.credentials = creds;
    }

    /// A REST client of every member's API with the cluster's credentials.
    pub fn api_client(&self) -> keel_proto::client::ApiClient {
        let apis: Vec<String> = self.members.iter().map(|m| m.api_addr()).collect();
        keel_proto::client::ApiClient::new(&apis, &self.credentials)
    }

    /// Starts every member that is not running.
    pub fn spawn_all(&mut self) -> Result<(), ClusterError> {
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    fn initial_cluster(&self) -> String {
        let scheme = if self.flavor == Flavor::Etcd {
            "http://"
        } else {
            ""
        };
        self.members
            .iter()
            .map(|m| format!("{}={scheme}{}", m.name, m.peer_addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let initial = self.initial_cluster();
        let m = &self.members[i];
        let mut cmd = Command::new(&self.bin);
        match self.flavor {
            Flavor::Keel => {
                cmd.arg("master")
                    .args(["--name", &m.name])
                    .arg("--data-dir")
                    .arg(&m.data_dir)
                    .args(["--listen-peer", &m.peer_addr()])
                    .args(["--listen-client", &m.client_addr()])
                    .args(["--listen-api", &m.api_addr()])
                    .args(["--zone", &m.zone]);
                if let Some(p) = &self.pki_dir {
                    cmd.arg("--pki-dir").arg(p);
                }
                match &m.joined_via {
                    Some(via) => cmd.args(["--join", via]),
                    None => cmd.args(["--initial-cluster", &initial]),
                };
                cmd.args(&self.extra_args).args(&m.own_args);
            }
            Flavor::Etcd => {
                let peer = format!("http://{}", m.peer_addr());
                let client = format!("http://{}", m.client_addr());
                cmd.args(["--name", &m.name])
                    .arg("--data-dir")
                    .arg(&m.data_dir)
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "keel-bench"])
                    .args(&self.extra_args);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}.log", m.name)))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // SIGKILL the member if the spawning thread dies, so a crashed test
        // or `keel up` never leaves members behind.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            what: format!("{} ({})", m.name, self.bin.display()),
            source,
        })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Starts a new Keel member that joins through member `via`'s peer
    /// address (learner, catch-up, promotion); returns its index.
    pub fn add_member(&mut self, via: usize) -> Result<usize, ClusterError> {
        let i = self.members.len();
        let dir = self.members[0]
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.members.push(MemberProc {
            name: format!("m{}", i + 1),
            zone: ZONES[i % ZONES.len()].to_string(),
            peer_port: free_port(),
            client_port: free_port(),
            api_port: free_port(),
            data_dir: dir.join(format!("m{}", i + 1)),
            joined_via: Some(self.members[via].peer_addr()),
            own_args: Vec::new(),
            child: None,
        });
        self.spawn(i)?;
        Ok(i)
    }

    /// Kills member `i`, wipes its data dir and starts it empty, joining
    /// through `via` (a peer address): the second half of replacing a
    /// member once it was removed from the membership.
    pub fn rejoin_empty(&mut self, i: usize, via: String) -> Result<(), ClusterError> {
        self.kill(i);
        match std::fs::remove_dir_all(&self.members[i].data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.members[i].joined_via = Some(via);
        self.spawn(i)
    }

    /// Restarts member `i` on its data dir but on new free ports, as when a
    /// machine gets a new address.
    pub fn restart_on_new_ports(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        self.members[i].peer_port = free_port();
        self.members[i].client_port = free_port();
        self.members[i].api_port = free_port();
        self.spawn(i)
    }

    /// Client endpoints (`host:port`) of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr()).collect()
    }

    /// Where member `i` writes its log.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.members[i].name))
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.members[i].pid() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// How member `i` exited, if it has (reaping it); None while it runs.
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let c = self.members[i].child.as_mut()?;
        let st = c.try_wait().ok().flatten()?;
        self.members[i].child = None;
        Some(st)
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM member `i`, waiting up to `grace` before SIGKILL.
    pub fn stop(&mut self, i: usize, grace: Duration) {
        self.signal(i, libc::SIGCONT);
        self.signal(i, libc::SIGTERM);
        if let Some(mut c) = self.members[i].child.take() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP member `i`.
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// Starts member `i` again with extra arguments (e.g. `--force-new-cluster`).
    pub fn restart_with(&mut self, i: usize, extra: &[&str]) -> Result<(), ClusterError> {
        self.kill(i);
        let saved = self.extra_args.clone();
        self.extra_args.extend(extra.iter().map(|s| s.to_string()));
        let r = self.spawn(i);
        self.extra_args = saved;
        r
    }

    /// Starts member `i` again on its data dir (kills it first if running).
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        self.spawn(i)
    }

    /// Asks member `i` for its status: (member id, leader id, raft term).
    pub async fn status(&self, i: usize) -> Option<(u64, u64, u64)> {
        status_of(&self.credentials, &self.members[i].client_addr()).await
    }

    /// The index of the member every running member agrees is leader.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                ids.push(None);
                continue;
            }
            match self.status(i).await {
                Some((id, l, _)) => {
                    ids.push(Some(id));
                    if l == 0 || leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                None => return None,
            }
        }
        let l = leader?;
        ids.iter().position(|id| *id == Some(l))
    }

    /// Polls until every running member answers and all agree on a leader.
    pub async fn wait_ready(&self, max: Duration) -> Result<usize, ClusterError> {
        let deadline = Instant::now() + max;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let mut last_lines = String::new();
                for i in 0..self.members.len() {
                    let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    last_lines.push_str(&format!(
                        "\n--- {} ---\n{}",
                        self.members[i].name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                return Err(ClusterError::NotReady(max, last_lines));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every member gracefully.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i, Duration::from_secs(5));
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGCONT);
            self.kill(i);
        }
    }
}
