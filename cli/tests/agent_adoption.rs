//! An agent restarted on the same data dir adopts the pods it was running
//! (same PIDs, no duplicates, restart counts kept) and stops the pods that
//! were deleted while it was down.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support as s;
use keel_agent::runtime::process::same_process;
use keel_proto::api::Pod;
use keel_proto::client::ApiClient;

fn pod(name: &str, secs: u32) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, command: [sleep, '{secs}']}}
---
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_its_pods_and_stops_those_deleted_meanwhile() {
    let tc = common::start(3, &[]).await;
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let client = ApiClient::new(&apis, tc.c.credentials());
    let mut agents = s::Agents::start(tc.dir.path(), &apis, 1);
    s::apply(
        &apis[0],
        &format!("{}{}", pod("keep", 7001), pod("gone", 7002)),
    );
    common::poll(Duration::from_secs(30), "both pods Running", || async {
        let ps = s::pods(&client, "").await;
        (ps.len() == 2 && ps.iter().all(|p| p.status.phase == "Running")).then_some(())
    })
    .await;
    let before = agents.recorded(0);
    assert_eq!(before.len(), 2, "{before:?}");

    agents.kill(0);
    client.delete::<Pod>("default", "gone").await.unwrap();
    agents.spawn(0);

    let (_, gone_pid, gone_ticks) = before.iter().find(|r| r.0 == "gone").unwrap().clone();
    common::poll(
        Duration::from_secs(30),
        "the deleted pod's process stopped",
        || async { (!same_process(gone_pid, gone_ticks)).then_some(()) },
    )
    .await;
    let keep = before.iter().find(|r| r.0 == "keep").unwrap().clone();
    assert!(
        same_process(keep.1, keep.2),
        "the kept pod's process was restarted"
    );
    assert_eq!(
        s::processes_with("sleep 7001").len(),
        1,
        "no duplicate of the adopted pod"
    );
    assert!(s::processes_with("sleep 7002").is_empty());
    common::poll(
        Duration::from_secs(10),
        "the new agent's record",
        || async { (agents.recorded(0) == vec![keep.clone()]).then_some(()) },
    )
    .await;
    let p = client.get::<Pod>("default", "keep").await.unwrap();
    assert_eq!(p.status.phase, "Running");
    assert_eq!(p.status.container_statuses[0].restart_count, 0);
}
