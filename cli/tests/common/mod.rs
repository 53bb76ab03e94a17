//! Shared helpers for end-to-end tests that run real `keel` processes.
//! (They live in the `keel` package because Cargo only hands a binary's
//! path, `CARGO_BIN_EXE_keel`, to that package's own tests.)
#![allow(dead_code, unused_imports)]

pub mod etcdctl;

use std::path::PathBuf;
use std::time::Duration;

pub use keel_chaos::poll;
use keel_chaos::{Flavor, ProcessCluster};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
use keel_proto::pki::Credentials;
use tonic::transport::Channel;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// A process cluster in its own temp dir (removed on drop, after the members).
pub struct TestCluster {
    pub c: ProcessCluster,
    pub dir: tempfile::TempDir,
}

/// The PKI the clusters of this test process use by default (`keel pki
/// init`, once): clusters run with TLS on, and the helpers below that take
/// only an endpoint dial with its admin credentials (`shared_credentials`).
/// A cluster with a PKI of its own is dialed with its own
/// `ProcessCluster::credentials`.
pub fn shared_pki() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // Kept for the whole process (a static never drops), so it lives in
        // Cargo's scratch dir for tests, which `cargo clean` removes.
        let d = tempfile::Builder::new()
            .prefix("keel-test-pki")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir")
            .keep()
            .join("pki");
        let out = std::process::Command::new(bin())
            .args(["pki", "init", "--dir"])
            .arg(&d)
            .output()
            .expect("keel pki init");
        assert!(out.status.success(), "keel pki init: {out:?}");
        d
    })
    .clone()
}

/// The shared PKI's CA certificate (PEM).
pub fn ca_pem() -> String {
    std::fs::read_to_string(shared_pki().join("ca.crt")).expect("the shared PKI's CA")
}

/// The admin's credentials of the shared PKI (CA, certificate and token).
pub fn shared_credentials() -> Credentials {
    static CREDS: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();
    CREDS
        .get_or_init(|| {
            keel_proto::pki::PkiDir(shared_pki())
                .admin_credentials()
                .expect("the shared PKI's admin credentials")
        })
        .clone()
}

/// A `keel` command that dials with the admin's credentials from the shared
/// PKI (a config file of its own, so a developer's ~/.keel/config is never read).
/// A fresh token with the `view` role, created by the admin over `apis`.
pub fn view_token(apis: &[String]) -> String {
    let out = keel()
        .args([
            "token", "create", "--role", "view", "--ttl", "1h", "--server",
        ])
        .arg(apis.join(","))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn keel() -> std::process::Command {
    static CONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let pki = shared_pki();
        let token = std::fs::read_to_string(pki.join("admin.token")).expect("admin token");
        let y = format!(
            "certificateAuthority: {}\nclientCertificate: {}\nclientKey: {}\ntoken: {}\n",
            pki.join("ca.crt").display(),
            pki.join("admin.crt").display(),
            pki.join("admin.key").display(),
            token.trim()
        );
        let path = pki.join("client-config.yaml");
        std::fs::write(&path, y).expect("write client config");
        path
    });
    let mut c = std::process::Command::new(bin());
    c.env("KEEL_CONFIG", config);
    c
}

/// A process cluster planned in `dir` with the shared PKI; not started yet.
pub fn plan(dir: &std::path::Path, n: usize, extra: &[String]) -> ProcessCluster {
    let mut c = ProcessCluster::plan(Flavor::Keel, &bin(), dir, n, None, extra).expect("plan");
    c.use_pki(&shared_pki()).expect("shared PKI");
    c
}

/// Starts `n` Keel masters on free loopback ports and waits for a leader.
pub async fn start(n: usize, extra: &[&str]) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let mut c = plan(dir.path(), n, &extra);
    c.spawn_all().expect("start cluster");
    c.wait_ready(Duration::from_secs(30))
        .await
        .expect("cluster ready");
    control_plane_settled(&c.endpoints()[0]).await;
    TestCluster { c, dir }
}

/// Quorum lost: a 3-member cluster took `n` acknowledged writes (under
/// `/registry/pods/default/`), then every member was killed and the data
/// dirs of members 1 and 2 removed; member 0 is the only survivor.
pub async fn survivor_after_quorum_loss(n: usize) -> (TestCluster, Vec<String>) {
    let mut tc = start(3, &[]).await;
    let eps = tc.c.endpoints();
    let mut acked = Vec::new();
    for i in 0..n {
        let k = format!("/registry/pods/default/p{i:02}");
        put(&eps[i % 3], &k, "v").await.expect("put");
        acked.push(k);
    }
    for i in 0..3 {
        tc.c.kill(i);
    }
    for i in 1..3 {
        std::fs::remove_dir_all(&tc.c.members[i].data_dir).unwrap();
    }
    (tc, acked)
}

/// Member 0, forced into a new cluster, is its only member, holds exactly
/// `acked` under `/registry/pods/` and takes a write.
pub async fn assert_recovered(tc: &TestCluster, acked: &[String]) {
    use keel_proto::etcdserverpb::MemberListRequest;
    use keel_proto::etcdserverpb::cluster_client::ClusterClient;
    let ep = tc.c.endpoints()[0].clone();
    let keys = keys_with_prefix(&ep, "/registry/pods/", false)
        .await
        .unwrap();
    assert_eq!(keys, acked, "acknowledged writes lost in recovery");
    let members = ClusterClient::new(channel(&ep).await)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    put(&ep, "after", "recovery").await.unwrap();
}

/// A REST client for `apis` with a new token of `user` in `role`, made by
/// `admin` (and the admin's CA, so it trusts the same masters).
pub async fn token_client(
    admin: &keel_proto::client::ApiClient,
    admin_creds: &Credentials,
    apis: &[String],
    user: &str,
    role: &str,
) -> keel_proto::client::ApiClient {
    let token: serde_json::Value = admin
        .post(
            "/keel/v1/tokens",
            &serde_json::json!({"user": user, "role": role, "ttlSeconds": 600}),
        )
        .await
        .expect("a new token");
    let ca = admin_creds.tls.as_ref().expect("TLS").ca_pem.clone();
    let token = token["token"].as_str().expect("the token").to_string();
    keel_proto::client::ApiClient::new(apis, &Credentials::tls(ca, None).with_token(token))
}

/// Waits for the writes every Keel cluster makes at start (the default
/// namespaces, the leader's fencing token, the CA and admin token), so tests that compare revisions
/// see only their own writes.
pub async fn control_plane_settled(ep: &str) {
    poll(
        Duration::from_secs(30),
        "the control plane's startup writes",
        || async {
            let ns = keys_with_prefix(ep, "/registry/namespaces/", false)
                .await
                .ok()?;
            let fence = keys_with_prefix(ep, "/keel/leader", false).await.ok()?;
            // The CA and the admin token's hash (written by the masters at start).
            let ca = keys_with_prefix(ep, "/keel/pki/", false).await.ok()?;
            let tokens = keys_with_prefix(ep, "/keel/tokens/", false).await.ok()?;
            (ns.len() >= 3 && !fence.is_empty() && !ca.is_empty() && !tokens.is_empty())
                .then_some(())
        },
    )
    .await;
}

/// A gRPC channel to a member's client port, with the shared PKI's admin
/// certificate.
pub async fn channel(ep: &str) -> Channel {
    channel_with(&shared_credentials(), ep)
}

/// A gRPC channel to a member's client port, dialed with `creds`.
pub fn channel_with(creds: &Credentials, ep: &str) -> Channel {
    creds
        .endpoint(ep)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

pub async fn kv(ep: &str) -> KvClient<Channel> {
    KvClient::new(channel(ep).await)
}

pub async fn put(ep: &str, key: &str, value: &str) -> Result<i64, tonic::Status> {
    let r = kv(ep)
        .await
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.map(|h| h.revision).unwrap_or(0))
}

/// A get of one key; `None` if absent.
pub async fn get(ep: &str, key: &str, serializable: bool) -> Result<Option<String>, tonic::Status> {
    let r = kv(ep)
        .await
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// All keys under `prefix`, read from `ep`.
pub async fn keys_with_prefix(
    ep: &str,
    prefix: &str,
    serializable: bool,
) -> Result<Vec<String>, tonic::Status> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let r = kv(ep)
        .await
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            keys_only: true,
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect())
}

/// The REST API addresses of every member.
pub fn apis(tc: &TestCluster) -> Vec<String> {
    tc.c.members.iter().map(|m| m.api_addr()).collect()
}

/// A single-use bootstrap token for the agent of node `node`.
pub async fn bootstrap_token(client: &keel_proto::client::ApiClient, node: &str) -> String {
    keel_chaos::bootstrap_token(client, node, 600)
        .await
        .expect("create a bootstrap token")
}

/// A REST client over every member's API, once the API serves (the default
/// namespace exists).
pub async fn api_client(tc: &TestCluster) -> keel_proto::client::ApiClient {
    let client = keel_proto::client::ApiClient::new(&apis(tc), tc.c.credentials());
    poll(Duration::from_secs(20), "the default namespace", || async {
        client
            .get::<keel_proto::api::Namespace>("", "default")
            .await
            .ok()
    })
    .await;
    client
}

/// Waits (20 s at most) until every member of `eps` hashes its key space
/// the same at revision `rev` (etcd's HashKV); returns the hashes.
pub async fn equal_hash_kv(eps: &[String], rev: i64) -> Vec<u32> {
    use keel_proto::etcdserverpb::HashKvRequest;
    use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    poll(Duration::from_secs(20), "equal HashKV", || async {
        let mut hs = Vec::new();
        for ep in eps {
            let mut m = MaintenanceClient::new(channel(ep).await);
            hs.push(
                m.hash_kv(HashKvRequest { revision: rev })
                    .await
                    .ok()?
                    .into_inner()
                    .hash,
            );
        }
        hs.windows(2).all(|w| w[0] == w[1]).then_some(hs)
    })
    .await
}
