//! `keel master`: runs one member of the store, its REST API and (while it
//! leads) the scheduler and controllers, until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use std::sync::Arc;

use keel_controlplane::Registry;
use keel_controlplane::api::ApiConfig;
use keel_controlplane::auth::audit::AuditLog;
use keel_controlplane::auth::credentials;
use keel_controlplane::leader::ControllerConfig;
use keel_store::{NodeConfig, parse_initial_cluster};

#[derive(Args, Debug, Clone)]
pub struct MasterArgs {
    /// Unique member name; the member id derives from it, so it never changes.
    #[arg(long, env = "KEEL_NAME")]
    pub name: String,
    /// Where the Raft log (redb), key space (sled) and snapshots live.
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address for Raft traffic from other masters.
    #[arg(long, env = "KEEL_LISTEN_PEER", default_value = "127.0.0.1:7101")]
    pub listen_peer: String,
    /// Address for clients (etcd v3 gRPC API).
    #[arg(long, env = "KEEL_LISTEN_CLIENT", default_value = "127.0.0.1:2479")]
    pub listen_client: String,
    /// Address of the Kubernetes-shaped REST API.
    #[arg(long, env = "KEEL_LISTEN_API", default_value = "127.0.0.1:6443")]
    pub listen_api: String,
    /// A node whose Lease is not renewed for this long is marked NotReady.
    #[arg(long, env = "KEEL_NODE_MONITOR_GRACE", default_value = "10s", value_parser = parse_interval)]
    pub node_monitor_grace: Duration,
    /// The pods of a node NotReady for this long are deleted and replaced elsewhere.
    #[arg(long, env = "KEEL_POD_EVICTION_TIMEOUT", default_value = "20s", value_parser = parse_interval)]
    pub pod_eviction_timeout: Duration,
    /// Peer address other masters use, if not the listen address.
    #[arg(long, env = "KEEL_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Client address clients use, if not the listen address.
    #[arg(long, env = "KEEL_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Bootstrap a new cluster: name=peer-address of every initial member.
    #[arg(long, env = "KEEL_INITIAL_CLUSTER", conflicts_with = "join")]
    pub initial_cluster: Option<String>,
    /// Join a running cluster through the peer address of one of its members.
    #[arg(long, env = "KEEL_JOIN")]
    pub join: Option<String>,
    /// Failure domain of this master.
    #[arg(long, env = "KEEL_ZONE", default_value = "")]
    pub zone: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "KEEL_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds. A follower calls an
    /// election once a silent leader's lease (openraft: the maximum) and
    /// then its own timeout (random, minimum to maximum) have passed since
    /// the last heartbeat, so failover takes the maximum plus 1-2x the
    /// minimum: 600-700 ms with the defaults (BENCHMARKS.md, fifteenth round).
    #[arg(long, env = "KEEL_ELECTION_MIN_MS", default_value_t = 250)]
    pub election_min_ms: u64,
    /// Maximum election timeout in milliseconds.
    #[arg(long, env = "KEEL_ELECTION_MAX_MS", default_value_t = 350)]
    pub election_max_ms: u64,
    /// Take a Raft snapshot every this many log entries (a snapshot dumps
    /// the whole key space; a member that rejoins empty catches up from the
    /// latest one, so fewer snapshots mean longer catch-ups).
    #[arg(long, env = "KEEL_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    #[arg(long, env = "KEEL_KEEP_BEHIND_SNAPSHOT", default_value_t = 1_000)]
    pub keep_behind_snapshot: u64,
    /// Keep this many revisions of history; older ones are compacted by the
    /// leader (0: keep everything, as etcd without auto-compaction).
    #[arg(long, env = "KEEL_AUTO_COMPACT_REVISIONS", default_value_t = 10_000)]
    pub auto_compact_revisions: i64,
    /// While leader, write a verified backup here every --backup-interval.
    #[arg(long, env = "KEEL_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Time between scheduled backups: a number with s, m or h (`30m`, `1h`).
    #[arg(long, env = "KEEL_BACKUP_INTERVAL", default_value = "1h", value_parser = parse_interval)]
    pub backup_interval: Duration,
    /// How many scheduled backups to keep.
    #[arg(long, env = "KEEL_BACKUP_RETAIN", default_value_t = 24)]
    pub backup_retain: usize,
    /// Seal scheduled backups with this key (`keel backup keygen
    /// --encryption`): they hold the cluster CA's key and token hashes.
    #[arg(long, env = "KEEL_BACKUP_KEY_FILE")]
    pub backup_key_file: Option<PathBuf>,
    /// After quorum loss: restart this survivor as a single-member cluster
    /// with all its data (see `keel cluster recover`). Refuses to run twice.
    #[arg(long, env = "KEEL_FORCE_NEW_CLUSTER")]
    pub force_new_cluster: bool,
    /// DEBUG ONLY, UNSAFE: serve linearizable reads locally without
    /// read-index (lets the chaos checker prove it catches stale reads).
    #[arg(long, env = "KEEL_UNSAFE_LOCAL_READS", hide = true)]
    pub unsafe_local_reads: bool,
    /// BENCHMARK ONLY: the leader fsyncs its log before replicating (the
    /// write path before the pipelined log), to compare the two.
    #[arg(long, env = "KEEL_SEQUENTIAL_LOG_APPEND", hide = true)]
    pub sequential_log_append: bool,
    /// BENCHMARK ONLY: replicate over another wire than the framed stream
    /// (`grpc`: a gRPC stream over HTTP/2; `unary`: one AppendEntries call
    /// at a time), to compare them.
    #[arg(
        long,
        env = "KEEL_REPLICATION_WIRE",
        hide = true,
        default_value = "framed"
    )]
    pub replication_wire: keel_store::config::ReplicationWire,
    /// BENCHMARK ONLY: forward leader requests over another wire than the
    /// framed connection (`grpc`: a gRPC stream over HTTP/2), to compare them.
    #[arg(long, env = "KEEL_FORWARD_WIRE", hide = true, default_value = "framed")]
    pub forward_wire: keel_store::config::ForwardWire,
    /// TEST ONLY: dial peer NAME at ADDR instead of its membership address
    /// (`NAME=ADDR`, repeatable; env: comma-separated). The chaos harness
    /// puts a TCP proxy per link here so it can partition members.
    #[arg(long, env = "KEEL_PEER_OVERRIDE", hide = true, value_delimiter = ',')]
    pub peer_override: Vec<String>,
    /// TEST ONLY (a failpoint): applying a put of exactly this key fails as
    /// a storage error would, to show that such a member exits.
    #[arg(long, env = "KEEL_FAILPOINT_APPLY_ERROR_KEY", hide = true)]
    pub failpoint_apply_error_key: Option<String>,
    /// TEST ONLY (a failpoint): abort the process at this step of a
    /// multi-step change (`keel_store::failpoint::POINTS`), as a SIGKILL
    /// there would, to show that each step is crash-safe.
    #[arg(long, env = "KEEL_FAILPOINT_CRASH_AT", hide = true)]
    pub failpoint_crash_at: Option<String>,
    /// The cluster CA (ca.crt, ca.key, from `keel pki init`) and this
    /// master's certificate; default: DATA_DIR/pki. A single-member
    /// bootstrap that finds no CA creates one.
    #[arg(long, env = "KEEL_PKI_DIR")]
    pub pki_dir: Option<PathBuf>,
    /// TESTS ONLY, UNSAFE: plain text on every port (no TLS, no client
    /// certificates). Bearer tokens are still required on the REST API.
    #[arg(long, env = "KEEL_INSECURE")]
    pub insecure: bool,
    /// At most this many concurrent REST watches per user on this master
    /// (429 beyond it).
    #[arg(long, env = "KEEL_MAX_WATCHES_PER_USER", default_value_t = keel_controlplane::api::MAX_WATCHES_PER_USER)]
    pub max_watches_per_user: usize,
    /// Where this master writes its audit log (default: DATA_DIR/audit).
    #[arg(long, env = "KEEL_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Rotate the audit log above this many bytes.
    #[arg(long, env = "KEEL_AUDIT_MAX_BYTES", default_value_t = 100 << 20)]
    pub audit_max_bytes: u64,
    /// Rotated audit logs kept.
    #[arg(long, env = "KEEL_AUDIT_KEEP", default_value_t = 5)]
    pub audit_keep: usize,
}

pub async fn run(a: MasterArgs) -> anyhow::Result<()> {
    let mut cfg = NodeConfig::new(
        &a.name,
        a.data_dir.clone(),
        &a.listen_peer,
        &a.listen_client,
    );
    cfg.advertise_peer = a.advertise_peer;
    cfg.advertise_client = a.advertise_client;
    cfg.initial_cluster = match &a.initial_cluster {
        Some(s) => parse_initial_cluster(s).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    cfg.join = a.join;
    cfg.zone = a.zone;
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms);
    cfg.election_min = Duration::from_millis(a.election_min_ms);
    cfg.election_max = Duration::from_millis(a.election_max_ms);
    cfg.snapshot_every = a.snapshot_every;
    cfg.keep_behind_snapshot = a.keep_behind_snapshot;
    cfg.auto_compact_revisions = a.auto_compact_revisions;
    cfg.backup_dir = a.backup_dir;
    cfg.backup_interval = a.backup_interval;
    cfg.backup_retain = a.backup_retain;
    if let Some(k) = &a.backup_key_file {
        cfg.backup_seal = Some(keel_store::sealed::Secret::Key(
            crate::backup::read_hex32(k).context("--backup-key-file")?,
        ));
    }
    if cfg.backup_dir.is_some() && cfg.backup_seal.is_none() {
        tracing::warn!(
            "scheduled backups are not encrypted: they hold the cluster CA's key; \
             pass --backup-key-file to seal them"
        );
    }
    cfg.unsafe_local_reads = a.unsafe_local_reads;
    cfg.sequential_log_append = a.sequential_log_append;
    cfg.replication_wire = a.replication_wire;
    cfg.forward_wire = a.forward_wire;
    cfg.failpoint_apply_error_key = a
        .failpoint_apply_error_key
        .as_ref()
        .map(|k| k.as_bytes().to_vec());
    for o in &a.peer_override {
        let (name, addr) = o
            .split_once('=')
            .with_context(|| format!("--peer-override {o:?} is not NAME=ADDR"))?;
        cfg.peer_overrides
            .insert(name.to_string(), addr.to_string());
    }
    if !cfg.peer_overrides.is_empty() {
        tracing::warn!(overrides = ?cfg.peer_overrides, "--peer-override is on (test only)");
    }
    if cfg.unsafe_local_reads {
        tracing::warn!(
            "--unsafe-local-reads is on: linearizable reads may be stale. Never use this outside chaos tests."
        );
    }
    if let Some(point) = &a.failpoint_crash_at {
        keel_store::failpoint::arm(point).map_err(anyhow::Error::msg)?;
    }
    if !a.force_new_cluster {
        keel_store::recover::check_not_interrupted(&a.data_dir)?;
    }
    if a.force_new_cluster {
        let kept = keel_store::recover::force_new_cluster(&a.data_dir)
            .await
            .context("--force-new-cluster")?;
        tracing::warn!(
            old_data = %kept.display(),
            "forced a new single-member cluster; add members back one by one with --join"
        );
        cfg.initial_cluster = vec![(a.name.clone(), cfg.peer_addr())];
        cfg.join = None;
    }
    let pki_dir = a.pki_dir.clone().unwrap_or_else(|| a.data_dir.join("pki"));
    let (pki, admin_token) = if a.insecure {
        for _ in 0..3 {
            tracing::warn!(
                "!!! --insecure: this master speaks PLAIN TEXT on its peer, client and API ports; \
                 anyone who can reach them can read and write the cluster. Tests only. !!!"
            );
        }
        // Still no anonymous access: the API wants the admin token.
        let t = crate::pki::admin_token(&pki_dir, true)?;
        tracing::warn!(token_file = %pki_dir.join(keel_proto::pki::ADMIN_TOKEN).display(), "--insecure: admin token");
        (None, t)
    } else {
        let single = cfg.initial_cluster.len() == 1 && cfg.join.is_none();
        let addrs = [
            cfg.peer_addr(),
            cfg.client_addr(),
            a.listen_api.clone(),
            cfg.listen_peer.clone(),
            cfg.listen_client.clone(),
        ];
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let own = a.data_dir.join("tls");
        let p = crate::pki::master(&pki_dir, &own, &a.name, &addrs, single)
            .with_context(|| format!("the PKI in {}", pki_dir.display()))?;
        cfg.tls = Some(p.bundle.clone());
        let t = p.admin_token.clone();
        (Some(p), t)
    };
    let node = keel_store::start(cfg)
        .await
        .with_context(|| format!("starting master {}", a.name))?;
    let api = tokio::net::TcpListener::bind(&a.listen_api)
        .await
        .with_context(|| format!("binding the API address {}", a.listen_api))?;
    let registry = Registry::new(node.clone());
    let audit_dir = a
        .audit_dir
        .clone()
        .unwrap_or_else(|| a.data_dir.join("audit"));
    let audit = AuditLog::open(&audit_dir, a.audit_max_bytes, a.audit_keep)
        .with_context(|| format!("opening the audit log in {}", audit_dir.display()))?;
    let api_cfg = ApiConfig {
        tls: match &pki {
            Some(p) => Some(Arc::new(keel_proto::pki::server_config(
                &p.ca.cert_pem,
                p.bundle.me.as_ref().context("master certificate")?,
                false,
            )?)),
            None => None,
        },
        ca: pki.as_ref().map(|p| Arc::new(p.ca.clone())),
        audit: Some(Arc::new(audit)),
        // What this master dials the agents' log endpoints with.
        agent_credentials: match &pki {
            Some(p) => keel_proto::pki::Credentials {
                tls: Some(p.bundle.clone()),
                token: None,
            },
            None => keel_proto::pki::Credentials::plaintext(),
        },
        max_watches_per_user: a.max_watches_per_user,
    };
    tracing::info!(addr = %a.listen_api, https = api_cfg.tls.is_some(), "serving the REST API");
    tokio::spawn(keel_controlplane::api::serve(
        api,
        registry.clone(),
        api_cfg,
        node.shutdown_signal(),
    ));
    // The CA and the admin token's hash live in the store (so backups carry
    // them); the first master to write them wins, the rest find them there.
    let ca = pki.map(|p| p.ca);
    {
        let reg = registry.clone();
        tokio::spawn(async move {
            loop {
                let r = async {
                    if let Some(ca) = &ca {
                        credentials::ensure_ca(&reg, ca).await?;
                    }
                    if let Some(t) = &admin_token {
                        credentials::ensure_token(&reg, t).await?;
                    }
                    Ok::<_, keel_controlplane::ApiError>(())
                }
                .await;
                match r {
                    Ok(()) => break,
                    Err(e) => tracing::debug!(error = %e, "credentials not stored yet"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let controllers = ControllerConfig {
        node_monitor_grace: a.node_monitor_grace,
        pod_eviction_timeout: a.pod_eviction_timeout,
        ..ControllerConfig::default()
    };
    // Every cluster has the default namespaces; creating them is a
    // conditional write, so whichever master gets there first wins.
    let defaults = registry.clone();
    tokio::spawn(async move {
        while let Err(e) = defaults.ensure_namespaces().await {
            tracing::debug!(error = %e, "default namespaces not created yet");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    keel_controlplane::leader::spawn(registry, controllers);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        why = node.raft_stopped() => {
            // No zombies: a member whose Raft core stopped can neither
            // commit nor apply; exit non-zero at once so a supervisor
            // (systemd's Restart=on-failure, see docs/) restarts it.
            tracing::error!(reason = %why, "FATAL: the Raft core stopped; exiting so a supervisor restarts this member");
            eprintln!("keel master {}: FATAL: {why}; exiting", a.name);
            std::process::exit(70);
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Parses `90s`, `30m`, `1h` (or plain seconds) into a positive duration.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_interval("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_interval("45"), Ok(Duration::from_secs(45)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("1d").is_err());
        assert!(parse_interval("h").is_err());
    }
}
