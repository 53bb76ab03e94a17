//! Pods as real containers: agents started with `--runtime docker` on the
//! machine's Docker Engine (it must be running: these tests fail loudly
//! without it, they never skip), with images built locally by
//! scripts/test-images.sh (no registry is reachable).
//!
//! - A Deployment of busybox httpd behind a Service answers through the
//!   cluster IP, pod IPs come from the agents' Docker networks; SIGKILL of
//!   one agent gets its pods recreated on the other node.
//! - A two-container pod talks over localhost and shares an emptyDir; a
//!   memory limit gets a container OOM-killed (reason OOMKilled) and
//!   restarted; a missing image is ErrImagePull then ImagePullBackOff, with
//!   `Never` ErrImageNeverPull; a SIGKILLed agent restarted adopts its
//!   containers (same ids, no restarts) and removes those of a pod deleted
//!   while it was down; `kubectl exec` runs in a container with stdin and
//!   its exit code. A mount of no volume fails its container
//!   (CreateContainerError); a hostPath volume is refused to an `edit` token
//!   and mounts the node's directory for the admin.

mod agent_support;
mod common;
mod kubectl_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use agent_support as s;
use keel_agent::runtime::docker::bollard::models::ContainerSummary;
use keel_agent::runtime::docker::{agent_id, connect_engine, containers_of, remove_agent};
use keel_proto::api::meta::condition_true;
use keel_proto::api::{Node, Pod};
use keel_proto::client::ApiClient;
use kubectl_support::{Kubectl, kubeconfig};

const PAUSE: &str = "keel-test/pause:latest";
const DOCKER_ARGS: &[&str] = &["--runtime", "docker", "--pause-image", PAUSE];

/// Builds the test images once per test binary (fails loudly when Docker
/// is unreachable; a failed build fails every test that needs them).
fn test_images() {
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-images.sh");
        std::process::Command::new("bash")
            .arg(&script)
            .status()
            .expect("running scripts/test-images.sh")
            .success()
    });
    assert!(*ok, "scripts/test-images.sh failed");
}

/// Docker agents; dropping them (even when the test fails) kills the
/// agents, then removes every container and network they made.
struct DockerAgents {
    a: s::Agents,
    ids: Vec<String>,
}

impl DockerAgents {
    fn start(dir: &Path, apis: &[String], n: usize) -> DockerAgents {
        let a = s::Agents::start_with(dir, apis, n, DOCKER_ARGS);
        let ids = a
            .agents
            .iter()
            .map(|a| agent_id(&a.name, &a.data_dir))
            .collect();
        DockerAgents { a, ids }
    }
}

impl Drop for DockerAgents {
    fn drop(&mut self) {
        for i in 0..self.a.agents.len() {
            self.a.kill(i);
        }
        let ids = std::mem::take(&mut self.ids);
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                if let Ok(d) = connect_engine().await {
                    for id in ids {
                        remove_agent(&d, &id).await;
                    }
                }
            })
        })
        .join()
        .unwrap();
    }
}

/// The agent's containers by (pod name, container name): (id, running).
async fn containers(agent: &str) -> BTreeMap<(String, String), Vec<(String, bool)>> {
    let d = connect_engine().await.expect("docker");
    let mut out: BTreeMap<(String, String), Vec<(String, bool)>> = BTreeMap::new();
    let all: Vec<ContainerSummary> = containers_of(&d, agent).await.expect("list");
    for c in all {
        let l = c.labels.clone().unwrap_or_default();
        let key = (
            l.get("keel.pod-name").cloned().unwrap_or_default(),
            l.get("keel.container").cloned().unwrap_or_default(),
        );
        let running = c.state.as_ref().is_some_and(|s| s.to_string() == "running");
        out.entry(key)
            .or_default()
            .push((c.id.unwrap_or_default(), running));
    }
    out
}

async fn body(url: &str) -> Option<String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let r = c.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

async fn ready_nodes(client: &ApiClient, n: usize) {
    common::poll(Duration::from_secs(30), "Ready nodes", || async {
        let nodes = client.list::<Node>("", "").await.ok()?;
        (nodes
            .items
            .iter()
            .filter(|n| condition_true(&n.status.conditions, "Ready"))
            .count()
            == n)
            .then_some(())
    })
    .await;
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: bb}
spec:
  replicas: 2
  selector: {matchLabels: {app: bb}}
  template:
    metadata: {labels: {app: bb}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: keel-test/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [httpd, -f, -p, '8080', -h, /www]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: bb}
spec:
  selector: {app: bb}
  ports: [{name: http, port: 8081, targetPort: http}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_deployment_serves_through_its_service_and_survives_node_loss() {
    test_images();
    let tc = common::start(3, s::MASTER_ARGS).await;
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let client = ApiClient::new(&apis, tc.c.credentials());
    let mut agents = DockerAgents::start(tc.dir.path(), &apis, 2);
    ready_nodes(&client, 2).await;
    let cidrs: BTreeMap<String, String> = client
        .list::<Node>("", "")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| (n.metadata.name, n.spec.pod_cidr))
        .collect();
    assert!(
        cidrs
            .values()
            .all(|c| c.starts_with("10.244.") && c.ends_with(".0/24")),
        "pod CIDRs are the agents' docker networks: {cidrs:?}"
    );

    s::apply(&apis[0], WEB);
    let ip = s::cluster_ip(&client, "bb").await;
    common::poll(Duration::from_secs(60), "2 ready endpoints", || async {
        (s::ready_ips(&client, "bb").await.len() == 2).then_some(())
    })
    .await;
    let pods = s::pods(&client, "app=bb").await;
    let mut pod_ips: Vec<String> = pods.iter().map(|p| p.status.pod_ip.clone()).collect();
    pod_ips.sort();
    assert_eq!(s::ready_ips(&client, "bb").await, pod_ips);
    for p in &pods {
        let cidr = &cidrs[&p.spec.node_name];
        let prefix = cidr.trim_end_matches("0/24");
        assert!(
            p.status.pod_ip.starts_with(prefix),
            "{} in {cidr}",
            p.status.pod_ip
        );
    }
    // Each pod is a sandbox plus its container, labelled as Keel's.
    for (i, a) in agents.ids.iter().enumerate() {
        let cs = containers(a).await;
        for p in pods
            .iter()
            .filter(|p| p.spec.node_name == agents.a.agents[i].name)
        {
            for c in ["POD", "web"] {
                let k = (p.metadata.name.clone(), c.to_string());
                assert!(
                    cs.get(&k).is_some_and(|v| v.iter().any(|x| x.1)),
                    "{k:?} running: {cs:?}"
                );
            }
        }
    }
    let url = format!("http://{ip}:8081/");
    for _ in 0..4 {
        let b = common::poll(
            Duration::from_secs(10),
            "an answer via the cluster IP",
            || body(&url),
        )
        .await;
        assert_eq!(b, "keel-test busybox\n");
    }

    // n1 is lost: its pods are recreated on n2, behind the same IP.
    agents.a.kill(0);
    let n2_prefix = cidrs["n2"].trim_end_matches("0/24").to_string();
    common::poll(
        Duration::from_secs(60),
        "2 ready pods, all on n2, behind the service",
        || async {
            let ps = s::pods(&client, "app=bb").await;
            let ips = s::ready_ips(&client, "bb").await;
            (ps.len() == 2
                && ps.iter().all(|p| p.spec.node_name == "n2" && p.is_ready())
                && ips.len() == 2
                && ips.iter().all(|i| i.starts_with(&n2_prefix)))
            .then_some(())
        },
    )
    .await;
    let b = common::poll(Duration::from_secs(10), "an answer after n1 died", || {
        body(&url)
    })
    .await;
    assert_eq!(b, "keel-test busybox\n");
}

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: shared, emptyDir: {}}]
  containers:
  - name: web
    image: keel-test/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [httpd, -f, -p, '8080', -h, /data]
    volumeMounts: [{name: shared, mountPath: /data}]
  - name: writer
    image: keel-test/busybox:latest
    imagePullPolicy: IfNotPresent
    env:
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    command: [sh, -c]
    args:
    - 'echo shared-by-$(POD_NAME) > /data/index.html; until wget -q -O - http://localhost:8080/index.html; do sleep 0.2; done; echo ip=$MY_IP; echo writer-done; exec sleep 3600'
    volumeMounts: [{name: shared, mountPath: /data}]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: hog
    image: keel-test/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo start; x=0123456789abcdef; while true; do x=$x$x; done']
    resources: {limits: {memory: 24Mi, cpu: 500m}}
---
apiVersion: v1
kind: Pod
metadata: {name: ghost}
spec:
  containers:
  - {name: c, image: 'keel-test/no-such-image:1.0'}
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  containers:
  - {name: c, image: 'keel-test/no-such-image:2.0', imagePullPolicy: Never}
---
apiVersion: v1
kind: Pod
metadata: {name: badmount}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: keel-test/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    volumeMounts: [{name: nowhere, mountPath: /data}]
---
apiVersion: v1
kind: Pod
metadata: {name: gone}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: 'keel-test/busybox:latest', imagePullPolicy: IfNotPresent, command: [sleep, '3600']}
";

fn waiting_reason(p: &Pod) -> Option<(String, String)> {
    let w = p
        .status
        .container_statuses
        .first()?
        .state
        .as_ref()?
        .waiting
        .clone()?;
    Some((w.reason, w.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pods_share_localhost_get_oom_killed_report_pull_errors_and_are_adopted() {
    test_images();
    let tc = common::start(3, &[]).await;
    let apis: Vec<String> = tc.c.members.iter().map(|m| m.api_addr()).collect();
    let client = ApiClient::new(&apis, tc.c.credentials());
    let mut agents = DockerAgents::start(tc.dir.path(), &apis, 1);
    let agent = agents.ids[0].clone();
    ready_nodes(&client, 1).await;
    s::apply(&apis[0], PODS);

    // A missing image: ErrImagePull, then ImagePullBackOff while backing off.
    let seen: Mutex<BTreeSet<String>> = Mutex::default();
    common::poll(
        Duration::from_secs(30),
        "ErrImagePull then ImagePullBackOff",
        || async {
            let p = client.get::<Pod>("default", "ghost").await.ok()?;
            let (reason, msg) = waiting_reason(&p)?;
            if reason.contains("Image") {
                assert!(msg.contains("keel-test/no-such-image:1.0"), "{msg}");
            }
            let mut s = seen.lock().unwrap();
            s.insert(reason);
            (s.contains("ErrImagePull") && s.contains("ImagePullBackOff")).then_some(())
        },
    )
    .await;
    let ghost = client.get::<Pod>("default", "ghost").await.unwrap();
    assert_eq!(ghost.status.phase, "Pending");
    assert_eq!(ghost.status.container_statuses[0].restart_count, 0);
    let never = common::poll(Duration::from_secs(30), "ErrImageNeverPull", || async {
        let p = client.get::<Pod>("default", "never").await.ok()?;
        waiting_reason(&p).filter(|(r, _)| r == "ErrImageNeverPull")
    })
    .await;
    assert!(
        never.1.contains("not present with pull policy of Never"),
        "{never:?}"
    );

    // Bad input: a mount of no volume fails the container clearly.
    let bad = common::poll(Duration::from_secs(30), "badmount Failed", || async {
        let p = client.get::<Pod>("default", "badmount").await.ok()?;
        (p.status.phase == "Failed").then_some(p)
    })
    .await;
    let t = bad.status.container_statuses[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.reason, "CreateContainerError");
    assert!(t.message.contains("nowhere"), "{t:?}");
    // A hostPath volume reaches the node's files: an `edit` token is
    // refused (403, nothing created); the admin's pod mounts the node's
    // directory and reads what is in it.
    let node_dir = tc.dir.path().join("node-files");
    std::fs::create_dir_all(&node_dir).unwrap();
    std::fs::write(node_dir.join("greeting"), "from-the-node\n").unwrap();
    let hp = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hp"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "node", "hostPath": {"path": node_dir.display().to_string(), "type": "Directory"}}],
            "containers": [{
                "name": "c", "image": "keel-test/busybox:latest", "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "cat /node/greeting; echo written > /node/back"],
                "volumeMounts": [{"name": "node", "mountPath": "/node"}]
            }]
        }
    });
    let dev = common::token_client(&client, tc.c.credentials(), &apis, "dev", "edit").await;
    match dev
        .post::<serde_json::Value>("/api/v1/namespaces/default/pods", &hp)
        .await
    {
        Err(keel_proto::client::ClientError::Api(st)) => {
            assert_eq!(st.code, 403, "{st:?}");
            assert!(st.message.contains("hostPath"), "{}", st.message);
        }
        other => panic!("an edit token created a hostPath pod: {other:?}"),
    }
    assert!(client.get::<Pod>("default", "hp").await.is_err());
    client
        .post::<serde_json::Value>("/api/v1/namespaces/default/pods", &hp)
        .await
        .expect("the admin's hostPath pod");
    common::poll(Duration::from_secs(60), "hp Succeeded", || async {
        let p = client.get::<Pod>("default", "hp").await.ok()?;
        (p.status.phase == "Succeeded").then_some(())
    })
    .await;
    let (ok, out, err) = s::keel(&["logs", "hp", "--server", &apis.join(",")]);
    assert!(ok && out.contains("from-the-node"), "hp's log: {out} {err}");
    assert_eq!(
        std::fs::read_to_string(node_dir.join("back"))
            .unwrap()
            .trim(),
        "written"
    );

    // Two containers, one IP: the writer fills the shared emptyDir and
    // reads it back from the web container over localhost.
    let duo = common::poll(Duration::from_secs(60), "duo Running", || async {
        let p = client.get::<Pod>("default", "duo").await.ok()?;
        (p.status.phase == "Running" && !p.status.pod_ip.is_empty()).then_some(p)
    })
    .await;
    let ip = duo.status.pod_ip.clone();
    assert!(ip.starts_with("10.244."), "{ip}");
    let page_url = format!("http://{ip}:8080/index.html");
    let page = common::poll(Duration::from_secs(30), "the shared page", || {
        body(&page_url)
    })
    .await;
    assert_eq!(page, "shared-by-duo\n");
    let server = apis.join(",");
    let log = common::poll(Duration::from_secs(30), "the writer's log", || async {
        let (ok, out, _) = s::keel(&["logs", "duo", "-c", "writer", "--server", &server]);
        (ok && out.contains("writer-done")).then_some(out)
    })
    .await;
    assert!(log.contains("shared-by-duo"), "{log}");
    assert!(
        log.contains(&format!("ip={ip}")),
        "fieldRef status.podIP: {log}"
    );
    // kubectl exec runs inside the container (its filesystem, its
    // network, its environment), with stdin and the exit code.
    let k = Kubectl::new(&kubeconfig(tc.dir.path(), &apis[0], "admin", None));
    let o = k.run_with(
        &[
            "exec", "duo", "-c", "writer", "--", "sh", "-c",
            "cat /data/index.html; wget -q -O - http://localhost:8080/index.html; echo ip=$MY_IP; ls /bin/busybox; exit 7",
        ],
        None,
    );
    assert_eq!(o.code, Some(7), "{o:?}");
    assert_eq!(
        o.stdout,
        format!("shared-by-duo\nshared-by-duo\nip={ip}\n/bin/busybox\n"),
        "{o:?}"
    );
    let o = k.run_with(
        &["exec", "-i", "duo", "-c", "web", "--", "wc", "-l"],
        Some("a\nb\nc\n"),
    );
    assert_eq!((o.code, o.stdout.trim()), (Some(0), "3"), "{o:?}");

    // The memory limit is the cgroup's: the hog is OOM-killed, restarted.
    let hog = common::poll(
        Duration::from_secs(60),
        "hog OOM-killed and restarted",
        || async {
            let p = client.get::<Pod>("default", "hog").await.ok()?;
            let cs = p.status.container_statuses.first()?.clone();
            let last = cs.last_state.as_ref()?.terminated.clone()?;
            (cs.restart_count >= 1).then_some((cs, last))
        },
    )
    .await;
    assert_eq!(hog.1.reason, "OOMKilled", "{:?}", hog.1);
    assert_eq!(hog.1.exit_code, Some(137));
    let (ok, prev, err) = s::keel(&["logs", "hog", "--previous", "--server", &server]);
    assert!(
        ok && prev.starts_with("start"),
        "logs --previous: {prev} {err}"
    );

    // SIGKILL the agent; delete a pod meanwhile; a new agent adopts the
    // rest (same containers, still running, no restarts) and removes the
    // deleted pod's containers.
    let before = containers(&agent).await;
    let running_ids = |m: &BTreeMap<(String, String), Vec<(String, bool)>>, pod: &str| {
        let mut v: Vec<String> = m
            .iter()
            .filter(|((p, _), _)| p == pod)
            .flat_map(|(_, cs)| cs.iter().filter(|c| c.1).map(|c| c.0.clone()))
            .collect();
        v.sort();
        v
    };
    let duo_ids = running_ids(&before, "duo");
    assert_eq!(duo_ids.len(), 3, "sandbox + 2 containers: {before:?}");
    assert_eq!(running_ids(&before, "gone").len(), 2);
    agents.a.kill(0);
    client.delete::<Pod>("default", "gone").await.unwrap();
    agents.a.spawn(0);
    common::poll(
        Duration::from_secs(30),
        "gone's containers removed",
        || async {
            let now = containers(&agent).await;
            now.keys().all(|(p, _)| p != "gone").then_some(())
        },
    )
    .await;
    let after = containers(&agent).await;
    assert_eq!(
        running_ids(&after, "duo"),
        duo_ids,
        "adopted, not restarted"
    );
    let duo = client.get::<Pod>("default", "duo").await.unwrap();
    assert_eq!(duo.status.pod_ip, ip);
    assert!(
        duo.status
            .container_statuses
            .iter()
            .all(|c| c.restart_count == 0)
    );
    assert_eq!(
        body(&format!("http://{ip}:8080/index.html"))
            .await
            .as_deref(),
        Some("shared-by-duo\n")
    );
}
