//! Differential testing against real etcd (`keel chaos diff`): a seeded
//! generator of etcd v3 request sequences sends every request to a Keel
//! cluster and to a real 3-member etcd, and the answers are compared field
//! by field after normalising only what must differ (see `normalize`). The
//! first difference ends the run with the seed, the request's index, the
//! request and both answers.

pub mod avoid;
pub mod exec;
pub mod generator;
pub mod normalize;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    WatchCreateRequest, WatchRequest, request_op, watch_request,
};
use keel_proto::mvccpb::event::EventType;
use tonic::transport::Channel;

use crate::cluster::{ClusterError, Flavor, ProcessCluster};
use exec::{Answer, Target};
use generator::{GenOptions, Generator, Step};

/// How long a watch waits for events nobody may send.
const WATCH_QUIET: Duration = Duration::from_millis(150);
/// How long a watch that differs waits for more events at a time.
const WATCH_STEP: Duration = Duration::from_millis(100);
/// How long a watch waits in all before its events are compared.
const WATCH_MAX: Duration = Duration::from_secs(5);

/// How to run a differential test.
#[derive(Debug, Clone)]
pub struct DiffConfig {
    /// The `keel` binary.
    pub keel_bin: PathBuf,
    /// The `etcd` binary (3.4).
    pub etcd_bin: PathBuf,
    /// Where both clusters keep their data and logs.
    pub dir: PathBuf,
    pub seed: u64,
    /// Steps to generate (a watch step sends several requests).
    pub steps: u64,
    pub options: GenOptions,
    /// Timeout of each request.
    pub timeout: Duration,
}

/// Errors of a differential run.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot set up the run: {0}")]
    Setup(String),
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
}

/// The first difference of a run.
#[derive(Debug)]
pub struct Mismatch {
    pub seed: u64,
    pub steps: u64,
    pub flags: String,
    /// `n` for the n-th step, `n.k` for the k-th write inside watch step `n`.
    pub index: String,
    pub request: String,
    pub etcd: String,
    pub keel: String,
    pub first: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd and Keel differ at request {} of seed {} (replay: keel chaos diff --seed {} --requests {}{})\n\
             request: {}\n\
             first difference {}\n\
             === etcd answered ===\n{}\n\
             === keel answered ===\n{}",
            self.index,
            self.seed,
            self.seed,
            self.steps,
            self.flags,
            self.request,
            self.first,
            self.etcd,
            self.keel
        )
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct DiffReport {
    pub seed: u64,
    pub steps: u64,
    /// Requests sent to each cluster (watch steps send several).
    pub requests: u64,
    /// Steps by kind, and how many of them each cluster refused.
    pub by_kind: BTreeMap<&'static str, (u64, u64)>,
    pub revision: i64,
    pub elapsed: Duration,
}

/// A channel to a member of `c` with that cluster's credentials (plain
/// text for etcd, the admin certificate for Keel).
fn channel(c: &ProcessCluster, addr: &str) -> Result<Channel, DiffError> {
    Ok(c.credentials()
        .endpoint(addr)
        .map_err(|e| DiffError::Setup(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// The index of the member every member names as leader, once they agree.
async fn leader_of(members: &[Channel], max: Duration) -> Result<usize, DiffError> {
    let deadline = Instant::now() + max;
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for ch in members {
            let mut m = MaintenanceClient::new(ch.clone());
            match tokio::time::timeout(Duration::from_secs(1), m.status(StatusRequest {})).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    ids.push(r.header.map(|h| h.member_id).unwrap_or(0));
                    leaders.push(r.leader);
                }
                _ => break,
            }
        }
        if leaders.len() == members.len()
            && leaders[0] != 0
            && leaders.iter().all(|l| *l == leaders[0])
            && let Some(i) = ids.iter().position(|id| *id == leaders[0])
        {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            return Err(DiffError::Setup(format!(
                "no agreed leader within {max:?} (leaders {leaders:?}, ids {ids:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until Keel's bootstrap writes (CA, admin token, namespaces,
/// leader fence) stop, and returns the settled revision.
async fn settled_revision(kv: &mut KvClient<Channel>, max: Duration) -> Result<i64, DiffError> {
    let deadline = Instant::now() + max;
    let (mut last, mut since) = (-1, Instant::now());
    loop {
        let r = kv
            .range(RangeRequest {
                key: b"/".to_vec(),
                range_end: b"0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| DiffError::Setup(format!("reading Keel's revision: {e}")))?
            .into_inner();
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        if rev != last {
            (last, since) = (rev, Instant::now());
        } else if r.count >= 3 && since.elapsed() >= Duration::from_secs(2) {
            return Ok(rev);
        }
        if Instant::now() >= deadline {
            return Err(DiffError::Setup(format!(
                "Keel's revision did not settle within {max:?} (last {last})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replays Keel's whole history (its bootstrap writes) into the empty etcd,
/// one Txn per revision, so both stores start with the same keys, versions
/// and revisions. Fails when the history has a revision without events or
/// a key with a lease (neither can be replayed exactly).
async fn mirror(keel: &Channel, etcd: &Channel, upto: i64) -> Result<(), DiffError> {
    let setup = |what: &str, e: tonic::Status| DiffError::Setup(format!("{what}: {e}"));
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    futures::SinkExt::send(
        &mut tx,
        WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: 1,
                    ..Default::default()
                },
            )),
        },
    )
    .await
    .map_err(|e| DiffError::Setup(e.to_string()))?;
    let mut s = WatchClient::new(keel.clone())
        .watch(rx)
        .await
        .map_err(|e| setup("watching Keel's history", e))?
        .into_inner();
    let mut by_rev: BTreeMap<i64, Vec<RequestOp>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while by_rev.keys().next_back().copied().unwrap_or(0) < upto {
        let r = tokio::time::timeout_at(deadline.into(), s.next())
            .await
            .map_err(|_| DiffError::Setup("Keel's history did not arrive".into()))?
            .ok_or_else(|| DiffError::Setup("Keel's watch ended".into()))?
            .map_err(|e| setup("watching Keel's history", e))?;
        for e in r.events {
            let kv = e.kv.unwrap_or_default();
            if kv.lease != 0 {
                return Err(DiffError::Setup(format!(
                    "Keel's bootstrap wrote {:?} with a lease",
                    String::from_utf8_lossy(&kv.key)
                )));
            }
            let op = if e.r#type == EventType::Delete as i32 {
                request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: kv.key,
                    ..Default::default()
                })
            } else {
                request_op::Request::RequestPut(PutRequest {
                    key: kv.key,
                    value: kv.value,
                    ..Default::default()
                })
            };
            by_rev
                .entry(kv.mod_revision)
                .or_default()
                .push(RequestOp { request: Some(op) });
        }
    }
    drop(tx);
    let mut kv = KvClient::new(etcd.clone());
    for (rev, ops) in by_rev {
        if rev > upto {
            break;
        }
        let r = kv
            .txn(TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await
            .map_err(|e| setup("replaying Keel's history into etcd", e))?
            .into_inner();
        let got = r.header.map(|h| h.revision).unwrap_or(0);
        if got != rev {
            return Err(DiffError::Setup(format!(
                "replaying Keel's revision {rev} made etcd's revision {got}: \
                 Keel's history has revisions without events"
            )));
        }
    }
    Ok(())
}

/// Flags of the replay command for the shapes a run avoided.
fn replay_flags(g: &GenOptions) -> String {
    if g.avoid.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = g.avoid.iter().map(|a| a.name()).collect();
    format!(" --avoid {}", names.join(","))
}

/// Runs the differential test: starts a 3-member etcd and a 3-member Keel
/// under `cfg.dir`, aligns their histories, and sends both the generated
/// sequence. Stops at the first difference.
pub async fn run(cfg: &DiffConfig) -> Result<DiffReport, DiffError> {
    let started = Instant::now();
    if std::fs::read_dir(&cfg.dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(DiffError::Setup(format!(
            "{} is not empty: both clusters must start empty",
            cfg.dir.display()
        )));
    }
    let mut etcd = ProcessCluster::plan(
        Flavor::Etcd,
        &cfg.etcd_bin,
        &cfg.dir.join("etcd"),
        3,
        None,
        &[],
    )?;
    etcd.spawn_all()?;
    let keel = ProcessCluster::start(
        Flavor::Keel,
        &cfg.keel_bin,
        &cfg.dir.join("keel"),
        3,
        None,
        &["--auto-compact-revisions".to_string(), "0".to_string()],
    )?;
    let etcd_members = etcd
        .endpoints()
        .iter()
        .map(|a| channel(&etcd, a))
        .collect::<Result<Vec<_>, _>>()?;
    let keel_members = keel
        .endpoints()
        .iter()
        .map(|a| channel(&keel, a))
        .collect::<Result<Vec<_>, _>>()?;
    let etcd_leader = leader_of(&etcd_members, Duration::from_secs(30)).await?;
    keel.wait_ready(Duration::from_secs(30)).await?;
    let keel_leader = leader_of(&keel_members, Duration::from_secs(30)).await?;
    let start_rev = settled_revision(
        &mut KvClient::new(keel_members[keel_leader].clone()),
        Duration::from_secs(30),
    )
    .await?;
    mirror(
        &keel_members[keel_leader],
        &etcd_members[etcd_leader],
        start_rev,
    )
    .await?;
    tracing::info!(start_rev, etcd_leader, keel_leader, "both clusters ready");

    let mut e = Target {
        name: "etcd",
        members: etcd_members,
        leader: etcd_leader,
        autos: Vec::new(),
        timeout: cfg.timeout,
    };
    let mut k = Target {
        name: "keel",
        members: keel_members,
        leader: keel_leader,
        autos: Vec::new(),
        timeout: cfg.timeout,
    };
    let mut run = Run {
        cfg,
        g: Generator::new(cfg.seed, cfg.options.clone(), start_rev),
        requests: 0,
        by_kind: BTreeMap::new(),
        rev: start_rev,
    };
    // The first comparison: the whole mirrored store.
    let all = Step::Range(RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    });
    run.step(&mut e, &mut k, &all, "0", 0).await?;
    for i in 1..=cfg.steps {
        let step = run.g.next_step();
        let member = run.g.member(3);
        match &step {
            Step::Watch { create, writes } => {
                run.watch(&mut e, &mut k, i, &step, create, writes, member)
                    .await?
            }
            _ => {
                run.step(&mut e, &mut k, &step, &i.to_string(), member)
                    .await?
            }
        }
    }
    // The last comparison: the whole store and every lease.
    run.step(&mut e, &mut k, &all, "end", 0).await?;
    let leases = Step::LeaseLeases(Default::default());
    run.step(&mut e, &mut k, &leases, "end", 0).await?;
    drop(etcd);
    drop(keel);
    Ok(DiffReport {
        seed: cfg.seed,
        steps: cfg.steps,
        requests: run.requests,
        by_kind: run.by_kind,
        revision: run.rev,
        elapsed: started.elapsed(),
    })
}

/// The state of one run.
struct Run<'a> {
    cfg: &'a DiffConfig,
    g: Generator,
    requests: u64,
    by_kind: BTreeMap<&'static str, (u64, u64)>,
    rev: i64,
}

impl Run<'_> {
    fn mismatch(&self, index: &str, request: String, etcd: &Answer, keel: &Answer) -> DiffError {
        let (etcd, keel) = (format!("{etcd:#?}"), format!("{keel:#?}"));
        DiffError::Mismatch(Box::new(Mismatch {
            seed: self.cfg.seed,
            steps: self.cfg.steps,
            flags: replay_flags(&self.cfg.options),
            index: index.to_string(),
            request,
            first: normalize::first_difference(&etcd, &keel),
            etcd,
            keel,
        }))
    }

    fn count(&mut self, step: &Step, etcd: &Answer) {
        let c = self.by_kind.entry(step.kind()).or_default();
        c.0 += 1;
        if matches!(etcd, Answer::Error { .. }) {
            c.1 += 1;
        }
    }

    /// Sends one step to both clusters and compares the answers.
    async fn step(
        &mut self,
        e: &mut Target,
        k: &mut Target,
        step: &Step,
        index: &str,
        member: usize,
    ) -> Result<(), DiffError> {
        let (mut ea, mut ka) = futures::join!(e.exec(step, member), k.exec(step, member));
        self.requests += 1;
        tracing::debug!(index, member, step = ?step, etcd = ?ea, keel = ?ka, "compared");
        if let (Step::LeaseGrant(g), Answer::LeaseGrant(eg), Answer::LeaseGrant(kg)) =
            (step, &ea, &ka)
            && g.id == 0
        {
            e.autos.push(eg.id);
            k.autos.push(kg.id);
            self.g.observe_auto_grant();
        }
        normalize::answer(&mut ea, &e.autos);
        normalize::answer(&mut ka, &k.autos);
        normalize::ttl_tolerance(&ea, &mut ka);
        if let Step::Range(r) = step {
            normalize::unstable_sort(r, &mut ea);
            normalize::unstable_sort(r, &mut ka);
        }
        self.count(step, &ea);
        if ea != ka {
            let request = format!("{:?} to member {member}", e.concrete(step));
            return Err(self.mismatch(index, request, &ea, &ka));
        }
        if let Some(rev) = ea.revision() {
            self.rev = self.rev.max(rev);
            self.g.observe_revision(rev);
        }
        if let (Step::Compact(c), Answer::Compact(_)) = (step, &ea) {
            self.g.observe_compaction(c.revision);
        }
        Ok(())
    }

    /// A watch step: opens the watch on both, makes its writes (each
    /// compared), collects and compares what both watches delivered.
    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &mut self,
        e: &mut Target,
        k: &mut Target,
        i: u64,
        step: &Step,
        create: &WatchCreateRequest,
        writes: &[Step],
        member: usize,
    ) -> Result<(), DiffError> {
        let opened_at = self.rev;
        let (mut ew, mut kw) =
            futures::join!(e.open_watch(create, member), k.open_watch(create, member));
        self.requests += 1;
        for (j, w) in writes.iter().enumerate() {
            let m = self.g.member(3);
            self.step(e, k, w, &format!("{i}.{}", j + 1), m).await?;
        }
        let until = self.rev;
        futures::join!(
            ew.collect(until, WATCH_QUIET, WATCH_MAX),
            kw.collect(until, WATCH_QUIET, WATCH_MAX)
        );
        let shaped = |w: &exec::WatchAnswer, autos: &[i64]| {
            let mut a = Answer::Watch(w.clone());
            if create.start_revision <= 0 {
                // "From now" is the serving member's now: a follower may
                // not have applied the last write yet and so deliver it.
                // Only the writes made after the watch opened are compared.
                if let Answer::Watch(w) = &mut a {
                    w.events
                        .retain(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision > opened_at));
                }
            }
            normalize::answer(&mut a, autos);
            a
        };
        // A slow side gets more time, in short steps, before it counts.
        let deadline = Instant::now() + WATCH_MAX;
        let (mut ea, mut ka) = (shaped(&ew.answer, &e.autos), shaped(&kw.answer, &k.autos));
        while ea != ka && Instant::now() < deadline {
            futures::join!(
                ew.collect(until, WATCH_STEP, WATCH_STEP),
                kw.collect(until, WATCH_STEP, WATCH_STEP)
            );
            (ea, ka) = (shaped(&ew.answer, &e.autos), shaped(&kw.answer, &k.autos));
        }
        self.count(step, &ea);
        futures::join!(ew.close(), kw.close());
        if ea != ka {
            let request = format!(
                "watch {create:?} on member {member}, then the {} writes before it (events until revision {until})",
                writes.len()
            );
            return Err(self.mismatch(&i.to_string(), request, &ea, &ka));
        }
        Ok(())
    }
}
