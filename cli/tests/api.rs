//! The REST API against a real 3-master cluster (child processes): bad input
//! gets the right Status and changes nothing, resourceVersion conflicts, and
//! watches replay every change in order from an old resourceVersion.

mod common;

use std::time::Duration;

use futures::StreamExt;
use keel_proto::api::Lease;
use keel_proto::client::ClientError;
use serde_json::{Value, json};

async fn raw(
    base: &str,
    method: reqwest::Method,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    // The admin's credentials (HTTPS pinned to the cluster CA, token).
    let r = keel_proto::client::ApiClient::new(&[base.to_string()], &common::shared_credentials())
        .send(method, path, Some((ct, body)), None)
        .await
        .expect("request");
    let code = r.status().as_u16();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (code, v)
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: x, command: [sleep, '100']}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors_and_change_nothing() {
    let tc = common::start(3, &[]).await;
    // Write through a follower as well as through whichever member leads.
    let apis = common::apis(&tc);
    let client = common::api_client(&tc).await;
    let base = &apis[1];
    let coll = "/apis/apps/v1/namespaces/default/deployments";
    let (code, created) = raw(
        base,
        reqwest::Method::POST,
        coll,
        "application/yaml",
        DEPLOY.into(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    // The Deployment controller annotates the object and writes its status
    // (in more than one write: the first status is decided before its
    // ReplicaSet exists); wait until it has finished, so that from here on
    // only our requests could change it: the status observes the current
    // generation, counts the replicas asked for (none), and says the new
    // ReplicaSet has progressed, after which the controller has nothing
    // left to write.
    let url = format!("{coll}/web");
    let settled = common::poll(
        Duration::from_secs(20),
        "the controller to settle",
        || async {
            let d: Value = client.get_value(&url).await.ok()?;
            let s = &d["status"];
            let count = |f: &str| s[f].as_i64().unwrap_or(0);
            let progressing = s["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Progressing")?;
            (s["observedGeneration"] == d["metadata"]["generation"]
                && d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
                && ["replicas", "updatedReplicas", "availableReplicas"]
                    .iter()
                    .all(|f| count(f) == d["spec"]["replicas"].as_i64().unwrap_or(0))
                && progressing["reason"] == "NewReplicaSetAvailable")
                .then_some(d)
        },
    )
    .await;
    let rv = settled["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let before: Value = client.get_value(coll).await.unwrap();

    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "malformed YAML",
            "application/yaml",
            "kind: [\n".into(),
            400,
            "malformed YAML",
        ),
        (
            "malformed JSON",
            "application/json",
            "{\"kind\":".into(),
            400,
            "malformed JSON",
        ),
        (
            "unknown kind",
            "application/yaml",
            DEPLOY.replace("kind: Deployment", "kind: Deploymint"),
            404,
            "Deploymint",
        ),
        (
            "invalid name",
            "application/yaml",
            DEPLOY.replace("name: web}", "name: Web_1}"),
            422,
            "metadata.name",
        ),
        (
            "unsupported field",
            "application/yaml",
            DEPLOY.replace("replicas: 0", "replicas: 0\n  shards: 3"),
            422,
            "spec.shards",
        ),
        (
            "wrong type",
            "application/yaml",
            DEPLOY.replace("replicas: 0", "replicas: many"),
            422,
            "spec.replicas",
        ),
        (
            "selector mismatch",
            "application/yaml",
            DEPLOY.replace("labels: {app: web}", "labels: {app: other}"),
            422,
            "selector",
        ),
        (
            "already exists",
            "application/yaml",
            DEPLOY.into(),
            409,
            "already exists",
        ),
        (
            // Under the 3 MiB body limit, over etcd's 1.5 MiB request limit.
            "object over etcd's request size",
            "application/yaml",
            DEPLOY.replace(
                "metadata: {name: web}",
                &format!(
                    "metadata: {{name: big, annotations: {{a: {}}}}}",
                    "a".repeat(1_650_000)
                ),
            ),
            413,
            "etcd's request size limit",
        ),
        (
            "oversized body",
            "application/json",
            format!("{{\"x\":\"{}\"}}", "a".repeat(4 << 20)),
            413,
            "limit",
        ),
    ];
    for (what, ct, body, want, msg) in cases {
        let (code, status) = raw(base, reqwest::Method::POST, coll, ct, body.into_bytes()).await;
        assert_eq!(code, want, "{what}: {status}");
        assert_eq!(status["kind"], "Status", "{what}");
        let m = status["message"].as_str().unwrap_or("");
        assert!(
            m.contains(msg),
            "{what}: message {m:?} should mention {msg:?}"
        );
    }
    // A replace with a stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!((rv.parse::<i64>().unwrap() - 1).to_string());
    stale["spec"]["replicas"] = json!(5);
    let (code, status) = raw(
        base,
        reqwest::Method::PUT,
        &format!("{coll}/web"),
        "application/json",
        serde_json::to_vec(&stale).unwrap(),
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("Conflict")),
        "{status}"
    );
    // A patch that would make the object invalid is refused.
    let (code, _) = raw(
        base,
        reqwest::Method::PATCH,
        &format!("{coll}/web"),
        "application/merge-patch+json",
        br#"{"spec":{"replicas":-1}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 422);
    // A namespace that does not exist.
    let (code, status) = raw(
        base,
        reqwest::Method::POST,
        "/apis/apps/v1/namespaces/nope/deployments",
        "application/yaml",
        DEPLOY.into(),
    )
    .await;
    assert_eq!(code, 404, "{status}");
    // Unknown paths and methods.
    let (code, _) = raw(base, reqwest::Method::GET, "/api/v1/widgets", "", vec![]).await;
    assert_eq!(code, 404);
    // (DELETE on a collection is deletecollection; PUT there is no verb.)
    let (code, _) = raw(base, reqwest::Method::PUT, coll, "", vec![]).await;
    assert_eq!(code, 405);
    // A deletecollection whose selector matches nothing deletes nothing;
    // a dry run is refused rather than run for real.
    let (code, gone) = raw(
        base,
        reqwest::Method::DELETE,
        &format!("{coll}?labelSelector=app%3Dmatches-nothing"),
        "",
        vec![],
    )
    .await;
    assert_eq!(
        (code, gone["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{gone}"
    );
    // A dry-run delete answers as the delete would, and deletes nothing;
    // an unknown dryRun value is refused.
    let (code, would) = raw(
        base,
        reqwest::Method::DELETE,
        &format!("{coll}/web?dryRun=All"),
        "",
        vec![],
    )
    .await;
    assert_eq!(code, 200, "{would}");
    assert!(!would["metadata"]["deletionTimestamp"].is_null(), "{would}");
    let (code, status) = raw(
        base,
        reqwest::Method::DELETE,
        &format!("{coll}/web?dryRun=Bogus"),
        "",
        vec![],
    )
    .await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = raw(
        base,
        reqwest::Method::GET,
        "/api/v1/pods?labelSelector=app%20in%20(x",
        "",
        vec![],
    )
    .await;
    assert_eq!(code, 400, "{status}");

    // Nothing changed: same objects at the same resourceVersion.
    let after: Value = client.get_value(coll).await.unwrap();
    assert_eq!(after["items"], before["items"]);
    assert_eq!(after["items"][0]["metadata"]["resourceVersion"], json!(rv));
    assert_eq!(after["items"][0]["spec"]["replicas"], json!(0));

    // A replace at the current resourceVersion works and bumps generation.
    let mut fresh = settled.clone();
    fresh["spec"]["replicas"] = json!(2);
    let (code, updated) = raw(
        &apis[2],
        reqwest::Method::PUT,
        &format!("{coll}/web"),
        "application/json",
        serde_json::to_vec(&fresh).unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["metadata"]["generation"], json!(2));
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    // Health endpoints answer.
    for p in ["/healthz", "/readyz", "/version"] {
        let r =
            keel_proto::client::ApiClient::new(&[base.to_string()], &common::shared_credentials())
                .send(reqwest::Method::GET, p, None, None)
                .await
                .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_an_old_resource_version_replays_every_change_in_order() {
    let tc = common::start(3, &[]).await;
    let client = common::api_client(&tc).await;
    let start_rv: String = client
        .get_value("/apis/coordination.k8s.io/v1/namespaces/default/leases")
        .await
        .unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Make changes while nobody watches: creates, updates, a delete.
    let mut expect: Vec<(String, String, String)> = Vec::new();
    for i in 0..3 {
        let mut l = Lease::new("default", &format!("l{i}"));
        l.metadata.labels.insert("set".into(), "a".into());
        let l = client.create(&l).await.unwrap();
        expect.push((
            "ADDED".into(),
            l.metadata.name.clone(),
            l.metadata.resource_version.clone(),
        ));
    }
    for round in 0..4 {
        for i in 0..3 {
            let mut l: Lease = client.get("default", &format!("l{i}")).await.unwrap();
            l.spec.holder_identity = format!("holder-{round}");
            let l = client.update(&l).await.unwrap();
            expect.push((
                "MODIFIED".into(),
                l.metadata.name.clone(),
                l.metadata.resource_version.clone(),
            ));
        }
    }
    client.delete::<Lease>("default", "l1").await.unwrap();
    // A stale update is refused and appears nowhere.
    let mut old = Lease::new("default", "l0");
    old.metadata.resource_version = start_rv.clone();
    old.spec.holder_identity = "stale".into();
    let e = client.update(&old).await.unwrap_err();
    assert!(matches!(&e, ClientError::Api(s) if s.code == 409), "{e}");

    let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases?labelSelector=set%3Da";
    let mut w = Box::pin(client.watch(path, &start_rv).await.unwrap());
    let mut got = Vec::new();
    while got.len() < expect.len() + 1 {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch event in time")
            .expect("stream open")
            .expect("event");
        got.push((
            ev.type_.clone(),
            ev.object["metadata"]["name"].as_str().unwrap().to_string(),
            ev.object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    let (last_type, last_name, _) = got.pop().unwrap();
    assert_eq!((last_type.as_str(), last_name.as_str()), ("DELETED", "l1"));
    assert_eq!(got, expect, "every change, once, in order");
    let revs: Vec<i64> = got.iter().map(|(_, _, r)| r.parse().unwrap()).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]));
}

/// A Service removed when its last finalizer goes (not by the DELETE that
/// only marked it) gives its cluster IP back; until then the address stays
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_removed_through_its_finalizer_gives_its_cluster_ip_back() {
    let tc = common::start(3, &[]).await;
    let base = tc.c.members[0].api_addr();
    let svc = |name: &str, finalizers: Value| {
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "finalizers": finalizers},
            "spec": {"clusterIP": "127.96.200.7", "ports": [{"port": 80}]},
        }))
        .unwrap()
    };
    let path = "/api/v1/namespaces/default/services";
    let json = "application/json";
    let (code, v) = raw(
        &base,
        reqwest::Method::POST,
        path,
        json,
        svc("held", json!(["example.com/hold"])),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let held = format!("{path}/held");
    let (code, v) = raw(&base, reqwest::Method::DELETE, &held, json, Vec::new()).await;
    assert_eq!(code, 200, "{v}");
    // Marked, not gone: the address is still taken.
    let (code, v) = raw(
        &base,
        reqwest::Method::POST,
        path,
        json,
        svc("again", json!([])),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    let unhold = serde_json::to_vec(&json!({"metadata": {"finalizers": null}})).unwrap();
    let (code, v) = raw(
        &base,
        reqwest::Method::PATCH,
        &held,
        "application/merge-patch+json",
        unhold,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = raw(&base, reqwest::Method::GET, &held, json, Vec::new()).await;
    assert_eq!(code, 404, "the last finalizer gone, the Service is gone");
    let (code, v) = raw(
        &base,
        reqwest::Method::POST,
        path,
        json,
        svc("again", json!([])),
    )
    .await;
    assert_eq!(code, 201, "the address was not given back: {v}");
}
