//! The Docker network of one agent: a bridge network named `keel-<agent>`
//! with a private /24 of 10.244.0.0/16 (N from a hash of the agent's
//! identity, the next free one when Docker reports an overlap), labelled
//! with the node. Pod sandboxes join it and take their pod IP from it; the
//! host reaches those IPs through the bridge, so the Service proxy forwards
//! to them as to any pod IP. The network outlives the agent (pods do too).

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};

use super::{LABEL_AGENT, LABEL_NODE, api_error, is_status};
use crate::runtime::RuntimeError;

/// FNV-1a, as the loopback pod ranges use.
pub fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The subnet of an existing network.
fn subnet_of(n: &bollard::models::NetworkInspect) -> Option<String> {
    n.ipam
        .as_ref()?
        .config
        .as_ref()?
        .iter()
        .find_map(|c| c.subnet.clone())
}

/// Finds or creates the agent's network; returns its subnet.
pub async fn ensure(
    docker: &Docker,
    name: &str,
    node: &str,
    agent: &str,
) -> Result<String, RuntimeError> {
    if let Ok(n) = docker.inspect_network(name, None).await {
        return subnet_of(&n).ok_or_else(|| {
            RuntimeError::Setup(format!("docker network {name} exists without a subnet"))
        });
    }
    let start = fnv(agent) % 254;
    for k in 0..254 {
        let n = (start + k) % 254 + 1;
        let subnet = format!("10.244.{n}.0/24");
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.clone()),
                    gateway: Some(format!("10.244.{n}.1")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([
                (LABEL_NODE.to_string(), node.to_string()),
                (LABEL_AGENT.to_string(), agent.to_string()),
            ])),
            ..Default::default()
        };
        match docker.create_network(req).await {
            Ok(_) => {
                tracing::info!(network = name, %subnet, "created the node's docker network");
                return Ok(subnet);
            }
            Err(e) if e.to_string().contains("overlap") => continue,
            Err(e) if is_status(&e, 409) || e.to_string().contains("already exists") => {
                // Another start raced us: use theirs.
                let n = docker
                    .inspect_network(name, None)
                    .await
                    .map_err(|e| api_error("inspecting the network", e))?;
                return subnet_of(&n).ok_or_else(|| {
                    RuntimeError::Setup(format!("docker network {name} has no subnet"))
                });
            }
            Err(e) => return Err(api_error(&format!("creating docker network {name}"), e)),
        }
    }
    Err(RuntimeError::Setup(
        "no free /24 left in 10.244.0.0/16 for the node's docker network".into(),
    ))
}
