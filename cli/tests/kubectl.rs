//! The kubectl-like commands as a user runs them: the `keel` binary against a
//! real 3-master cluster.

mod common;

use std::time::Duration;

fn keel(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = common::keel()
        .args(args)
        .env("KEEL_SERVER", server)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run keel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const APP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: python:3
        command: [python3, -m, http.server]
        ports: [{containerPort: 8000, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_scale_delete_through_the_cli() {
    let tc = common::start(3, &[]).await;
    let server = common::apis(&tc).join(",");
    // The API serves once the default namespace exists.
    common::api_client(&tc).await;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.yaml");
    std::fs::write(&app, APP).unwrap();
    let app = app.to_str().unwrap();

    let (ok, out, err) = keel(&server, &["apply", "-f", app]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "namespaces/shop created",
            "deployments.apps/web created",
            "services/web created"
        ]
    );
    let (ok, out, _) = keel(&server, &["apply", "-f", app]);
    assert!(ok);
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "{out}");

    // A manifest with an unsupported field is refused, naming the field, and changes nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, APP.replace("replicas: 0", "replicas: 3\n  shards: 2")).unwrap();
    let (ok, _, err) = keel(&server, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("spec.shards"), "{err}");
    let (ok, out, _) = keel(
        &server,
        &["get", "deploy", "web", "-n", "shop", "-o", "json"],
    );
    assert!(ok);
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["spec"]["replicas"], 0);

    // Tables line up like kubectl's.
    let (ok, out, _) = keel(&server, &["get", "deployments", "-n", "shop"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE"),
        "{out}"
    );
    assert!(lines[1].starts_with("web    0/0     "), "{out}");
    let (ok, out, _) = keel(&server, &["get", "ns"]);
    assert!(
        ok && out.contains("shop ") && out.contains("default "),
        "{out}"
    );
    let (ok, out, _) = keel(&server, &["get", "ns", "-o", "json"]);
    assert!(ok);
    let l: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(l["kind"], "List");
    assert_eq!(l["items"].as_array().map(Vec::len), Some(4), "{out}");
    let (ok, out, _) = keel(&server, &["get", "svc", "-n", "shop", "-o", "yaml"]);
    assert!(ok && out.contains("targetPort: http"), "{out}");

    let (ok, out, err) = keel(
        &server,
        &["scale", "deployment/web", "--replicas", "4", "-n", "shop"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deployments.apps/web scaled");
    let (_, out, _) = keel(
        &server,
        &["get", "deploy", "web", "-n", "shop", "-o", "json"],
    );
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            d["spec"]["replicas"].as_i64(),
            d["metadata"]["generation"].as_i64()
        ),
        (Some(4), Some(2))
    );

    // Errors are clear and non-zero.
    let (ok, _, err) = keel(&server, &["get", "widgets"]);
    assert!(!ok && err.contains("doesn't have a resource type"), "{err}");
    let (ok, _, err) = keel(&server, &["get", "deploy", "nope", "-n", "shop"]);
    assert!(!ok && err.contains("not found"), "{err}");

    let (ok, out, err) = keel(&server, &["delete", "-f", app]);
    assert!(ok, "{err}");
    assert!(out.contains("deployments.apps/web deleted"), "{out}");
    let (ok, _, err) = keel(&server, &["get", "deploy", "web", "-n", "shop"]);
    assert!(!ok && err.contains("not found"), "{err}");
}

const ROLLING: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: x, command: [sleep, 'VERSION']}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_history_undo_pause_and_resume() {
    use keel_proto::api::Deployment;
    let tc = common::start(3, &[]).await;
    let server = common::apis(&tc).join(",");
    let client = std::sync::Arc::new(common::api_client(&tc).await);
    for i in 0..3 {
        let n = keel_chaos::sim::node(&format!("n{i}"), &format!("z{i}"), "8", "16Gi");
        client.create(&n).await.unwrap();
    }
    let kubelet = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = keel_chaos::sim::mark_ready(&client, "default").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let apply = |version: &str| {
        let f = dir.path().join(format!("web-{version}.yaml"));
        std::fs::write(&f, ROLLING.replace("VERSION", version)).unwrap();
        keel(&server, &["apply", "-f", f.to_str().unwrap()])
    };
    let template_arg = || async {
        let d: Deployment = client.get("default", "web").await.unwrap();
        d.spec.template.spec.containers[0].command[1].clone()
    };

    assert!(apply("100").0);
    let (ok, out, err) = keel(
        &server,
        &["rollout", "status", "deploy/web", "--timeout", "60"],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    assert!(apply("200").0);
    let (ok, out, err) = keel(
        &server,
        &["rollout", "status", "deployment", "web", "--timeout", "60"],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, _) = keel(&server, &["rollout", "history", "deploy/web"]);
    assert!(ok);
    let revs: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revs, ["1", "2"], "{out}");

    let (ok, out, err) = keel(&server, &["rollout", "undo", "deploy/web"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deployment.apps/web rolled back to revision 1");
    common::poll(
        Duration::from_secs(30),
        "the template of revision 1",
        || async { (template_arg().await == "100").then_some(()) },
    )
    .await;
    let (ok, _, err) = keel(
        &server,
        &["rollout", "status", "deploy/web", "--timeout", "60"],
    );
    assert!(ok, "{err}");
    let (_, out, _) = keel(&server, &["rollout", "history", "deploy/web"]);
    let revs: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revs, ["2", "3"], "revision 1 came back as 3: {out}");
    let (ok, _, err) = keel(
        &server,
        &["rollout", "undo", "deploy/web", "--to-revision", "9"],
    );
    assert!(!ok && err.contains("no revision 9"), "{err}");

    // Paused: a new template is not rolled out until resumed.
    assert!(keel(&server, &["rollout", "pause", "deploy/web"]).0);
    assert!(apply("300").0);
    let (ok, _, err) = keel(
        &server,
        &["rollout", "status", "deploy/web", "--timeout", "2"],
    );
    assert!(!ok && err.contains("paused"), "{err}");
    let d: Deployment = client.get("default", "web").await.unwrap();
    assert!(
        d.spec.paused,
        "apply keeps the pause (the manifest does not mention it)"
    );
    assert!(keel(&server, &["rollout", "resume", "deploy/web"]).0);
    let (ok, out, err) = keel(
        &server,
        &["rollout", "status", "deploy/web", "--timeout", "60"],
    );
    assert!(ok, "{out}{err}");

    let (ok, out, _) = keel(&server, &["describe", "deploy", "web"]);
    assert!(ok && out.contains("ScalingReplicaSet"), "{out}");
    let (ok, out, _) = keel(&server, &["get", "pods", "-o", "wide"]);
    assert!(ok);
    assert_eq!(
        out.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{out}"
    );
    kubelet.abort();
}
