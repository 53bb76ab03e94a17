//! Security against a real 3-master cluster (child processes, TLS on): every
//! port refuses plain text and certificates from another CA; the peer and
//! client ports admit only the right organisations; tokens expire and can be
//! revoked; RBAC answers 401/403 naming the missing permission; node
//! restriction; single-use bootstrap tokens; an agent without a valid token
//! cannot join; the audit log records mutating and denied requests.

mod common;

use std::time::Duration;

use keel_proto::api::{Namespace, Pod};
use keel_proto::client::{ApiClient, ClientError, Credentials};
use keel_proto::etcdserverpb::StatusRequest;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::keelagent::WatchPodsRequest;
use keel_proto::keelagent::agent_client::AgentClient;
use keel_proto::keelraft::RaftPayload;
use keel_proto::keelraft::raft_service_client::RaftServiceClient;
use keel_proto::pki::{self, Ca, Pair, TlsBundle, Usage};
use serde_json::{Value, json};
use tonic::transport::Endpoint;

fn admin_token() -> String {
    std::fs::read_to_string(common::shared_pki().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// A REST client trusting the cluster CA with exactly these credentials.
fn client(apis: &[String], identity: Option<Pair>, token: Option<String>) -> ApiClient {
    ApiClient::try_new(
        apis,
        &Credentials {
            tls: Some(TlsBundle {
                ca_pem: common::ca_pem(),
                me: identity,
            }),
            token,
        },
    )
    .unwrap()
}

/// A gRPC endpoint to `addr` with the given TLS (None: plain text).
fn grpc(addr: &str, tls: Option<&TlsBundle>) -> Endpoint {
    let e = match tls {
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(t.tonic_client())
            .unwrap(),
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    e.connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

/// The answer to a Maintenance.Status call on the client port.
async fn status_code(addr: &str, tls: Option<&TlsBundle>) -> Answer {
    match grpc(addr, tls).connect().await {
        Err(e) => Answer::Refused(e.to_string()),
        Ok(ch) => match MaintenanceClient::new(ch).status(StatusRequest {}).await {
            Ok(_) => Answer::Code(tonic::Code::Ok),
            Err(s) => Answer::of(s),
        },
    }
}

/// The answer to a Raft Vote call on the peer port.
async fn peer_code(addr: &str, tls: Option<&TlsBundle>) -> Answer {
    match grpc(addr, tls).connect().await {
        Err(e) => Answer::Refused(e.to_string()),
        Ok(ch) => match RaftServiceClient::new(ch)
            .vote(RaftPayload { data: vec![] })
            .await
        {
            Ok(_) => Answer::Code(tonic::Code::Ok),
            Err(s) => Answer::of(s),
        },
    }
}

/// What a gRPC call got: an answer from the service (or its interceptor),
/// or a connection that failed before any service was reached.
#[derive(Debug, PartialEq)]
enum Answer {
    Code(tonic::Code),
    Refused(String),
}

impl Answer {
    fn of(s: tonic::Status) -> Answer {
        // tonic reports transport failures (a refused handshake, HTTP/2
        // frames sent to a TLS socket) as statuses with the transport's error.
        let m = s.message().to_lowercase();
        let transport = [
            "transport",
            "connection",
            "h2 protocol",
            "tls",
            "handshake",
            "broken pipe",
            "reset",
        ];
        let no_answer = matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled);
        if no_answer
            || (s.code() != tonic::Code::PermissionDenied
                && s.code() != tonic::Code::Unauthenticated
                && transport.iter().any(|t| m.contains(t)))
        {
            Answer::Refused(s.to_string())
        } else {
            Answer::Code(s.code())
        }
    }
}

fn api_code(r: Result<Value, ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.code(),
    }
}

fn api_message(r: Result<Value, ClientError>) -> String {
    match r {
        Err(ClientError::Api(s)) => s.message,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A node certificate bought with a fresh bootstrap token.
async fn node_identity(admin: &ApiClient, apis: &[String], node: &str) -> Pair {
    let token = common::bootstrap_token(admin, node).await;
    let (csr, key_pem) = pki::node_csr(node).unwrap();
    let c = client(apis, None, Some(token));
    let r: Value = c
        .post("/keel/v1/bootstrap", &json!({"nodeName": node, "csr": csr}))
        .await
        .expect("bootstrap");
    Pair {
        cert_pem: r["certificate"].as_str().unwrap().to_string(),
        key_pem,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_refuses_plain_text_strangers_and_the_wrong_organisation() {
    let tc = common::start(3, &[]).await;
    let m = &tc.c.members[0];
    let cluster = common::shared_pki();
    let admin = pki::PkiDir(cluster.clone())
        .admin_credentials()
        .unwrap()
        .tls
        .unwrap();
    // A certificate from another CA, trusting the right one.
    let stranger_ca = Ca::generate("stranger").unwrap();
    let stranger = TlsBundle {
        ca_pem: common::ca_pem(),
        me: Some(
            stranger_ca
                .issue("admin", Some(pki::ORG_ADMIN), &[], Usage::Client)
                .unwrap(),
        ),
    };
    let anonymous = TlsBundle {
        ca_pem: common::ca_pem(),
        me: None,
    };

    // Client (etcd) port: the admin certificate gets an answer. Peer (Raft)
    // port: the admin certificate is the cluster's but not a master's.
    let client_addr = m.client_addr();
    let peer_addr = m.peer_addr();
    assert_eq!(
        status_code(&client_addr, Some(&admin)).await,
        Answer::Code(tonic::Code::Ok)
    );
    assert_eq!(
        peer_code(&peer_addr, Some(&admin)).await,
        Answer::Code(tonic::Code::PermissionDenied)
    );
    // Neither port lets a stranger, a certificate-less client or plain text
    // reach any service.
    for (what, tls) in [
        ("plain text", None),
        ("a stranger's certificate", Some(&stranger)),
        ("no certificate", Some(&anonymous)),
    ] {
        let code = status_code(&client_addr, tls).await;
        assert!(
            matches!(code, Answer::Refused(_)),
            "client port with {what}: {code:?}"
        );
        let code = peer_code(&peer_addr, tls).await;
        assert!(
            matches!(code, Answer::Refused(_)),
            "peer port with {what}: {code:?}"
        );
    }

    // REST API: HTTPS only; a stranger's certificate fails the handshake;
    // no credentials is 401.
    let apis = common::apis(&tc);
    let api = &apis[..1];
    let plain = ApiClient::try_new(api, &Credentials::plaintext()).unwrap();
    assert_eq!(api_code(plain.get_value("/api/v1/namespaces").await), 0);
    let strange = ApiClient::try_new(
        api,
        &Credentials::tls(common::ca_pem(), stranger.me.clone()),
    )
    .unwrap();
    assert_eq!(api_code(strange.get_value("/api/v1/namespaces").await), 0);
    let nobody = client(api, None, None);
    let r = nobody.get_value("/api/v1/namespaces").await;
    assert_eq!(api_code(r), 401);
    let bad = client(
        api,
        None,
        Some(format!("keel.{}.{}", "0".repeat(12), "0".repeat(48))),
    );
    assert_eq!(api_code(bad.get_value("/api/v1/namespaces").await), 401);
    // Health stays open, as in Kubernetes.
    let r = nobody
        .send(reqwest::Method::GET, "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A node certificate is signed by the cluster CA but must never reach
    // the raw key space.
    let admin_api = client(&apis, admin.me.clone(), None);
    let n1 = node_identity(&admin_api, &apis, "n1").await;
    let node_tls = TlsBundle {
        ca_pem: common::ca_pem(),
        me: Some(n1),
    };
    assert_eq!(
        status_code(&client_addr, Some(&node_tls)).await,
        Answer::Code(tonic::Code::PermissionDenied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_node_restriction_bootstrap_and_audit() {
    let tc = common::start(3, &[]).await;
    let apis = common::apis(&tc);
    let admin = client(&apis, None, Some(admin_token()));
    admin.get::<Namespace>("", "default").await.unwrap();

    // A view token reads but cannot create; the 403 names the permission.
    let view_token = common::view_token(&apis);
    let viewer = client(&apis, None, Some(view_token.clone()));
    viewer.get::<Namespace>("", "default").await.unwrap();
    let r = viewer
        .post::<Value>(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nope"}}),
        )
        .await;
    let msg = api_message(r);
    assert!(
        msg.contains("cannot create resource \"namespaces\""),
        "{msg}"
    );
    assert!(
        admin.get::<Namespace>("", "nope").await.is_err(),
        "a denied create changed nothing"
    );
    // A view token cannot read tokens either.
    assert_eq!(api_code(viewer.get_value("/keel/v1/tokens").await), 403);
    // Nor delete a pod named like a subresource: `pods/log` is the pod
    // `log` (a delete), not the log of a pod (a get), to the guard as to the router.
    let p: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "log", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}]}
    }))
    .unwrap();
    admin.create(&p).await.unwrap();
    let r = viewer
        .send(
            reqwest::Method::DELETE,
            "/api/v1/namespaces/default/pods/log",
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a view token deleted a pod");
    let msg = r.text().await.unwrap();
    assert!(msg.contains("cannot delete resource \\\"pods\\\""), "{msg}");
    let still: Pod = admin
        .get("default", "log")
        .await
        .expect("the pod is still there");
    assert!(still.metadata.deletion_timestamp.is_none(), "{still:?}");
    // The log of a pod is only read: a DELETE there runs nothing.
    let r = viewer
        .send(
            reqwest::Method::DELETE,
            "/api/v1/namespaces/default/pods/log/log",
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    admin.get::<Pod>("default", "log").await.unwrap();

    // Revocation: refused on every master once applied.
    let id = view_token.split('.').nth(1).unwrap().to_string();
    let out = common::keel()
        .args(["token", "revoke", &id, "--server"])
        .arg(apis.join(","))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for api in &apis {
        let one = client(std::slice::from_ref(api), None, Some(view_token.clone()));
        let msg = common::poll(Duration::from_secs(10), "revocation applied", || async {
            match one.get_value("/api/v1/namespaces").await {
                Err(ClientError::Api(s)) if s.code == 401 => Some(s.message),
                _ => None,
            }
        })
        .await;
        assert!(msg.contains("revoked"), "{msg}");
    }

    // Expiry: a one-second token stops working.
    let r: Value = admin
        .post(
            "/keel/v1/tokens",
            &json!({"user": "brief", "role": "edit", "ttlSeconds": 1}),
        )
        .await
        .unwrap();
    let brief = client(&apis, None, Some(r["token"].as_str().unwrap().to_string()));
    let msg = common::poll(Duration::from_secs(10), "the token to expire", || async {
        match brief.get_value("/api/v1/namespaces").await {
            Err(ClientError::Api(s)) if s.code == 401 => Some(s.message),
            _ => None,
        }
    })
    .await;
    assert!(msg.contains("expired"), "{msg}");

    // Bootstrap tokens are bound to one node and single use.
    let token = common::bootstrap_token(&admin, "n7").await;
    let join = |node: &str, csr_for: &str| {
        let (csr, _) = pki::node_csr(csr_for).unwrap();
        let c = client(&apis, None, Some(token.clone()));
        let body = json!({"nodeName": node, "csr": csr});
        async move { c.post::<Value>("/keel/v1/bootstrap", &body).await }
    };
    let r = join("n9", "n9").await;
    assert_eq!(api_code(r), 403, "a token for n7 used for n9");
    assert!(api_message(join("n9", "n9").await).contains("is for node \"n7\""));
    let r = join("n7", "n9").await;
    assert_eq!(api_code(r), 422, "a CSR naming another node");
    join("n7", "n7").await.expect("first use");
    let again = join("n7", "n7").await;
    assert_eq!(api_code(again), 401);
    assert!(api_message(join("n7", "n7").await).contains("already used"));
    // ... and good for nothing else.
    let other = common::bootstrap_token(&admin, "n8").await;
    let b = client(&apis, None, Some(other));
    assert_eq!(api_code(b.get_value("/api/v1/pods").await), 401);

    // Node restriction: n1 may update the status of its own pods, not n2's.
    let n1 = client(&apis, Some(node_identity(&admin, &apis, "n1").await), None);
    for (name, node) in [("on-n1", "n1"), ("on-n2", "n2")] {
        let p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["sleep", "1"]}]}
        }))
        .unwrap();
        admin.create(&p).await.unwrap();
    }
    let mut mine: Pod = n1.get("default", "on-n1").await.unwrap();
    mine.status.phase = "Running".into();
    n1.update_status(&mine).await.expect("own pod's status");
    let mut theirs: Pod = n1.get("default", "on-n2").await.unwrap();
    theirs.status.phase = "Failed".into();
    match n1.update_status(&theirs).await {
        Err(ClientError::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("node n1"), "{}", s.message);
        }
        other => panic!("n1 changed n2's pod: {other:?}"),
    }
    let still: Pod = admin.get("default", "on-n2").await.unwrap();
    assert_ne!(still.status.phase, "Failed");
    // It watches its own pods over the agents' gRPC service, not n2's.
    let n1_tls = TlsBundle {
        ca_pem: common::ca_pem(),
        me: Some(node_identity(&admin, &apis, "n1").await),
    };
    let watch = |node: &'static str| {
        let ep = grpc(&apis[0], Some(&n1_tls));
        async move {
            let ch = ep.connect().await.unwrap();
            AgentClient::new(ch)
                .watch_pods(WatchPodsRequest {
                    node_name: node.into(),
                    resource_version: 0,
                })
                .await
                .map(|_| ())
        }
    };
    watch("n1").await.expect("a node watches its own pods");
    assert_eq!(
        watch("n2").await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    // Nor may it delete pods or create another node's Node.
    assert_eq!(api_code(n1.delete::<Pod>("default", "on-n1").await), 403);
    let r = n1
        .post::<Value>(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}),
        )
        .await;
    assert_eq!(api_code(r), 403);

    // The audit log has the denied create and the allowed pod creates.
    let out = common::keel()
        .args(["audit", "tail", "--lines", "500", "--json", "--server"])
        .arg(apis.join(","))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|e| e["verb"] == "create"
            && e["resource"] == "namespaces"
            && e["name"] == "nope"
            && e["code"] == 403),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|e| e["user"] == "admin" && e["resource"] == "pods" && e["code"] == 201),
        "{lines:?}"
    );
    // The denied delete of the pod `log` is recorded as what it was.
    assert!(
        lines.iter().any(|e| e["verb"] == "delete"
            && e["resource"] == "pods"
            && e["name"] == "log"
            && e["code"] == 403),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|e| e["name"] == "log" && e["verb"] == "get"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|e| e["user"] == "node:n1" && e["resource"] == "pods/status" && e["code"] == 403),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_valid_token_cannot_join() {
    let tc = common::start(3, &[]).await;
    let apis = common::apis(&tc);
    let admin = common::api_client(&tc).await;
    for (what, token) in [
        (
            "a made-up token",
            format!("keel.{}.{}", "1".repeat(12), "2".repeat(48)),
        ),
        ("no token", String::new()),
    ] {
        let dir = tc.dir.path().join(format!("agent-{}", what.len()));
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(common::bin())
                .args(["agent", "--name", "intruder", "--masters"])
                .arg(apis.join(","))
                .arg("--data-dir")
                .arg(&dir)
                .arg("--ca-cert")
                .arg(common::shared_pki().join("ca.crt"))
                .env("KEEL_JOIN_TOKEN", &token)
                .output(),
        )
        .await
        .expect("the agent gives up")
        .unwrap();
        assert!(!out.status.success(), "{what}: the agent ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Unauthorized") || err.contains("--join-token"),
            "{what}: {err}"
        );
        assert!(!dir.join("pki").join("node.crt").exists());
    }
    assert!(
        admin
            .get::<keel_proto::api::Node>("", "intruder")
            .await
            .is_err(),
        "an agent without a valid token registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_is_plain_text_loud_and_still_needs_a_token() {
    // One member, --insecure, no PKI at all. (This process's clients dial
    // TLS, so readiness and requests here use explicit plain-text clients.)
    let dir = tempfile::tempdir().unwrap();
    let mut c = keel_chaos::ProcessCluster::plan(
        keel_chaos::Flavor::Keel,
        &common::bin(),
        dir.path(),
        1,
        None,
        &["--insecure".to_string()],
    )
    .unwrap();
    c.spawn_all().unwrap();
    let api = vec![c.members[0].api_addr()];
    let token_file = c.members[0].data_dir.join("pki").join("admin.token");
    let plain = ApiClient::try_new(&api, &Credentials::plaintext()).unwrap();
    common::poll(Duration::from_secs(30), "the insecure API", || async {
        plain
            .send(reqwest::Method::GET, "/readyz", None, None)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    // No anonymous access even in plain text.
    assert_eq!(api_code(plain.get_value("/api/v1/namespaces").await), 401);
    let token = std::fs::read_to_string(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let with_token =
        ApiClient::try_new(&api, &Credentials::plaintext().with_token(token.trim())).unwrap();
    common::poll(
        Duration::from_secs(20),
        "the admin token stored",
        || async { with_token.get_value("/api/v1/namespaces").await.ok() },
    )
    .await;
    let log = std::fs::read_to_string(c.log_path(0)).unwrap();
    assert!(
        log.contains("--insecure: this master speaks PLAIN TEXT"),
        "{log}"
    );
    assert!(!c.members[0].data_dir.join("pki").join("ca.key").exists());
}

/// A flood of made-up tokens gets 401s without becoming a flood of quorum
/// reads, and its audit lines are throttled (with a count of the suppressed
/// ones), so it cannot rotate the audit history away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_throttled_in_the_audit_log() {
    let tc = common::start(1, &[]).await;
    let apis = common::apis(&tc);
    let admin = client(&apis, None, Some(admin_token()));
    admin
        .post::<Value>(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "before-flood"}}),
        )
        .await
        .unwrap();
    let flood = 600;
    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    for chunk in (0..flood).collect::<Vec<_>>().chunks(50) {
        let reqs = chunk.iter().map(|i| {
            let c = client(&apis, None, Some(format!("keel.bad{i:05}.secret")));
            async move { api_code(c.get_value("/api/v1/namespaces").await) }
        });
        codes.extend(futures::future::join_all(reqs).await);
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(codes.iter().all(|c| *c == 401), "{codes:?}");
    let audit = |apis: Vec<String>| async move {
        let out = common::keel()
            .args(["audit", "tail", "--lines", "5000", "--json", "--server"])
            .arg(apis.join(","))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let lines = audit(apis.clone()).await;
    let written = lines.iter().filter(|e| e["code"] == 401).count();
    eprintln!("{flood} bad tokens in {secs:.2}s: {written} audit lines");
    // Burst 100, then 10 a second.
    assert!(
        (written as f64) <= 100.0 + 10.0 * secs + 2.0,
        "{written} 401 lines for {flood} requests in {secs:.1}s"
    );
    assert!(
        lines
            .iter()
            .any(|e| e["name"] == "before-flood" && e["code"] == 201),
        "the flood pushed earlier entries out"
    );
    // The count of what was suppressed is written with the next 401 let through.
    common::poll(Duration::from_secs(15), "a suppressed count", || {
        let apis = apis.clone();
        async move {
            let bad = client(&apis, None, Some("keel.after.secret".into()));
            let _ = bad.get_value("/api/v1/namespaces").await;
            audit(apis)
                .await
                .iter()
                .any(|e| e["user"].as_str().is_some_and(|u| u.contains("suppressed")))
                .then_some(())
        }
    })
    .await;
}

/// Node identity: a registered node's name cannot be taken by a new
/// machine, a node renews only its own certificate, and a revoked node's
/// certificate is refused on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_renew_and_revoke() {
    let tc = common::start(3, &[]).await;
    let apis = common::apis(&tc);
    let admin = client(&apis, None, Some(admin_token()));

    // A name that already has a registered Node is refused (nothing spent).
    admin
        .post::<Value>(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "taken"}}),
        )
        .await
        .unwrap();
    let token = common::bootstrap_token(&admin, "taken").await;
    let (csr, _) = pki::node_csr("taken").unwrap();
    let r = client(&apis, None, Some(token))
        .post::<Value>(
            "/keel/v1/bootstrap",
            &json!({"nodeName": "taken", "csr": csr}),
        )
        .await;
    assert_eq!(api_code(r), 409);

    // Renewal: a node gets a new certificate for itself, not for another.
    let n5 = node_identity(&admin, &apis, "n5").await;
    let (issued, expires) = pki::pem_validity(&n5.cert_pem).unwrap();
    assert_eq!(expires - issued, pki::NODE_VALIDITY_DAYS * 86_400);
    let as_n5 = client(&apis, Some(n5.clone()), None);
    let (csr, key_pem) = pki::node_csr("n5").unwrap();
    let r: Value = as_n5
        .post("/keel/v1/certificates/n5", &json!({ "csr": csr }))
        .await
        .expect("renewal");
    let renewed = Pair {
        cert_pem: r["certificate"].as_str().unwrap().to_string(),
        key_pem,
    };
    client(&apis, Some(renewed.clone()), None)
        .get_value("/api/v1/nodes")
        .await
        .expect("the renewed certificate works");
    let (csr, _) = pki::node_csr("n6").unwrap();
    let r = as_n5
        .post::<Value>("/keel/v1/certificates/n6", &json!({ "csr": csr }))
        .await;
    assert_eq!(api_code(r), 403, "n5 renewing n6's certificate");

    // Revocation: every master refuses n5's certificates, old and renewed.
    let out = common::keel()
        .args(["node", "revoke", "n5", "--server"])
        .arg(apis.join(","))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for api in &apis {
        for cert in [&n5, &renewed] {
            let one = client(std::slice::from_ref(api), Some(cert.clone()), None);
            let msg = common::poll(Duration::from_secs(10), "revocation applied", || async {
                match one.get_value("/api/v1/nodes").await {
                    Err(ClientError::Api(s)) if s.code == 401 => Some(s.message),
                    _ => None,
                }
            })
            .await;
            assert!(msg.contains("revoked"), "{msg}");
        }
    }
    // Other nodes are unaffected.
    let n6 = node_identity(&admin, &apis, "n6").await;
    client(&apis, Some(n6), None)
        .get_value("/api/v1/nodes")
        .await
        .expect("n6 is not revoked");
}
