//! Readiness and liveness probes (httpGet, tcpSocket, exec), as kubelet
//! runs them: after `initialDelaySeconds`, every `periodSeconds`, each
//! attempt bounded by `timeoutSeconds`; the result flips only after
//! `successThreshold` successes or `failureThreshold` failures in a row.
//! The threshold logic is the pure [`Tracker`]; [`spawn`] runs the attempts.

use std::sync::Arc;
use std::time::Duration;

use keel_proto::api::core::{Container, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::env::resolve_port;
use crate::runtime::{ContainerConfig, Runtime, Sandbox};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Readiness,
    Liveness,
}

/// The settings of a probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let pos = |v: i64, d: u64| if v > 0 { v as u64 } else { d };
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.max(0) as u64),
            period: Duration::from_secs(pos(p.period_seconds, 10)),
            timeout: Duration::from_secs(pos(p.timeout_seconds, 1)),
            success_threshold: pos(p.success_threshold, 1) as u32,
            failure_threshold: pos(p.failure_threshold, 3) as u32,
        }
    }
}

/// The threshold state machine of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    result: bool,
}

impl Tracker {
    /// A tracker starting at `initial` (readiness starts failed, liveness
    /// succeeded, as in kubelet).
    pub fn new(t: &Timing, initial: bool) -> Tracker {
        Tracker {
            success_threshold: t.success_threshold.max(1),
            failure_threshold: t.failure_threshold.max(1),
            successes: 0,
            failures: 0,
            result: initial,
        }
    }

    pub fn result(&self) -> bool {
        self.result
    }

    /// Records one attempt; returns the new result when it flipped.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.result && self.successes >= self.success_threshold {
                self.result = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.result && self.failures >= self.failure_threshold {
                self.result = false;
                return Some(false);
            }
        }
        None
    }
}

/// One probe attempt's outcome, sent to the pod's worker.
#[derive(Debug)]
pub struct Outcome {
    pub container: usize,
    /// The container run the probe belongs to (stale results are dropped).
    pub generation: u64,
    pub kind: Kind,
    pub ok: bool,
    pub message: String,
}

/// What a probe needs to reach its container.
pub struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub sandbox: Sandbox,
    pub spec: Container,
    pub config: ContainerConfig,
    pub container: usize,
    pub generation: u64,
}

/// Runs `probe` every period until the receiver goes away or the task is aborted.
pub fn spawn(
    kind: Kind,
    probe: Probe,
    target: Target,
    tx: mpsc::Sender<Outcome>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t = Timing::of(&probe);
        tokio::time::sleep(t.initial_delay).await;
        loop {
            let r = tokio::time::timeout(t.timeout, attempt(&probe, &target, t.timeout)).await;
            let (ok, message) = match r {
                Ok(Ok(())) => (true, String::new()),
                Ok(Err(m)) => (false, m),
                Err(_) => (false, format!("timed out after {:?}", t.timeout)),
            };
            let o = Outcome {
                container: target.container,
                generation: target.generation,
                kind,
                ok,
                message,
            };
            if tx.send(o).await.is_err() {
                return;
            }
            tokio::time::sleep(t.period).await;
        }
    })
}

async fn attempt(p: &Probe, t: &Target, timeout: Duration) -> Result<(), String> {
    let ip = t.sandbox.ip.to_string();
    if let Some(h) = &p.http_get {
        let port = resolve_port(&t.spec, &h.port).ok_or("unknown port")?;
        let host = if h.host.is_empty() { &ip } else { &h.host };
        let path = if h.path.is_empty() { "/" } else { &h.path };
        return http_get(host, port, path).await;
    }
    if let Some(s) = &p.tcp_socket {
        let port = resolve_port(&t.spec, &s.port).ok_or("unknown port")?;
        let host = if s.host.is_empty() { &ip } else { &s.host };
        return TcpStream::connect((host.as_str(), port))
            .await
            .map(|_| ())
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    if let Some(e) = &p.exec {
        return match t
            .runtime
            .exec(&t.sandbox, &t.config, &e.command, timeout)
            .await
        {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("command exited with {code}")),
            Err(err) => Err(err.to_string()),
        };
    }
    Err("probe has no handler (httpGet, tcpSocket or exec)".into())
}

/// A minimal HTTP/1.0 GET: success is a 2xx or 3xx status, as in kubelet.
async fn http_get(host: &str, port: u16, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get http://{host}:{port}{path}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: keel-probe/1.0\r\nAccept: */*\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: i64, failure: i64) -> Timing {
        Timing::of(&Probe {
            success_threshold: success,
            failure_threshold: failure,
            ..Default::default()
        })
    }

    #[test]
    fn defaults_are_kubernetes_ones() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn result_flips_only_after_thresholds_in_a_row() {
        let mut r = Tracker::new(&timing(2, 3), false);
        assert_eq!(r.record(true), None);
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(true), None);
        assert_eq!(r.record(true), Some(true));
        assert_eq!(r.record(true), None);
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(true), None, "a success resets the failures");
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(false), None);
        assert_eq!(r.record(false), Some(false));
        assert!(!r.result());
        let mut l = Tracker::new(&timing(1, 1), true);
        assert_eq!(l.record(false), Some(false));
        assert_eq!(l.record(true), Some(true));
    }
}
