//! Helpers for the agent end-to-end tests: node agents as real `keel agent`
//! processes next to a `ProcessCluster` of masters, and polling the API.
//! Dropping `Agents` SIGKILLs the agents and every pod process they
//! recorded, so a failed test leaves nothing running.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use keel_agent::runtime::process::same_process;
use keel_proto::api::{Endpoints, Pod, Service};
use keel_proto::client::ApiClient;
use serde_json::Value;

use crate::common;

/// Fast settings for tests: short back-off, quick heartbeats.
pub const AGENT_ARGS: &[&str] = &[
    "--backoff-initial-ms",
    "500",
    "--backoff-max-ms",
    "2000",
    "--heartbeat-ms",
    "500",
    "--agent-port",
    "0",
];

/// Masters that notice a dead node in seconds.
pub const MASTER_ARGS: &[&str] = &["--node-monitor-grace", "3s", "--pod-eviction-timeout", "1s"];

/// A pod range octet no other agent of this test binary uses.
fn next_range() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let base = (std::process::id() % 60) as u8 * 2;
    // 130..=249: clear of keel up's 127.11+ and the service range 127.96.
    130 + (base + NEXT.fetch_add(1, Ordering::SeqCst)) % 120
}

pub struct AgentProc {
    pub name: String,
    pub zone: String,
    pub range: u8,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Agents {
    pub agents: Vec<AgentProc>,
    masters: String,
    /// Extra `keel agent` arguments (e.g. `--runtime docker`).
    extra: Vec<String>,
}

impl Agents {
    /// Starts `n` agents (zones a, b, ...) under `dir` against `masters` (API addresses).
    pub fn start(dir: &Path, masters: &[String], n: usize) -> Agents {
        Self::start_with(dir, masters, n, &[])
    }

    /// Starts `n` agents with extra `keel agent` arguments.
    pub fn start_with(dir: &Path, masters: &[String], n: usize, extra: &[&str]) -> Agents {
        let mut a = Agents {
            agents: Vec::new(),
            masters: masters.join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            let name = format!("n{}", i + 1);
            a.agents.push(AgentProc {
                zone: ["zone-a", "zone-b"][i % 2].to_string(),
                range: next_range(),
                data_dir: dir.join("agents").join(&name),
                log: dir.join(format!("{name}.log")),
                name,
                child: None,
            });
            a.spawn(i);
        }
        a
    }

    pub fn spawn(&mut self, i: usize) {
        // The first start joins with a fresh bootstrap token; later starts
        // use the node certificate the agent saved.
        let joined = self.agents[i]
            .data_dir
            .join("pki")
            .join("node.crt")
            .exists();
        let token = if joined {
            String::new()
        } else {
            let masters: Vec<String> = self.masters.split(',').map(str::to_string).collect();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(common::bootstrap_token(
                    &keel_proto::client::ApiClient::new(&masters, &common::shared_credentials()),
                    &self.agents[i].name,
                ))
            })
        };
        let a = &self.agents[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .expect("agent log");
        let child = Command::new(common::bin())
            .arg("agent")
            .args(["--name", &a.name, "--zone", &a.zone])
            .arg("--data-dir")
            .arg(&a.data_dir)
            .args(["--masters", &self.masters])
            .args(["--pod-range", &a.range.to_string()])
            .arg("--ca-cert")
            .arg(common::shared_pki().join("ca.crt"))
            .env("KEEL_JOIN_TOKEN", &token)
            .args(AGENT_ARGS)
            .args(&self.extra)
            .env("RUST_LOG", "info,keel_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agents[i].child = Some(child);
    }

    /// SIGKILL agent `i` (its pods keep running).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The PIDs agent `i` recorded for its pods: (pod name, container PID, start ticks).
    pub fn recorded(&self, i: usize) -> Vec<(String, u32, u64)> {
        recorded(&self.agents[i].data_dir)
    }

    pub fn log_tail(&self, i: usize) -> String {
        let s = std::fs::read_to_string(&self.agents[i].log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

pub fn recorded(data_dir: &Path) -> Vec<(String, u32, u64)> {
    let Ok(b) = std::fs::read(data_dir.join("state.json")) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&b).unwrap_or_default();
    let mut out = Vec::new();
    for p in v["pods"].as_object().into_iter().flat_map(|m| m.values()) {
        for c in p["containers"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            out.push((
                p["name"].as_str().unwrap_or("").to_string(),
                c["pid"].as_u64().unwrap_or(0) as u32,
                c["start_ticks"].as_u64().unwrap_or(0),
            ));
        }
    }
    out.sort();
    out
}

impl Drop for Agents {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill(i);
            for (_, pid, ticks) in recorded(&self.agents[i].data_dir) {
                if same_process(pid, ticks) {
                    // SAFETY: killing the process group of a pod process this test started.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Processes whose command line contains `needle` (to count duplicates).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !cmd.contains("keel") {
            out.push(pid);
        }
    }
    out
}

/// An HTTP GET through a plain TCP connection; the status code, or None.
pub async fn http_get(addr: &str) -> Option<u16> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    c.get(format!("http://{addr}/"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

pub async fn pods(c: &ApiClient, selector: &str) -> Vec<Pod> {
    c.list::<Pod>("default", selector)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The ready endpoint IPs of a Service.
pub async fn ready_ips(c: &ApiClient, svc: &str) -> Vec<String> {
    let Ok(e) = c.get::<Endpoints>("default", svc).await else {
        return Vec::new();
    };
    let mut ips: Vec<String> = e
        .subsets
        .iter()
        .flat_map(|s| s.addresses.iter().map(|a| a.ip.clone()))
        .collect();
    ips.sort();
    ips
}

pub async fn cluster_ip(c: &ApiClient, svc: &str) -> String {
    common::poll(Duration::from_secs(10), "service clusterIP", || async {
        c.get::<Service>("default", svc)
            .await
            .ok()
            .map(|s| s.spec.cluster_ip)
            .filter(|ip| !ip.is_empty())
    })
    .await
}

/// Applies a YAML/JSON manifest through the CLI (as a user would).
pub fn apply(server: &str, yaml: &str) {
    use std::io::Write;
    let mut child = common::keel()
        .args(["apply", "-f", "-", "--server", server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel apply");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "keel apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a keel CLI command; (success, stdout, stderr).
pub fn keel(args: &[&str]) -> (bool, String, String) {
    let out = common::keel().args(args).output().expect("run keel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Deployment of `replicas` Python HTTP servers (port 8000, readiness
/// probe on /) and a Service `name` on port `port` in front of them.
pub fn web(name: &str, replicas: usize, port: u16) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        command: [python3, -m, http.server, --bind, $(POD_IP), '8000']
        ports: [{{name: http, containerPort: 8000}}]
        readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: http}}]
"
    )
}
