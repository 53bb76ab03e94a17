//! The real kubectl (/usr/bin/kubectl 1.31) port-forwards to a pod of a real
//! 3-master cluster with an agent: its WebSocket-tunneled SPDY session,
//! relayed by a master to the agent. A pod serving HTTP and an echo port:
//! a page, a 3 MiB file byte for byte (several connections at once), 2 MiB
//! echoed back both ways, forwards to `deployment/` and `svc/` (kubectl
//! resolves the Service's target port), kubectl's plain SPDY upgrade (its
//! fallback), a port nothing listens on (kubectl prints the agent's
//! error), and a viewer refused (403).

mod agent_support;
mod common;
mod kubectl_support;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use agent_support as s;
use kubectl_support::{Kubectl, kubeconfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A pod with an HTTP server (port 8000, serving `big.bin`) and an echo
/// server (port 9000), and a Service whose port 80 leads to the HTTP one.
const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: fwd}
spec:
  replicas: 1
  selector: {matchLabels: {app: fwd}}
  template:
    metadata: {labels: {app: fwd}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        command:
        - sh
        - -c
        - |
          python3 -c 'import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(3 << 20)))' > big.bin
          exec python3 -m http.server --bind "$POD_IP" 8000
        ports: [{name: http, containerPort: 8000}]
        readinessProbe: {httpGet: {path: /big.bin, port: http}, periodSeconds: 1}
      - name: echo
        command:
        - python3
        - -c
        - |
          import os, socket
          s = socket.socket()
          s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
          s.bind((os.environ["POD_IP"], 9000))
          s.listen(8)
          while True:
              c, _ = s.accept()
              while True:
                  b = c.recv(65536)
                  if not b:
                      break
                  c.sendall(b)
              c.close()
        ports: [{name: echo, containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: fwd}
spec:
  selector: {app: fwd}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// What `big.bin` holds.
fn big() -> Vec<u8> {
    (0..3usize << 20).map(|i| (i % 251) as u8).collect()
}

/// A local port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 at local `port`: the status line and body.
async fn get(port: u16, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
        .await?;
    let mut all = Vec::new();
    c.read_to_end(&mut all).await?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.lines().next().unwrap_or("").to_string();
    Ok((status, all[end + 4..].to_vec()))
}

/// A running `kubectl port-forward`, stopped when dropped.
struct Forward {
    child: Child,
    log: std::path::PathBuf,
}

impl Forward {
    fn start(k: &Kubectl, dir: &Path, name: &str, args: &[&str]) -> Forward {
        Forward::start_with(k, dir, name, args, &[])
    }

    fn start_with(
        k: &Kubectl,
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Forward {
        let log = dir.join(format!("port-forward-{name}"));
        let mut all = vec!["port-forward"];
        all.extend_from_slice(args);
        Forward {
            child: k.spawn(&all, env, &log),
            log,
        }
    }

    /// What kubectl printed so far (stdout, stderr).
    fn printed(&self) -> (String, String) {
        let read = |ext| std::fs::read_to_string(self.log.with_extension(ext)).unwrap_or_default();
        (read("out"), read("err"))
    }

    /// Polls `GET path` on local `port` until it answers 200 (the forward
    /// is up); its body.
    async fn ready(&mut self, port: u16, path: &str) -> Vec<u8> {
        common::poll(
            Duration::from_secs(30),
            "the forwarded port to answer",
            || {
                if let Ok(Some(st)) = self.child.try_wait() {
                    panic!("kubectl port-forward exited ({st}): {:?}", self.printed());
                }
                async move {
                    match get(port, path).await {
                        Ok((status, body)) if status.contains(" 200 ") => Some(body),
                        _ => None,
                    }
                }
            },
        )
        .await
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_reaches_a_pods_ports() {
    let tc = common::start(3, s::MASTER_ARGS).await;
    let apis = common::apis(&tc);
    let _agents = s::Agents::start(tc.dir.path(), &apis, 1);
    let dir = tc.dir.path();
    let k = Kubectl::new(&kubeconfig(dir, &apis[0], "admin", None));
    k.ok_with(&["apply", "-f", "-"], Some(APP));
    let out = k.ok(&["rollout", "status", "deploy/fwd", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pod = k.ok(&["get", "pods", "-l", "app=fwd", "-o", "name"]);
    let pod = pod.lines().next().expect("a fwd pod").to_string();

    // A pod: two ports at once.
    let (web, echo) = (free_port(), free_port());
    let mut f = Forward::start(
        &k,
        dir,
        "pod",
        &[&pod, &format!("{web}:8000"), &format!("{echo}:9000")],
    );
    let listing = f.ready(web, "/").await;
    assert!(
        String::from_utf8_lossy(&listing).contains("big.bin"),
        "{}",
        String::from_utf8_lossy(&listing)
    );
    let (out, _) = f.printed();
    assert!(
        out.contains(&format!("Forwarding from 127.0.0.1:{web} -> 8000")),
        "{out}"
    );
    // 3 MiB from the pod, byte for byte, over three connections at once.
    let want = big();
    let gets = futures::future::join_all((0..3).map(|_| get(web, "/big.bin"))).await;
    for g in gets {
        let (status, body) = g.expect("GET /big.bin");
        assert!(status.contains(" 200 "), "{status}");
        assert!(
            body.len() == want.len() && body == want,
            "{} bytes",
            body.len()
        );
    }
    // 2 MiB to the pod and back; the client's half-close reaches it.
    let upload: Vec<u8> = (0..2usize << 20).map(|i| (i * 7 % 256) as u8).collect();
    let c = TcpStream::connect(("127.0.0.1", echo)).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let sent = upload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("the echo in time")
        .unwrap();
    writer.await.unwrap();
    assert!(
        back.len() == upload.len() && back == upload,
        "{} bytes",
        back.len()
    );
    // The forward still works after all that.
    f.ready(web, "/").await;
    drop(f);

    // A Deployment and a Service: kubectl picks the pod (and, for the
    // Service, maps port 80 to the container's 8000 itself).
    let port = free_port();
    let mut f = Forward::start(
        &k,
        dir,
        "deploy",
        &["deployment/fwd", &format!("{port}:8000")],
    );
    assert_eq!(f.ready(port, "/big.bin").await, want);
    drop(f);
    let port = free_port();
    let mut f = Forward::start(&k, dir, "svc", &["svc/fwd", &format!("{port}:80")]);
    assert!(!f.ready(port, "/").await.is_empty());
    let (out, _) = f.printed();
    assert!(out.contains(&format!("127.0.0.1:{port} -> 8000")), "{out}");
    drop(f);

    // kubectl's plain SPDY upgrade (its fallback; forced here) is served too.
    let port = free_port();
    let mut f = Forward::start_with(
        &k,
        dir,
        "spdy",
        &["-v=6", &pod, &format!("{port}:8000")],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    );
    assert_eq!(f.ready(port, "/big.bin").await, want);
    let (_, err) = f.printed();
    assert!(
        err.lines()
            .any(|l| l.contains("POST https://") && l.contains("/portforward 101")),
        "{err}"
    );
    drop(f);

    // A port nothing listens on: the connection ends, and kubectl prints
    // the agent's error.
    let port = free_port();
    let f = Forward::start(&k, dir, "dead", &[&pod, &format!("{port}:9999")]);
    common::poll(Duration::from_secs(30), "kubectl listening", || async {
        f.printed().0.contains("Forwarding from").then_some(())
    })
    .await;
    if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await {
        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut sink)).await;
        assert!(sink.is_empty(), "{}", String::from_utf8_lossy(&sink));
    }
    let err = common::poll(Duration::from_secs(20), "kubectl's error", || async {
        let (_, err) = f.printed();
        err.contains("error forwarding port 9999").then_some(err)
    })
    .await;
    assert!(
        err.contains(&format!("an error occurred forwarding {port} -> 9999"))
            && err.contains("connection refused"),
        "{err}"
    );
    drop(f);

    // A viewer may read the pod, not forward to it.
    let token = common::view_token(&apis);
    let viewer = Kubectl::new(&kubeconfig(dir, &apis[1], "viewer", Some(token.trim())));
    let e = viewer.fails(
        &["port-forward", &pod, &format!("{}:8000", free_port())],
        None,
    );
    assert!(
        e.contains("cannot create resource \"pods/portforward\" in API group \"\""),
        "{e}"
    );
}
