//! kubectl through `keel lb`, the load balancer in front of the masters: a
//! `kubectl get pods --watch` keeps going when the master its watch was on
//! is SIGKILLed (the load balancer resumes it on another master from the
//! last resourceVersion it relayed: the next change shows, nothing is
//! shown twice), other requests fail over to a live master, and `kubectl
//! exec`'s WebSocket is relayed.

mod agent_support;
mod common;
mod kubectl_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_support as s;
use kubectl_support::{KUBECTL, Kubectl, kubeconfig};

/// A child process killed when dropped (even when the test fails).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child writes to `pipe`, gathered as they come.
fn gather(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            l.lock().unwrap().push(line);
        }
    });
    lines
}

/// The event and pod of a line of `kubectl get pods --watch
/// --output-watch-events` (`ADDED first 0/1 Pending ...` → `ADDED first`).
fn event(line: &str) -> Option<String> {
    let mut w = line.split_whitespace();
    Some(format!("{} {}", w.next()?, w.next()?))
}

/// Waits until the watch printed the event `line` (30 s at most).
async fn shows(out: &Arc<Mutex<Vec<String>>>, err: &Arc<Mutex<Vec<String>>>, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !out
        .lock()
        .unwrap()
        .iter()
        .any(|l| event(l).as_deref() == Some(line))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch never showed {line:?}: stdout {:?}, stderr {:?}",
            out.lock().unwrap(),
            err.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: lb}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'exec sleep 3600']
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_watch_survives_its_master_being_killed() {
    let mut tc = common::start(3, s::MASTER_ARGS).await;
    let apis = common::apis(&tc);
    let _agents = s::Agents::start(tc.dir.path(), &apis, 1);
    let listen = format!("127.0.0.1:{}", keel_chaos::free_port());
    let lb_log = tc.dir.path().join("lb.log");
    let mut lb = Command::new(common::bin());
    lb.args(["lb", "--listen", &listen, "--masters", &apis.join(",")])
        .arg("--pki-dir")
        .arg(common::shared_pki())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&lb_log).unwrap());
    let _lb = Reaped(lb.spawn().expect("keel lb"));
    let cfg = kubeconfig(tc.dir.path(), &listen, "through-lb", None);
    let k = Kubectl::new(&cfg);
    common::poll(
        Duration::from_secs(20),
        "the load balancer answering",
        || async {
            k.run_with(&["get", "ns", "default", "-o", "name"], None)
                .ok
                .then_some(())
        },
    )
    .await;

    // A watch through the load balancer, on masters[0] (tried first).
    k.ok_with(&["apply", "-f", "-"], Some(&pod("before")));
    let mut watch = Command::new(KUBECTL);
    watch
        .args([
            "--request-timeout=0",
            "get",
            "pods",
            "-l",
            "app=lb",
            "--watch",
            "--output-watch-events",
        ])
        .env("KUBECONFIG", &cfg)
        .env("HOME", cfg.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = watch.spawn().expect("kubectl get --watch");
    let out = gather(child.stdout.take().unwrap());
    let err = gather(child.stderr.take().unwrap());
    let mut child = Reaped(child);
    // The list (pod before) is shown first; the watch goes on from the
    // list's resourceVersion, so every change after it shows.
    shows(&out, &err, "ADDED before").await;
    k.ok_with(&["apply", "-f", "-"], Some(&pod("first")));
    shows(&out, &err, "ADDED first").await;

    // SIGKILL the master the watch is on; the next pod still shows.
    tc.c.kill(0);
    // It may have led: the write goes through once a new leader is elected.
    common::poll(Duration::from_secs(30), "pod second created", || async {
        k.run_with(&["apply", "-f", "-"], Some(&pod("second")))
            .ok
            .then_some(())
    })
    .await;
    shows(&out, &err, "ADDED second").await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "kubectl's watch ended: {:?}",
        err.lock().unwrap()
    );
    let o = out.lock().unwrap().clone();
    assert_eq!(
        o.iter()
            .filter(|l| event(l).as_deref() == Some("ADDED first"))
            .count(),
        1,
        "an event shown twice: {o:?}"
    );
    assert_eq!(
        o.iter()
            .filter(|l| event(l).as_deref() == Some("ADDED before"))
            .count(),
        1,
        "an event shown twice: {o:?}"
    );
    let log = std::fs::read_to_string(&lb_log).unwrap();
    assert!(log.contains("watch resumed"), "{log}");

    // Exec's WebSocket through the load balancer, on a live master.
    common::poll(Duration::from_secs(30), "pod second running", || async {
        let o = k.run_with(
            &["get", "pod", "second", "-o", "jsonpath={.status.phase}"],
            None,
        );
        (o.stdout == "Running").then_some(())
    })
    .await;
    let o = k.run_with(
        &["exec", "-i", "second", "--", "sh", "-c", "cat; exit 4"],
        Some("through the lb\n"),
    );
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (Some(4), "through the lb\n"),
        "{o:?}"
    );
}
