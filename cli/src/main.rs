//! `keel`: the single binary. Masters (`keel master`), a local HA cluster
//! (`keel up`), cluster administration (`keel cluster ...`), kubectl-like
//! commands (`keel apply/get/describe/delete/scale/rollout`) and benchmarks
//! (`keel bench ...`).

mod admin;
mod agent;
mod backup;
mod bench;
mod chaos;
mod client;
mod cluster;
mod config;
mod kubeconfig;
mod kubectl;
mod lb;
mod logs;
mod master;
mod pki;
mod up;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc malloc: the write path allocates per request
/// (gRPC frames, log entries, sled nodes) and glibc's allocator was a fifth
/// of a master's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a container orchestrator with its own Raft store"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Async worker threads of this process (default: one per core).
    #[arg(long, global = true, env = "KEEL_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// tokio's LIFO slot: a task woken by a running task runs next on that
    /// worker. Default: off for `keel master`, on for every other command.
    /// Off, a master's answers to one applied batch leave in one write per
    /// connection instead of one each (BENCHMARKS.md, issue 13).
    #[arg(long, global = true, env = "KEEL_LIFO_SLOT")]
    lifo_slot: Option<bool>,
    #[command(flatten)]
    auth: config::Auth,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Turns tokio's LIFO slot off when `off`. Without it, a task woken by the
/// running one is queued behind the tasks already woken instead of running
/// next. For a master that matters where one applied batch wakes the
/// request tasks of many writes: with the slot, each task's wake-up of its
/// HTTP/2 connection ran that connection at once, so every answer cost a
/// `writev` of its own (1.1 per put at 256 clients); without it, the
/// connection runs after all of them and sends what is ready in one.
/// The option is tokio's unstable API, hence `tokio_unstable` in
/// `.cargo/config.toml`; a build without that cfg keeps the slot and says so.
fn without_lifo_slot(rt: &mut tokio::runtime::Builder, off: bool) {
    if !off {
        return;
    }
    #[cfg(tokio_unstable)]
    rt.disable_lifo_slot();
    #[cfg(not(tokio_unstable))]
    {
        let _ = rt;
        tracing::warn!(
            "built without --cfg tokio_unstable (.cargo/config.toml): tokio's LIFO slot stays on"
        );
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one master (a member of the Raft store).
    Master(Box<master::MasterArgs>),
    /// Run one node agent: registers the node and runs the pods bound to it.
    Agent(agent::AgentArgs),
    /// Start a local HA cluster as child processes; Ctrl-C stops it.
    Up(up::UpArgs),
    /// A local load balancer for the masters' REST API (kubectl's one
    /// server URL): fails requests over and resumes watches on a live master.
    Lb(lb::LbArgs),
    /// Inspect and change cluster membership.
    Cluster(cluster::ClusterArgs),
    /// The cluster PKI: create a CA and admin credentials, issue user certificates.
    Pki(pki::PkiArgs),
    /// Backups: save from a running cluster, verify and inspect offline.
    Backup(backup::BackupArgs),
    /// Create or update the objects of a manifest (file, directory or -).
    Apply {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(flatten)]
        a: kubectl::apply::ApplyArgs,
    },
    /// List objects or show one (`keel get pods`, `keel get deploy web -o yaml`).
    Get {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(flatten)]
        a: kubectl::get::GetArgs,
    },
    /// Show an object in detail, with its events.
    Describe {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(flatten)]
        a: kubectl::get::DescribeArgs,
    },
    /// Delete objects (dependents follow through garbage collection).
    Delete {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(flatten)]
        a: kubectl::apply::DeleteArgs,
    },
    /// Set the replicas of a Deployment or ReplicaSet.
    Scale {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(flatten)]
        a: kubectl::apply::ScaleArgs,
    },
    /// Follow, list, undo, pause and resume Deployment rollouts.
    Rollout {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(subcommand)]
        cmd: kubectl::rollout::RolloutCmd,
    },
    /// Print (or follow) a container's log, fetched from its agent through the masters.
    Logs {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(flatten)]
        a: logs::LogsArgs,
    },
    /// Bearer tokens: create (shown once), list, revoke.
    Token {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(subcommand)]
        cmd: admin::TokenCmd,
    },
    /// Node identities: revoke a node's certificates (refused at once on
    /// every master; the node must join again with a new bootstrap token).
    Node {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(subcommand)]
        cmd: admin::NodeCmd,
    },
    /// The masters' audit logs of mutating and denied requests.
    Audit {
        #[command(flatten)]
        t: kubectl::Target,
        #[command(subcommand)]
        cmd: admin::AuditCmd,
    },
    /// Print a kubeconfig (server, cluster CA, token) for kubectl.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Chaos testing: inject faults into a cluster and check nothing was lost.
    #[command(subcommand)]
    Chaos(chaos::ChaosCmd),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

impl Cmd {
    /// The API target of the kubectl-like and admin commands.
    fn target_mut(&mut self) -> Option<&mut kubectl::Target> {
        match self {
            Cmd::Apply { t, .. }
            | Cmd::Get { t, .. }
            | Cmd::Describe { t, .. }
            | Cmd::Delete { t, .. }
            | Cmd::Scale { t, .. }
            | Cmd::Rollout { t, .. }
            | Cmd::Logs { t, .. }
            | Cmd::Token { t, .. }
            | Cmd::Audit { t, .. }
            | Cmd::Node { t, .. } => Some(t),
            _ => None,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`keel get pods | head`) instead of panicking. Never
    // for the long-running servers: with SIGPIPE's default disposition a
    // write to a socket its peer just closed (a peer master killed, a
    // proxy cut) kills the whole process without a word.
    // Nor for commands that start member processes of their own and talk
    // to them until they kill them (`backup drill` died of it, silently,
    // once in a CI run).
    let serves = match &cli.cmd {
        Cmd::Master(_)
        | Cmd::Agent(_)
        | Cmd::Up(_)
        | Cmd::Lb(_)
        | Cmd::Chaos(_)
        | Cmd::Bench(_) => true,
        Cmd::Backup(b) => b.runs_a_cluster(),
        _ => false,
    };
    if !serves {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logs(cli.log_format);
    // Commands that dial a running cluster use the config's credentials;
    // servers, harnesses and benchmarks that start their own cluster use
    // their own (a stale ~/.keel/config must not break them).
    let dials_a_running_cluster = match &cli.cmd {
        Cmd::Pki(_) | Cmd::Master(_) | Cmd::Agent(_) | Cmd::Up(_) | Cmd::Lb(_) | Cmd::Chaos(_) => {
            false
        }
        Cmd::Bench(b) => b.dials_a_running_cluster(),
        Cmd::Backup(b) => b.dials_a_running_cluster(),
        _ => true,
    };
    let conn = if dials_a_running_cluster {
        config::load(&cli.auth)?
    } else {
        config::Connection::default()
    };
    let mut cmd = cli.cmd;
    if let Some(t) = cmd.target_mut() {
        t.conn = conn.clone();
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads {
        rt.worker_threads(n.max(1));
    }
    let lifo_slot = cli.lifo_slot.unwrap_or(!matches!(cmd, Cmd::Master(_)));
    without_lifo_slot(&mut rt, !lifo_slot);
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        match cmd {
            Cmd::Master(a) => master::run(*a).await,
            Cmd::Agent(a) => agent::run(a).await,
            Cmd::Up(a) => up::run(a).await,
            Cmd::Lb(a) => lb::run(a).await,
            Cmd::Cluster(a) => cluster::run(a, &conn).await,
            Cmd::Bench(b) => bench::run(b, &conn.creds).await,
            Cmd::Chaos(c) => chaos::run(c).await,
            Cmd::Backup(a) => backup::run(a, &conn).await,
            Cmd::Pki(a) => pki::run(a),
            Cmd::Kubeconfig(a) => kubeconfig::run(a, &conn),
            Cmd::Apply { t, a } => kubectl::apply::apply(&t, a).await,
            Cmd::Get { t, a } => kubectl::get::get(&t, a).await,
            Cmd::Describe { t, a } => kubectl::get::describe(&t, a).await,
            Cmd::Delete { t, a } => kubectl::apply::delete(&t, a).await,
            Cmd::Scale { t, a } => kubectl::apply::scale(&t, a).await,
            Cmd::Rollout { t, cmd } => kubectl::rollout::run(&t, cmd).await,
            Cmd::Logs { t, a } => logs::run(&t, a).await,
            Cmd::Token { t, cmd } => admin::token(&t, cmd).await,
            Cmd::Audit { t, cmd } => admin::audit(&t, cmd).await,
            Cmd::Node { t, cmd } => admin::node(&t, cmd).await,
        }
    })
}
