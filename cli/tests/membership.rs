//! Membership changes on a real process cluster: a removal that would leave
//! no quorum is refused, a member moved to a new address keeps its id and
//! publishes the address, and a 4th member joins as a voter with the data.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::{Member, MemberListRequest, MemberRemoveRequest};

/// On a failing test, prints the tail of every member's log (the temp dir
/// is gone after the test).
struct LogsOnPanic(std::path::PathBuf);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut files: Vec<_> = std::fs::read_dir(&self.0)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let log = std::fs::read_to_string(&f).unwrap_or_default();
            // Each distinct message once (with how often and until when it
            // recurred), so repeated heartbeat warnings do not hide the rest.
            let mut order: Vec<&str> = Vec::new();
            let mut seen: HashMap<&str, (&str, &str, usize)> = HashMap::new();
            for l in log.lines() {
                let (ts, msg) = l.split_once(' ').unwrap_or(("", l));
                let e = seen.entry(msg).or_insert_with(|| {
                    order.push(msg);
                    (l, ts, 0)
                });
                e.1 = ts;
                e.2 += 1;
            }
            let lines: Vec<String> = order
                .iter()
                .map(|m| match seen[m] {
                    (first, _, 1) => first.to_string(),
                    (first, last, n) => format!("{first}  [x{n}, last at {last}]"),
                })
                .collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("--- {} ---\n{}", f.display(), tail.join("\n"));
        }
    }
}

fn logs_on_panic(tc: &TestCluster) -> LogsOnPanic {
    LogsOnPanic(tc.dir.path().join("logs"))
}

async fn members(ep: &str) -> Result<Vec<Member>, tonic::Status> {
    Ok(ClusterClient::new(channel(ep).await)
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await?
        .into_inner()
        .members)
}

async fn remove(ep: &str, id: u64) -> Result<Vec<Member>, tonic::Status> {
    Ok(ClusterClient::new(channel(ep).await)
        .member_remove(MemberRemoveRequest { id })
        .await?
        .into_inner()
        .members)
}

/// The ids of members 0..n, as they report them.
async fn ids(tc: &TestCluster, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(tc.c.status(i).await.expect("status").0);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_that_would_lose_quorum_is_refused() {
    let mut tc = start(3, &[]).await;
    let _logs = logs_on_panic(&tc);
    let eps = tc.c.endpoints();
    put(&eps[0], "k", "v").await.expect("put");
    let ids = ids(&tc, 3).await;
    let leader = tc.c.leader().await.expect("leader");
    let dead = (0..3).find(|i| *i != leader).unwrap();
    let healthy = (0..3).find(|i| *i != leader && *i != dead).unwrap();

    tc.c.kill(dead);
    // Removing the healthy follower would leave {leader, dead}: one started
    // member out of two voters, no quorum. etcd refuses this at once (the
    // dead member's connection is gone), so must Keel.
    let r = remove(&eps[leader], ids[healthy]).await;
    match r {
        Ok(ms) => panic!(
            "removing {} with {} dead was accepted; members now {:?}",
            tc.c.members[healthy].name,
            tc.c.members[dead].name,
            ms.iter().map(|m| &m.name).collect::<Vec<_>>()
        ),
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(
                s.message().contains("not enough started members"),
                "message: {}",
                s.message()
            );
        }
    }
    let ms = members(&eps[healthy]).await.expect("member list");
    assert_eq!(ms.len(), 3, "members after refused removal: {ms:?}");
    // Still a working cluster with the healthy member in it.
    put(&eps[healthy], "k2", "v2")
        .await
        .expect("put after refused removal");

    // Removing the dead member leaves {leader, healthy}: allowed. Retried
    // until the member list shows it gone (an attempt whose answer was lost
    // may have applied already).
    let ms = poll(
        Duration::from_secs(15),
        "removal of the dead member",
        || async {
            let ms = members(&eps[leader]).await.ok()?;
            if ms.len() == 2 {
                return Some(ms);
            }
            if let Err(s) = remove(&eps[leader], ids[dead]).await {
                eprintln!("remove dead member: {s:?} (retrying)");
            }
            None
        },
    )
    .await;
    assert!(ms.iter().all(|m| m.id != ids[dead]), "{ms:?}");
    let ms = poll(
        Duration::from_secs(10),
        "2 members on the follower",
        || async {
            let ms = members(&eps[healthy]).await.ok()?;
            (ms.len() == 2).then_some(ms)
        },
    )
    .await;
    let mut names: Vec<&str> = ms.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    let mut want = vec![
        tc.c.members[leader].name.as_str(),
        tc.c.members[healthy].name.as_str(),
    ];
    want.sort();
    assert_eq!(names, want);
    // Two of two voters: writes still commit.
    put(&eps[healthy], "k3", "v3")
        .await
        .expect("put after removal");
    assert_eq!(
        get(&eps[leader], "k3", false).await.unwrap(),
        Some("v3".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_restarted_on_new_address_keeps_its_id() {
    let mut tc = start(3, &[]).await;
    let _logs = logs_on_panic(&tc);
    let eps = tc.c.endpoints();
    put(&eps[0], "before", "1").await.expect("put");
    let ids = ids(&tc, 3).await;
    let leader = tc.c.leader().await.expect("leader");
    let moved = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != moved).unwrap();
    let name = tc.c.members[moved].name.clone();

    tc.c.restart_on_new_ports(moved)
        .expect("restart on new ports");
    let new_client = format!("https://{}", tc.c.members[moved].client_addr());
    let new_peer = format!("https://{}", tc.c.members[moved].peer_addr());
    assert_ne!(tc.c.endpoints()[moved], eps[moved], "ports did not change");

    let m = poll(
        Duration::from_secs(20),
        "the moved member's new URLs in the member list",
        || async {
            let ms = members(&eps[other]).await.ok()?;
            let m = ms.into_iter().find(|m| m.name == name)?;
            (m.client_ur_ls == [new_client.clone()] && m.peer_ur_ls == [new_peer.clone()])
                .then_some(m)
        },
    )
    .await;
    assert_eq!(m.id, ids[moved], "the moved member got a new id");
    let own =
        tc.c.status(moved)
            .await
            .expect("status of the moved member")
            .0;
    assert_eq!(own, ids[moved], "the moved member reports a new id");
    assert!(!m.is_learner, "the moved member became a learner");
    let ms = members(&eps[leader]).await.expect("member list");
    assert_eq!(ms.len(), 3, "{ms:?}");

    // It takes part again: a write through its new client address commits
    // and is visible on the others.
    let ep = tc.c.endpoints()[moved].clone();
    poll(
        Duration::from_secs(10),
        "a put through the new address",
        || async { put(&ep, "after", "2").await.ok() },
    )
    .await;
    assert_eq!(
        get(&eps[other], "after", false).await.unwrap(),
        Some("2".into())
    );
    assert_eq!(
        get(&eps[leader], "after", false).await.unwrap(),
        Some("2".into())
    );
    // The leader replicates to the new peer address: the moved member
    // applies the new write and serves linearizable reads.
    poll(
        Duration::from_secs(10),
        "the moved member to apply the write",
        || async { (get(&ep, "after", true).await.ok()?.as_deref() == Some("2")).then_some(()) },
    )
    .await;
    assert_eq!(get(&ep, "before", false).await.unwrap(), Some("1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_member_joins_as_voter_with_the_data() {
    let mut tc = start(3, &[]).await;
    let _logs = logs_on_panic(&tc);
    let eps = tc.c.endpoints();
    for i in 0..20 {
        put(&eps[i % 3], &format!("pre/{i:02}"), "x")
            .await
            .expect("put");
    }
    put(&eps[1], "joined-before", "yes").await.expect("put");

    let new = tc.c.add_member(0).expect("spawn 4th member");
    let name = tc.c.members[new].name.clone();
    let new_ep = tc.c.endpoints()[new].clone();
    let ms = poll(
        Duration::from_secs(30),
        "4 members, the new one a voter",
        || async {
            let ms = members(&eps[2]).await.ok()?;
            (ms.len() == 4 && ms.iter().any(|m| m.name == name && !m.is_learner)).then_some(ms)
        },
    )
    .await;
    let m = ms.iter().find(|m| m.name == name).unwrap();
    assert_eq!(m.client_ur_ls, [format!("https://{new_ep}")], "{m:?}");
    let id = tc.c.status(new).await.expect("status of the new member").0;
    assert_eq!(m.id, id);

    let v = poll(
        Duration::from_secs(10),
        "the old key on the new member",
        || async { get(&new_ep, "joined-before", true).await.ok().flatten() },
    )
    .await;
    assert_eq!(v, "yes");
    assert_eq!(
        keys_with_prefix(&new_ep, "pre/", true).await.unwrap().len(),
        20
    );
}
