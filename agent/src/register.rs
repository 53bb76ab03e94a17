//! Node registration: creates (or updates) this node's Node object with its
//! capacity read from the machine (`/proc`), its labels (hostname, zone,
//! os/arch, the operator's own), its pod range as `spec.podCIDR`, its
//! addresses (InternalIP, Hostname, and `KeelAgent`: where this agent serves
//! container logs, which the masters proxy `keel logs` to) and a Ready
//! condition.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use keel_proto::api::Node;
use keel_proto::api::core::{NodeAddress, NodeStatus};
use keel_proto::api::meta::{Condition, now_rfc3339, set_condition};

use crate::Ctx;
use crate::error::AgentError;

/// The address type under which a node publishes its agent's endpoint.
pub const AGENT_ADDRESS_TYPE: &str = "KeelAgent";

/// The machine's CPUs and memory as Kubernetes quantities, and the pod limit.
pub fn capacity() -> BTreeMap<String, String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_string(), cpus.to_string()),
        ("memory".to_string(), format!("{mem_kib}Ki")),
        ("pods".to_string(), "110".to_string()),
    ])
}

/// The labels this node carries.
pub fn labels(ctx: &Ctx) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), ctx.cfg.name.clone()),
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        (
            "kubernetes.io/arch".to_string(),
            match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            }
            .to_string(),
        ),
    ]);
    if !ctx.cfg.zone.is_empty() {
        l.insert("topology.kubernetes.io/zone".into(), ctx.cfg.zone.clone());
    }
    l.extend(ctx.cfg.labels.clone());
    l
}

/// The node's status as this agent reports it, keeping `prev`'s transition times.
pub fn node_status(ctx: &Ctx, agent: SocketAddr, prev: &NodeStatus) -> NodeStatus {
    let now = now_rfc3339();
    let mut conditions = prev.conditions.clone();
    set_condition(
        &mut conditions,
        Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "KeelAgentReady".into(),
            message: "keel agent is posting ready status".into(),
            last_heartbeat_time: Some(now.clone()),
            ..Default::default()
        },
        &now,
    );
    let cap = capacity();
    NodeStatus {
        allocatable: cap.clone(),
        capacity: cap,
        conditions,
        addresses: vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: ctx.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: ctx.cfg.name.clone(),
            },
            NodeAddress {
                type_: AGENT_ADDRESS_TYPE.into(),
                address: agent.to_string(),
            },
        ],
    }
}

/// Creates or updates this node's Node object; `agent` is where it serves logs.
pub async fn register(ctx: &Ctx, agent: SocketAddr) -> Result<Node, AgentError> {
    let c = ctx.client.get();
    let mut node = Node::new("", &ctx.cfg.name);
    node.metadata.labels = labels(ctx);
    node.spec.pod_cidr = ctx
        .runtime
        .pod_cidr()
        .unwrap_or_else(|| ctx.cfg.pod_range.cidr());
    node.status = node_status(ctx, agent, &NodeStatus::default());
    match c.create(&node).await {
        Ok(n) => {
            tracing::info!(node = %ctx.cfg.name, "registered the node");
            return Ok(n);
        }
        Err(e) if e.code() == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // It exists (an earlier run): bring labels, podCIDR and status up to date.
    for _ in 0..5 {
        let mut cur: Node = c.get("", &ctx.cfg.name).await?;
        cur.metadata.labels.extend(labels(ctx));
        cur.spec.pod_cidr = ctx
            .runtime
            .pod_cidr()
            .unwrap_or_else(|| ctx.cfg.pod_range.cidr());
        let cur = match c.update(&cur).await {
            Ok(n) => n,
            Err(e) if e.code() == 409 => continue,
            Err(e) => return Err(e.into()),
        };
        let mut s = cur.clone();
        s.status = node_status(ctx, agent, &cur.status);
        match c.update_status(&s).await {
            Ok(n) => {
                tracing::info!(node = %ctx.cfg.name, "updated the existing node");
                return Ok(n);
            }
            Err(e) if e.code() == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::Config(format!(
        "node {} keeps changing under the agent; cannot register",
        ctx.cfg.name
    )))
}
