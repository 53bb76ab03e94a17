//! The kubectl-like commands as a user runs them: the `keel` binary against a
//! real 3-master cluster.

mod common;

use std::process::Command;
use std::time::Duration;

use keel_proto::api::Namespace;
use keel_proto::client::ApiClient;

fn keel(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin())
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
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let server = apis.join(",");
    let client = ApiClient::new(&apis);
    common::poll(Duration::from_secs(20), "default namespace", || async {
        client.get::<Namespace>("", "default").await.ok()
    })
    .await;
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
