//! The real kubectl (/usr/bin/kubectl, Debian package `kubectl`), unchanged,
//! drives a real 3-master cluster with an agent through a kubeconfig from
//! `keel kubeconfig`: discovery (api-resources, version), explain,
//! server-side apply (field managers, conflicts, --force-conflicts), server-side
//! tables, every output format, apply/create/replace, server-side dry runs
//! and diff, scale, label,
//! annotate, the three patch types, rollout status/restart/history/undo,
//! logs, exec (stdout, stderr, stdin, exit code; forbidden to a viewer),
//! describe with events, cordon/uncordon/drain (eviction), watches (with bookmarks),
//! auth can-i, delete with --cascade=orphan and =foreground, and errors as kubectl prints them (404, 409, 422,
//! 403). Assertions are on kubectl's own output.

mod agent_support;
mod common;
mod kubectl_support;

use std::time::Duration;

use agent_support as s;
use kubectl_support::{Kubectl, kubeconfig};

/// The words of the line of `out` whose first word is `first`.
fn row<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{out}"))
}

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, 'echo hello from web; exec sleep 3600']
        env: [{{name: A, value: '1'}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_unchanged_drives_a_keel_cluster() {
    let tc = common::start(3, s::MASTER_ARGS).await;
    let apis = common::apis(&tc);
    let _agents = s::Agents::start(tc.dir.path(), &apis, 1);
    let k = Kubectl::new(&kubeconfig(tc.dir.path(), &apis[0], "admin", None));

    // Discovery: every kind with its short name; the server's version.
    let out = k.ok(&["api-resources"]);
    for (name, short, version, namespaced, kind) in [
        ("pods", "po", "v1", "true", "Pod"),
        ("nodes", "no", "v1", "false", "Node"),
        ("namespaces", "ns", "v1", "false", "Namespace"),
        ("services", "svc", "v1", "true", "Service"),
        ("endpoints", "ep", "v1", "true", "Endpoints"),
        ("events", "ev", "v1", "true", "Event"),
        ("deployments", "deploy", "apps/v1", "true", "Deployment"),
        ("replicasets", "rs", "apps/v1", "true", "ReplicaSet"),
    ] {
        assert_eq!(
            row(&out, name),
            [name, short, version, namespaced, kind],
            "{out}"
        );
    }
    let out = k.ok(&["version"]);
    assert!(out.contains("Server Version: v1.31."), "{out}");
    // explain, from the OpenAPI v3 documents' schemas.
    let out = k.ok(&["explain", "pods"]);
    assert!(
        out.contains("KIND:       Pod") && out.contains("spec\t<PodSpec>"),
        "{out}"
    );
    let out = k.ok(&["explain", "pod.spec.containers.securityContext"]);
    assert!(
        out.contains("runAsUser\t<integer>") && out.contains("Who a pod's"),
        "{out}"
    );
    let out = k.ok(&["explain", "deployments.spec.replicas"]);
    assert!(
        out.contains("GROUP:      apps") && out.contains("FIELD: replicas <integer>"),
        "{out}"
    );
    let e = k.fails(&["explain", "pods.spec.nosuchfield"], None);
    assert!(e.contains("nosuchfield"), "{e}");

    // Nodes, as a server-side table.
    let out = common::poll(Duration::from_secs(30), "node n1 Ready", || async {
        let o = k.run_with(&["get", "nodes"], None);
        (o.ok
            && o.stdout
                .lines()
                .any(|l| l.starts_with("n1") && l.contains(" Ready")))
        .then_some(o.stdout)
    })
    .await;
    assert!(out.starts_with("NAME"), "{out}");

    // Client-side apply: created, then unchanged, then configured.
    let out = k.ok_with(&["apply", "-f", "-"], Some(&deployment(1)));
    assert_eq!(out.trim(), "deployment.apps/web created");
    let out = k.ok_with(&["apply", "-f", "-"], Some(&deployment(1)));
    assert_eq!(out.trim(), "deployment.apps/web unchanged");
    // Server-side dry runs and diff: answered as the write would be,
    // nothing changes.
    let out = k.ok_with(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&deployment(2)),
    );
    assert_eq!(
        out.trim(),
        "deployment.apps/web configured (server dry run)"
    );
    let d = k.run_with(&["diff", "-f", "-"], Some(&deployment(2)));
    assert!(
        !d.ok && d.stdout.contains("-  replicas: 1") && d.stdout.contains("+  replicas: 2"),
        "kubectl diff: {d:?}"
    );
    let same = k.run_with(&["diff", "-f", "-"], Some(&deployment(1)));
    assert!(
        same.ok && same.stdout.trim().is_empty(),
        "no difference: {same:?}"
    );
    let out = k.ok(&["delete", "deploy", "web", "--dry-run=server"]);
    assert_eq!(
        out.trim(),
        r#"deployment.apps "web" deleted (server dry run)"#
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .trim(),
        "1"
    );
    let out = k.ok(&[
        "create",
        "namespace",
        "dry",
        "--dry-run=server",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "namespace/dry");
    assert!(
        k.fails(&["get", "namespace", "dry"], None)
            .contains("NotFound")
    );
    let out = k.ok_with(&["apply", "-f", "-"], Some(&deployment(2)));
    assert_eq!(out.trim(), "deployment.apps/web configured");
    let out = common::poll(Duration::from_secs(40), "2/2 ready", || async {
        let o = k.ok(&["get", "deploy", "web"]);
        (row(&o, "web")[1] == "2/2").then_some(o)
    })
    .await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let wide = k.ok(&["get", "deploy", "web", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && row(&wide, "web").contains(&"main"),
        "{wide}"
    );
    let pods = k.ok(&["get", "pods", "-l", "app=web", "-o", "wide"]);
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    assert_eq!(
        pods.lines().filter(|l| l.contains("Running")).count(),
        2,
        "{pods}"
    );
    assert!(pods.lines().skip(1).all(|l| l.ends_with(" n1")), "{pods}");

    // Every output format.
    let y = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        y.contains("kind: Deployment") && y.contains("last-applied-configuration"),
        "{y}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(j["spec"]["replicas"], 2);
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "name"]).trim(),
        "deployment.apps/web"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].name}"
        ]),
        "main"
    );
    let all = k.ok(&["get", "all"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("replicaset.apps/web-"),
        "{all}"
    );
    assert_eq!(
        all.lines().filter(|l| l.starts_with("pod/web-")).count(),
        2,
        "{all}"
    );
    let a = k.ok(&["get", "deploy", "-A", "--show-labels"]);
    assert_eq!(row(&a, "default")[1], "web", "{a}");
    assert!(a.contains("app=web"), "{a}");
    let f = k.ok(&[
        "get",
        "pods",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "name",
    ]);
    assert_eq!(
        f.lines().filter(|l| l.starts_with("pod/web-")).count(),
        2,
        "{f}"
    );

    // The scale subresource.
    assert_eq!(
        k.ok(&["scale", "deploy", "web", "--replicas=3"]).trim(),
        "deployment.apps/web scaled"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
    common::poll(Duration::from_secs(30), "3 web pods", || async {
        let o = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        (o.lines().count() == 3).then_some(())
    })
    .await;

    // Rollouts, logs, describe with events.
    let out = k.ok(&["rollout", "status", "deploy/web", "--timeout=40s"]);
    assert!(
        out.contains(r#"deployment "web" successfully rolled out"#),
        "{out}"
    );
    let out = common::poll(Duration::from_secs(20), "the log line", || async {
        let o = k.run_with(&["logs", "deploy/web"], None);
        o.stdout.contains("hello from web").then_some(o.stdout)
    })
    .await;
    assert!(out.contains("hello from web"), "{out}");
    let pod = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let pod = pod.lines().next().unwrap().to_string();
    // Exec (WebSocket, v5.channel.k8s.io): the container's environment,
    // stdout and stderr apart, the exit code, stdin.
    let o = k.run_with(
        &[
            "exec",
            &pod,
            "--",
            "sh",
            "-c",
            "echo A=$A; echo to stderr >&2; exit 3",
        ],
        None,
    );
    assert_eq!(o.code, Some(3), "{o:?}");
    assert_eq!(o.stdout, "A=1\n", "{o:?}");
    assert!(
        o.stderr.contains("to stderr") && o.stderr.contains("command terminated with exit code 3"),
        "{o:?}"
    );
    let out = k.ok_with(
        &[
            "exec",
            "-i",
            &pod,
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ],
        Some("piped input\nsecond line\n"),
    );
    assert_eq!(out, "PIPED INPUT\nSECOND LINE\ndone\n");
    let e = k.fails(&["exec", &pod, "-c", "nope", "--", "true"], None);
    assert!(e.contains("container nope is not valid for pod"), "{e}");
    let e = k.fails(&["exec", "pod/ghost", "--", "true"], None);
    assert!(e.contains("pods \"ghost\" not found"), "{e}");
    let d = k.ok(&["describe", &pod]);
    assert!(
        d.contains("Events:")
            && d.contains("Scheduled")
            && d.contains("Successfully assigned default/"),
        "{d}"
    );
    assert_eq!(
        k.ok(&["rollout", "restart", "deploy/web"]).trim(),
        "deployment.apps/web restarted"
    );
    let out = k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let h = k.ok(&["rollout", "history", "deploy/web"]);
    assert!(
        h.contains("REVISION") && h.lines().any(|l| l.starts_with('2')),
        "{h}"
    );
    assert_eq!(
        k.ok(&["rollout", "undo", "deploy/web"]).trim(),
        "deployment.apps/web rolled back"
    );
    assert_eq!(
        k.ok(&["rollout", "pause", "deploy/web"]).trim(),
        "deployment.apps/web paused"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.paused}"]),
        "true"
    );
    assert_eq!(
        k.ok(&["rollout", "resume", "deploy/web"]).trim(),
        "deployment.apps/web resumed"
    );
    // The rollback is still replacing pods: kubectl may pick one going away.
    let out = common::poll(Duration::from_secs(30), "logs --tail 1", || async {
        let o = k.run_with(&["logs", "deploy/web", "--tail", "1"], None);
        o.ok.then_some(o.stdout)
    })
    .await;
    assert_eq!(out, "hello from web\n");
    let out = k.ok(&["cluster-info"]);
    assert!(
        out.contains("Kubernetes control plane")
            && out.contains("is running at")
            && out.contains(&format!("https://{}", apis[0])),
        "{out}"
    );
    // Cordon and uncordon (spec.unschedulable).
    assert_eq!(k.ok(&["cordon", "n1"]).trim(), "node/n1 cordoned");
    assert_eq!(
        row(&k.ok(&["get", "nodes"]), "n1")[1],
        "Ready,SchedulingDisabled"
    );
    assert_eq!(k.ok(&["uncordon", "n1"]).trim(), "node/n1 uncordoned");
    assert_eq!(row(&k.ok(&["get", "nodes"]), "n1")[1], "Ready");
    // Watches: kubectl get -w prints the table, then each change; a raw
    // watch that asked for bookmarks gets them.
    let w = k.run_with(
        &["get", "deploy", "web", "-w", "--request-timeout=3s"],
        None,
    );
    assert!(
        w.stdout.starts_with("NAME") && w.stdout.contains("\nweb "),
        "{w:?}"
    );
    let raw = k.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=6",
    ]);
    assert!(
        raw.lines().any(|l| l.contains(r#""type":"BOOKMARK""#)),
        "{raw}"
    );
    // Can I? The admin may.
    assert_eq!(k.ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");

    // Label, annotate; strategic, merge and JSON patches.
    assert_eq!(
        k.ok(&["label", "deploy", "web", "tier=front"]).trim(),
        "deployment.apps/web labeled"
    );
    assert_eq!(
        k.ok(&["annotate", "deploy", "web", "note=hello"]).trim(),
        "deployment.apps/web annotated"
    );
    // Strategic: the env list merges by name (A stays, B joins).
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","env":[{"name":"B","value":"2"}]}]}}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"m":"1"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/metadata/labels/tier","value":"back"}]"#,
    ]);
    let j: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(j["metadata"]["labels"]["tier"], "back");
    assert_eq!(j["metadata"]["labels"]["m"], "1");
    assert_eq!(j["metadata"]["annotations"]["note"], "hello");
    let env = &j["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env,
        &serde_json::json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    // The show-labels column follows.
    let l = k.ok(&["get", "deploy", "web", "--show-labels"]);
    assert!(l.contains("tier=back"), "{l}");

    // Errors as kubectl prints them.
    let e = k.fails(&["get", "deploy", "nope"], None);
    assert_eq!(
        e.trim(),
        r#"Error from server (NotFound): deployments.apps "nope" not found"#
    );
    let e = k.fails(&["create", "-f", "-"], Some(&deployment(1)));
    assert_eq!(
        e.trim(),
        r#"Error from server (AlreadyExists): error when creating "STDIN": deployments.apps "web" already exists"#
    );
    let stale = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    k.ok(&["label", "deploy", "web", "again=1"]);
    let e = k.fails(&["replace", "-f", "-"], Some(&stale));
    assert!(
        e.contains("Error from server (Conflict)")
            && e.contains(r#"Operation cannot be fulfilled on deployments.apps "web""#),
        "{e}"
    );
    let e = k.fails(
        &[
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":-1}}"#,
        ],
        None,
    );
    assert!(
        e.contains(r#"The Deployment "web" is invalid: spec.replicas: Invalid value"#)
            && e.contains("spec.replicas"),
        "{e}"
    );
    // A view token: reads, and a 403 naming the missing permission.
    let token = common::view_token(&apis);
    let viewer = Kubectl::new(&kubeconfig(
        tc.dir.path(),
        &apis[1],
        "viewer",
        Some(token.trim()),
    ));
    assert_eq!(row(&viewer.ok(&["get", "deploy"]), "web")[0], "web");
    let o = viewer.run_with(&["auth", "can-i", "create", "pods"], None);
    assert!(!o.ok && o.stdout.starts_with("no"), "{o:?}");
    assert_eq!(viewer.ok(&["auth", "can-i", "list", "pods"]).trim(), "yes");
    let current = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let current = current.lines().next().expect("a web pod");
    let e = viewer.fails(&["exec", current, "--", "true"], None);
    assert!(
        e.contains("cannot create resource \"pods/exec\" in API group \"\""),
        "{e}"
    );
    let e = viewer.fails(&["delete", "deploy", "web"], None);
    assert!(
        e.contains("Error from server (Forbidden)")
            && e.contains(r#"cannot delete resource "deployments" in API group "apps""#),
        "{e}"
    );

    // Server-side apply: created, a label left out is removed, another
    // field manager's change conflicts until forced.
    let svc = |labels: &str, target: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: ssa\n  labels: {{{labels}}}\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{port: 80, targetPort: {target}}}\n"
        )
    };
    let out = k.ok_with(
        &["apply", "--server-side", "-f", "-"],
        Some(&svc("a: '1', b: '2'", 8000)),
    );
    assert_eq!(out.trim(), "service/ssa serverside-applied");
    k.ok_with(
        &["apply", "--server-side", "-f", "-"],
        Some(&svc("b: '2'", 8000)),
    );
    let labels = k.ok(&["get", "svc", "ssa", "-o", "jsonpath={.metadata.labels}"]);
    assert_eq!(labels, r#"{"b":"2"}"#);
    let e = k.fails(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        Some(&svc("b: '2'", 9000)),
    );
    assert!(
        e.contains("Apply failed with 1 conflict")
            && e.contains("conflict with \"kubectl\"")
            && e.contains("targetPort"),
        "{e}"
    );
    k.ok_with(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&svc("b: '2'", 9000)),
    );
    let port = k.ok(&[
        "get",
        "svc",
        "ssa",
        "-o",
        "jsonpath={.spec.ports[0].targetPort}",
    ]);
    assert_eq!(port, "9000");
    let managers = k.ok(&[
        "get",
        "svc",
        "ssa",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert_eq!(managers, "kubectl other");
    k.ok(&["delete", "svc", "ssa"]);

    // Drain: the eviction subresource empties the node.
    let out = k.ok(&["drain", "n1", "--timeout=40s"]);
    assert!(
        out.contains("evicted") && out.contains("node/n1 drained"),
        "{out}"
    );
    let left = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "{left}");
    k.ok(&["uncordon", "n1"]);

    // Delete with --cascade=orphan: the Deployment goes (kubectl waits for
    // it), its ReplicaSet stays without an owner, and so do its pods.
    let pods_before = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert!(!pods_before.trim().is_empty());
    assert_eq!(
        k.ok(&["delete", "deploy", "web", "--cascade=orphan"])
            .trim(),
        r#"deployment.apps "web" deleted"#
    );
    let e = k.fails(&["get", "deploy", "web"], None);
    assert!(e.contains("NotFound"), "{e}");
    let rs = k.ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    let rs: Vec<&str> = rs.lines().collect();
    assert!(!rs.is_empty(), "the ReplicaSets were not orphaned");
    let owners = k.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences}",
    ]);
    assert!(owners.trim().is_empty(), "still owned: {owners}");
    let pods_after = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert!(
        !pods_after.trim().is_empty(),
        "the orphaned ReplicaSets' pods went"
    );

    // Delete with --cascade=foreground: a ReplicaSet goes only once its
    // pods are gone, so when kubectl returns (it waits) none is left.
    let mut args = vec!["delete", "--cascade=foreground"];
    args.extend(rs.iter().copied());
    k.ok(&args);
    let left = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert!(
        left.trim().is_empty(),
        "pods left after a foreground delete: {left}"
    );

    // Two levels: a Deployment deleted in the foreground goes only once its
    // ReplicaSets, and their pods, are gone.
    let two = deployment(2).replace("web", "two");
    k.ok_with(&["apply", "-f", "-"], Some(&two));
    common::poll(Duration::from_secs(30), "2 pods of two", || async {
        let o = k.ok(&["get", "pods", "-l", "app=two", "-o", "name"]);
        (o.lines().count() == 2).then_some(())
    })
    .await;
    k.ok(&["delete", "deploy", "two", "--cascade=foreground"]);
    for what in ["rs", "pods"] {
        let left = k.ok(&["get", what, "-l", "app=two", "-o", "name"]);
        assert!(
            left.trim().is_empty(),
            "{what} left after the Deployment's foreground delete: {left}"
        );
    }
}
