//! Cluster IPs of Services, allocated by the Service strategy from the service
//! range (127.96.0.0/16: loopback, so every agent can listen on them without
//! root). Each allocation is a key `/keel/serviceips/<ip>` written with a
//! create-only compare in a Raft transaction, so two masters never hand out
//! the same address. A clusterIP given in the manifest is honoured when it
//! is in the range and free (422 otherwise); it never changes afterwards.
//!
//! The claim is written before the Service and released when its creation
//! fails or the Service is deleted through the registry; a master dying
//! between claim and create leaks one address (never a duplicate).

use std::net::Ipv4Addr;

use keel_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use keel_proto::keelraft::command::Op;
use keel_proto::keelraft::command_result::Result as R;
use keel_proto::prefix_end;
use keel_store::Node;
use rand::Rng;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::value::str_at;

/// The service range: 127.96.0.0/16.
pub const RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(127, 96, 0, 0), 16);
const PREFIX: &str = "/keel/serviceips/";

/// Whether `ip` is a usable address of the service range (not its first or last).
pub fn in_range(ip: Ipv4Addr) -> bool {
    let (base, _) = RANGE;
    let (o, b) = (ip.octets(), base.octets());
    o[0] == b[0] && o[1] == b[1] && !(o[2] == 0 && o[3] == 0) && !(o[2] == 255 && o[3] == 255)
}

fn range_text() -> String {
    format!("{}/{}", RANGE.0, RANGE.1)
}

/// A random candidate address of the range.
pub fn random_candidate() -> Ipv4Addr {
    let b = RANGE.0.octets();
    let n: u16 = rand::rng().random_range(1..u16::MAX);
    Ipv4Addr::new(b[0], b[1], (n >> 8) as u8, n as u8)
}

fn claim_key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

/// Claims `ip` for `owner` (`namespace/name`); false when it is taken.
async fn claim(store: &Node, ip: Ipv4Addr, owner: &str) -> Result<bool, ApiError> {
    let k = claim_key(ip);
    let t = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: k.clone().into_bytes(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into_bytes(),
                value: owner.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    match store.write(Op::Txn(t)).await?.result {
        Some(R::Txn(r)) => Ok(r.succeeded),
        _ => Err(ApiError::internal("unexpected store answer")),
    }
}

/// Gives an address back (best effort).
pub async fn release(store: &Node, ip: Option<Ipv4Addr>) {
    let Some(ip) = ip else { return };
    let op = Op::DeleteRange(DeleteRangeRequest {
        key: claim_key(ip).into_bytes(),
        ..Default::default()
    });
    if let Err(e) = store.write(op).await {
        tracing::warn!(%ip, error = %e, "cannot release a service IP");
    }
}

/// Before a Service is created: claims the clusterIP it asks for, or a
/// free one, and writes it into the object (to release if the creation
/// fails).
pub async fn before_create(store: &Node, obj: &mut Value) -> Result<(), ApiError> {
    let owner = format!(
        "{}/{}",
        str_at(obj, &["metadata", "namespace"]),
        str_at(obj, &["metadata", "name"])
    );
    let ip = match str_at(obj, &["spec", "clusterIP"]) {
        "" => allocate(store, &owner).await?,
        "None" => {
            return Err(ApiError::invalid(
                "spec.clusterIP: Unsupported value: \"None\": headless Services are not supported",
            ));
        }
        s => {
            let ip: Ipv4Addr = s.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "spec.clusterIP: Invalid value: {s:?}: must be a valid IPv4 address"
                ))
            })?;
            if !in_range(ip) {
                return Err(ApiError::invalid(format!(
                    "spec.clusterIP: Invalid value: {s:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                    range_text()
                )));
            }
            if !claim(store, ip, &owner).await? {
                return Err(ApiError::invalid(format!(
                    "spec.clusterIP: Invalid value: {s:?}: provided IP is already allocated"
                )));
            }
            ip
        }
    };
    obj["spec"]["clusterIP"] = json!(ip.to_string());
    Ok(())
}

async fn allocate(store: &Node, owner: &str) -> Result<Ipv4Addr, ApiError> {
    // Random probes find a free address at once until the range is nearly full.
    for _ in 0..32 {
        let ip = random_candidate();
        if in_range(ip) && claim(store, ip, owner).await? {
            return Ok(ip);
        }
    }
    // Then scan for the first free one.
    let r = store.kv.range(&RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: prefix_end(PREFIX.as_bytes()),
        keys_only: true,
        ..Default::default()
    })?;
    let used: std::collections::HashSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
    let b = RANGE.0.octets();
    for n in 1..u16::MAX {
        let ip = Ipv4Addr::new(b[0], b[1], (n >> 8) as u8, n as u8);
        if !used.contains(claim_key(ip).as_bytes()) && claim(store, ip, owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::new(
        500,
        "InternalError",
        format!(
            "failed to allocate a serviceIP: the range {} is full",
            range_text()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_membership_and_candidates() {
        assert!(in_range("127.96.0.1".parse().unwrap()));
        assert!(in_range("127.96.200.7".parse().unwrap()));
        assert!(!in_range("127.96.0.0".parse().unwrap()));
        assert!(!in_range("127.96.255.255".parse().unwrap()));
        assert!(!in_range("127.97.0.1".parse().unwrap()));
        assert!(!in_range("10.96.0.1".parse().unwrap()));
        for _ in 0..1000 {
            let ip = random_candidate();
            assert_eq!(&ip.octets()[..2], &[127, 96]);
        }
    }
}
