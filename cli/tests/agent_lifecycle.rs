//! Pod lifecycle on a real agent: a crashing container is restarted with
//! back-off (CrashLoopBackOff, restartCount, lastState with its exit code);
//! a command that does not exist ends with ContainerCannotRun and the OS
//! error, without hurting the agent; a pod whose readiness probe starts
//! failing leaves its Service's endpoints; a failing liveness probe restarts
//! its container; logs read through the masters.
//! Also the API server's cluster IP allocation: Services created at once
//! through different masters get distinct IPs; a taken or out-of-range
//! clusterIP is refused with 422.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support as s;
use keel_proto::api::core::ServicePort;
use keel_proto::api::{Pod, Service};
use keel_proto::client::ApiClient;

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: c, command: [sh, -c, 'echo boom; exit 3']}
---
apiVersion: v1
kind: Pod
metadata: {name: nocmd}
spec:
  restartPolicy: Never
  containers:
  - {name: c, command: [no-such-command-keel-test]}
---
apiVersion: v1
kind: Pod
metadata: {name: nocmd-always}
spec:
  containers:
  - {name: c, command: [/no/such/path/keel]}
---
apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    command: [sh, -c, 'touch alive; exec sleep 600']
    livenessProbe: {exec: {command: [test, -f, alive]}, periodSeconds: 1, failureThreshold: 2}
";

fn probed(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: probed}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    command: [sh, -c, 'touch ready; exec sleep 600']
    readinessProbe: {{exec: {{command: [test, -f, ready]}}, periodSeconds: 1, failureThreshold: 1}}
---
"
    )
}

const SVC: &str = "apiVersion: v1
kind: Service
metadata: {name: probed}
spec:
  selector: {app: probed}
  ports: [{port: 9000}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_back_off_bad_commands_fail_clearly_and_unready_pods_leave_endpoints() {
    let tc = common::start(3, &[]).await;
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let client = ApiClient::new(&apis, tc.c.credentials());
    let mut agents = s::Agents::start(tc.dir.path(), &apis, 1);
    s::apply(&apis[0], PODS);
    s::apply(&apis[0], &format!("{}{}{SVC}", probed("p1"), probed("p2")));

    // Crash loop: restarted with back-off, counted, last exit code kept.
    let crash = common::poll(
        Duration::from_secs(60),
        "crash restarted 3 times",
        || async {
            let p = client.get::<Pod>("default", "crash").await.ok()?;
            let cs = p.status.container_statuses.first()?.clone();
            (cs.restart_count >= 3 && cs.state.as_ref()?.waiting.is_some()).then_some(cs)
        },
    )
    .await;
    let waiting = crash.state.unwrap().waiting.unwrap();
    assert_eq!(waiting.reason, "CrashLoopBackOff", "{waiting:?}");
    assert!(waiting.message.contains("back-off"), "{waiting:?}");
    let last = crash.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_str()), (Some(3), "Error"));

    // A missing command: ContainerCannotRun with the OS error, pod Failed.
    let p = common::poll(Duration::from_secs(30), "nocmd Failed", || async {
        let p = client.get::<Pod>("default", "nocmd").await.ok()?;
        (p.status.phase == "Failed").then_some(p)
    })
    .await;
    let t = p.status.container_statuses[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.reason, "ContainerCannotRun");
    assert!(
        t.message.contains("executable file not found in $PATH")
            && t.message.contains("os error 2"),
        "{t:?}"
    );
    // With restartPolicy Always it backs off like any crash.
    common::poll(
        Duration::from_secs(30),
        "nocmd-always backing off with ContainerCannotRun",
        || async {
            let p = client.get::<Pod>("default", "nocmd-always").await.ok()?;
            let cs = p.status.container_statuses.first()?;
            let last = cs.last_state.as_ref()?.terminated.as_ref()?;
            (last.reason == "ContainerCannotRun"
                && last.message.contains("no such file or directory")
                && cs.restart_count >= 1)
                .then_some(())
        },
    )
    .await;
    assert!(
        agents.agents[0]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the agent survived:\n{}",
        agents.log_tail(0)
    );

    // Readiness: both probed pods are endpoints; p2's probe fails → it leaves.
    common::poll(Duration::from_secs(30), "2 ready endpoints", || async {
        (s::ready_ips(&client, "probed").await.len() == 2).then_some(())
    })
    .await;
    let p2 = client.get::<Pod>("default", "p2").await.unwrap();
    let flag = agents.agents[0]
        .data_dir
        .join("pods")
        .join(&p2.metadata.uid)
        .join("containers/c/ready");
    std::fs::remove_file(&flag).expect("remove the readiness flag");
    let ips = common::poll(
        Duration::from_secs(10),
        "p2 out of the endpoints",
        || async {
            let ips = s::ready_ips(&client, "probed").await;
            (ips.len() == 1).then_some(ips)
        },
    )
    .await;
    let p2 = client.get::<Pod>("default", "p2").await.unwrap();
    assert!(!p2.is_ready() && !p2.status.container_statuses[0].ready);
    assert!(!ips.contains(&p2.status.pod_ip), "{ips:?}");
    assert_eq!(p2.status.phase, "Running");

    // Liveness: once its probe fails twice the container is restarted.
    let live = common::poll(Duration::from_secs(15), "live ready", || async {
        let p = client.get::<Pod>("default", "live").await.ok()?;
        p.is_ready().then_some(p)
    })
    .await;
    std::fs::remove_file(
        agents.agents[0]
            .data_dir
            .join("pods")
            .join(&live.metadata.uid)
            .join("containers/c/alive"),
    )
    .expect("remove the liveness flag");
    let cs = common::poll(Duration::from_secs(15), "live restarted", || async {
        let p = client.get::<Pod>("default", "live").await.ok()?;
        let cs = p.status.container_statuses.first()?.clone();
        (cs.restart_count == 1 && cs.ready).then_some(cs)
    })
    .await;
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert!(last.message.contains("liveness"), "{last:?}");

    // Cluster IPs: 12 Services created concurrently through all three
    // masters get 12 distinct addresses of the range.
    let svc = |name: &str, ip: &str| {
        let mut s = Service::new("default", name);
        s.spec.cluster_ip = ip.into();
        s.spec.ports = vec![ServicePort {
            port: 80,
            ..Default::default()
        }];
        s
    };
    let created = futures::future::join_all((0..12).map(|i| {
        let c = ApiClient::new(&[apis[i % 3].clone()], tc.c.credentials());
        async move { c.create(&svc(&format!("s{i}"), "")).await }
    }))
    .await;
    let mut ips: Vec<String> = created
        .into_iter()
        .map(|r| r.expect("service created").spec.cluster_ip)
        .collect();
    assert!(ips.iter().all(|ip| ip.starts_with("127.96.")), "{ips:?}");
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 12, "distinct cluster IPs");
    let taken = client.create(&svc("dup", &ips[0])).await.unwrap_err();
    assert_eq!(taken.code(), 422);
    assert!(taken.to_string().contains("already allocated"), "{taken}");
    let outside = client.create(&svc("out", "10.0.0.1")).await.unwrap_err();
    assert_eq!(outside.code(), 422);
    assert!(outside.to_string().contains("127.96.0.0/16"), "{outside}");
    // A freed address can be asked for again.
    let owner = "s0".to_string();
    let owned = client.get::<Service>("default", &owner).await.unwrap();
    client.delete::<Service>("default", &owner).await.unwrap();
    client
        .create(&svc("again", &owned.spec.cluster_ip))
        .await
        .expect("a released clusterIP is free again");

    // Logs through the masters, with --tail; a wrong container is refused.
    let server = apis.join(",");
    let (ok, out, err) = s::keel(&["logs", "crash", "--tail", "2", "--server", &server]);
    assert!(ok, "{err}");
    assert_eq!(out, "boom\nboom\n");
    let (ok, _, err) = s::keel(&["logs", "crash", "-c", "nope", "--server", &server]);
    assert!(
        !ok && err.contains("container nope is not valid for pod crash"),
        "{err}"
    );

    // The agent's log endpoint itself admits masters only: plain text fails,
    // and the admin's certificate (the cluster's, but not a master's) gets 403.
    let pod: Pod = client.get("default", "crash").await.unwrap();
    let node: keel_proto::api::Node = client.get("", &pod.spec.node_name).await.unwrap();
    let addr: std::net::SocketAddr = node
        .status
        .addresses
        .iter()
        .find(|a| a.type_ == "KeelAgent")
        .unwrap()
        .address
        .parse()
        .unwrap();
    let path = format!(
        "/containerLogs/default/crash/{}",
        pod.spec.containers[0].name
    );
    let plain = reqwest::get(format!("http://{addr}{path}")).await;
    assert!(
        plain.is_err() || !plain.as_ref().unwrap().status().is_success(),
        "plain text read logs: {plain:?}"
    );
    let admin = keel_proto::pki::PkiDir(common::shared_pki())
        .admin_credentials()
        .unwrap()
        .tls
        .unwrap();
    let name = keel_proto::pki::node_server_name(&pod.spec.node_name);
    let https = reqwest::Client::builder()
        .use_preconfigured_tls(admin.rustls_client().unwrap())
        .resolve(&name, addr)
        .build()
        .unwrap();
    let r = https
        .get(format!("https://{name}:{}{path}", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "{r:?}");
}
