//! Register workload against a real 3-member cluster while the leader is
//! SIGKILLed and restarted: the recorded history must be linearizable.

mod common;

use std::time::Duration;

use common::*;
use keel_chaos::check::linearizable::{Outcome, Verdict, check};
use keel_chaos::workload::register::{RegisterWorkload, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_history_through_a_leader_kill_is_linearizable() {
    let mut tc = start(3, &[]).await;
    let w = RegisterWorkload {
        endpoints: tc.c.endpoints(),
        creds: tc.c.credentials().clone(),
        clients: 4,
        keys: 6,
        duration: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        key_period: None,
    };
    let workload = tokio::spawn(async move { run(&w).await });
    poll(Duration::from_secs(10), "some writes", || async {
        keys_with_prefix(&tc.c.endpoints()[0], "reg/", true)
            .await
            .ok()
            .filter(|k| k.len() >= 3)
    })
    .await;
    let leader = tc.c.leader().await.expect("leader");
    tc.c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    poll(Duration::from_secs(10), "a new leader", || async {
        let s = tc.c.status(others[0]).await?;
        (s.1 != 0).then_some(())
    })
    .await;
    tc.c.restart(leader).unwrap();
    let history = workload.await.unwrap();
    let ok = history
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Failed | Outcome::Unknown))
        .count();
    assert!(
        ok >= 50,
        "only {ok} completed operations in {} recorded",
        history.len()
    );
    assert_eq!(
        check(&history, 5_000_000),
        Verdict::Linearizable,
        "{} ops",
        history.len()
    );
}
