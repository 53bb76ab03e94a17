//! A Deployment of real HTTP servers behind a Service, run by real agents:
//! the service IP answers from every node (each agent listens on it), and
//! SIGKILL of one agent gets its pods replaced on the other node while the
//! service keeps answering. `keel logs` reads a pod's log through the masters.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support as s;
use keel_proto::api::Node;
use keel_proto::api::meta::condition_true;
use keel_proto::client::ApiClient;

/// How many sockets listen on `ip:port` (from /proc/net/tcp).
fn listeners(ip: &str, port: u16) -> usize {
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    let want = format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3], o[2], o[1], o[0], port
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_answers_from_every_node_and_survives_an_agent_kill() {
    let tc = common::start(3, s::MASTER_ARGS).await;
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let client = ApiClient::new(&apis, tc.c.credentials());
    let mut agents = s::Agents::start(tc.dir.path(), &apis, 2);
    common::poll(Duration::from_secs(30), "two Ready nodes", || async {
        let nodes = client.list::<Node>("", "").await.ok()?;
        (nodes
            .items
            .iter()
            .filter(|n| condition_true(&n.status.conditions, "Ready"))
            .count()
            == 2)
            .then_some(())
    })
    .await;

    s::apply(&apis[0], &s::web("web", 3, 8080));
    let ip = s::cluster_ip(&client, "web").await;
    let addr = format!("{ip}:8080");
    common::poll(Duration::from_secs(60), "3 ready endpoints", || async {
        (s::ready_ips(&client, "web").await.len() == 3).then_some(())
    })
    .await;
    common::poll(Duration::from_secs(10), "both agents listening", || async {
        (listeners(&ip, 8080) == 2).then_some(())
    })
    .await;
    for _ in 0..6 {
        assert_eq!(s::http_get(&addr).await, Some(200), "through {addr}");
    }

    // Logs through the masters: the requests above are in some pod's log.
    let pods = s::pods(&client, "app=web").await;
    let server = apis.join(",");
    let mut logged = String::new();
    for p in &pods {
        let (ok, out, err) = s::keel(&[
            "logs",
            &p.metadata.name,
            "--tail",
            "50",
            "--server",
            &server,
        ]);
        assert!(ok, "keel logs {}: {err}", p.metadata.name);
        logged.push_str(&out);
    }
    assert!(logged.contains("\"GET / HTTP/1.1\" 200"), "{logged}");

    // SIGKILL n1: its pods are evicted and replaced on n2.
    let on_n1: Vec<String> = pods
        .iter()
        .filter(|p| p.spec.node_name == "n1")
        .map(|p| p.metadata.name.clone())
        .collect();
    agents.kill(0);
    let n2_prefix = format!("127.{}.", agents.agents[1].range);
    common::poll(
        Duration::from_secs(60),
        "3 ready pods, all on n2, behind the service",
        || async {
            let ps = s::pods(&client, "app=web").await;
            let ips = s::ready_ips(&client, "web").await;
            (ps.len() == 3
                && ps.iter().all(|p| p.spec.node_name == "n2" && p.is_ready())
                && ips.len() == 3
                && ips.iter().all(|i| i.starts_with(&n2_prefix)))
            .then_some(())
        },
    )
    .await;
    let names: Vec<String> = s::pods(&client, "app=web")
        .await
        .iter()
        .map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        on_n1.iter().all(|n| !names.contains(n)),
        "n1's pods {on_n1:?} were replaced: {names:?}"
    );
    // Only n2 listens now, and it answers.
    assert_eq!(listeners(&ip, 8080), 1);
    for _ in 0..6 {
        assert_eq!(
            s::http_get(&addr).await,
            Some(200),
            "through {addr} after n1 died"
        );
    }
}
