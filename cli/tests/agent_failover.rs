//! SIGKILL of the leading master: the pods the agents run are untouched
//! (same PIDs, no restarts), the agents carry on through another master,
//! and a scale-up made after the failover takes effect.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support as s;
use keel_agent::runtime::process::same_process;
use keel_proto::api::Deployment;
use keel_proto::client::ApiClient;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_leaves_pods_running_and_a_scale_up_takes_effect() {
    let mut tc = common::start(3, s::MASTER_ARGS).await;
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let client = ApiClient::new(&apis, tc.c.credentials());
    let agents = s::Agents::start(tc.dir.path(), &apis, 2);
    s::apply(&apis[0], &s::web("web", 2, 8081));
    let ip = s::cluster_ip(&client, "web").await;
    common::poll(Duration::from_secs(60), "2 ready endpoints", || async {
        (s::ready_ips(&client, "web").await.len() == 2).then_some(())
    })
    .await;
    let before: Vec<(String, u32, u64)> = [agents.recorded(0), agents.recorded(1)].concat();
    assert_eq!(before.len(), 2, "{before:?}");
    let uids: Vec<String> = s::pods(&client, "app=web")
        .await
        .iter()
        .map(|p| p.metadata.uid.clone())
        .collect();

    let leader = tc.c.wait_ready(Duration::from_secs(10)).await.unwrap();
    tc.c.kill(leader);
    let rest: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| tc.c.members[i].api_addr())
        .collect();
    let client = ApiClient::new(&rest, tc.c.credentials());
    common::poll(Duration::from_secs(30), "scale to 4 accepted", || async {
        client
            .merge_patch::<Deployment>("default", "web", &json!({"spec": {"replicas": 4}}))
            .await
            .ok()
    })
    .await;
    common::poll(Duration::from_secs(60), "4 ready endpoints", || async {
        (s::ready_ips(&client, "web").await.len() == 4).then_some(())
    })
    .await;
    assert_eq!(s::http_get(&format!("{ip}:8081")).await, Some(200));

    // The first two pods are the same pods, processes and runs.
    let pods = s::pods(&client, "app=web").await;
    for uid in &uids {
        let p = pods
            .iter()
            .find(|p| p.metadata.uid == *uid)
            .unwrap_or_else(|| panic!("pod {uid} was replaced"));
        assert_eq!(p.status.container_statuses[0].restart_count, 0);
    }
    for (pod, pid, ticks) in &before {
        assert!(same_process(*pid, *ticks), "{pod}'s process {pid} is gone");
    }
    let after: Vec<(String, u32, u64)> = [agents.recorded(0), agents.recorded(1)].concat();
    for b in &before {
        assert!(after.contains(b), "{b:?} no longer recorded: {after:?}");
    }
}
