//! Objects in the store: each one JSON under `/registry/<resource>/<ns>/<name>`
//! (`/registry/<resource>/<name>` when cluster-scoped), its resourceVersion
//! the key's mod_revision. Every write is one Raft transaction whose compares
//! make it conditional on what was read, so concurrent writers and a deposed
//! leader get a conflict instead of overwriting newer state.
//!
//! The registry knows no kind in particular: what is particular to one
//! (a Service's cluster IP) is its strategy's (`strategy::KindStrategy`),
//! whose hooks `create`, `update` and `delete` call, and nothing else does.

use std::sync::Arc;

use keel_proto::api::{self, meta::now_rfc3339};
use keel_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
    compare, request_op, response_op,
};
use keel_proto::keelraft::command::Op;
use keel_proto::keelraft::command_result::Result as R;
use keel_proto::mvccpb::KeyValue;
use keel_proto::prefix_end;
use keel_store::Node;
use keel_store::mvcc::feed::Feed;
use rand::Rng;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::kinds::{self, Kind};
use crate::strategy;

mod merge;
mod raw;
mod typed;
mod watch;

use merge::merge_update;
pub use typed::{from_value, to_value};

pub use watch::{Change, Watch};

/// The namespaces every cluster has.
pub const DEFAULT_NAMESPACES: [&str; 3] = [
    "default",
    "kube-system",
    api::coordination::NODE_LEASE_NAMESPACE,
];

/// The store key of an object.
pub fn key(kind: &Kind, ns: &str, name: &str) -> String {
    if kind.namespaced {
        format!("/registry/{}/{ns}/{name}", kind.plural)
    } else {
        format!("/registry/{}/{name}", kind.plural)
    }
}

/// The key prefix of a kind's objects, in one namespace or in all.
pub fn prefix(kind: &Kind, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if kind.namespaced => format!("/registry/{}/{ns}/", kind.plural),
        _ => format!("/registry/{}/", kind.plural),
    }
}

/// Store access for the API server and the controllers.
#[derive(Clone)]
pub struct Registry {
    node: Arc<Node>,
    /// The leader's fencing token: every write also requires this key to be
    /// at this revision, so once a newer leader wrote its own token, nothing
    /// this (deposed) leader proposes applies. None for API requests.
    fence: Option<(Arc<str>, i64)>,
    /// A dry run (`?dryRun=All`): every write is checked as it would be
    /// (existence, namespace, resourceVersion) and answered with the object
    /// it would store, and nothing is written or claimed.
    dry_run: bool,
}

/// The key each new leader writes before its scheduler and controllers start.
pub const LEADER_FENCE_KEY: &str = "/keel/leader";

fn decode_kv(kv: &KeyValue, revision: i64) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    v["metadata"]["resourceVersion"] = Value::String(revision.to_string());
    Ok(v)
}

/// The stored form of an object; refused (413, nothing written) when it
/// exceeds etcd's request size limit, before it reaches Raft.
fn encode(v: &Value) -> Result<Vec<u8>, ApiError> {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&v).expect("a Value always serialises");
    if bytes.len() > keel_proto::MAX_REQUEST_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "the object is {} bytes; objects are limited to {} bytes (etcd's request size limit)",
                bytes.len(),
                keel_proto::MAX_REQUEST_BYTES
            ),
        ));
    }
    Ok(bytes)
}

fn cmp_create(key: &str, rev: i64, result: compare::CompareResult) -> Compare {
    Compare {
        result: result as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn cmp_mod(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

fn put(key: &str, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..Default::default()
        })),
    }
}

fn get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

pub use crate::value::str_at;

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..5)
        .map(|_| CHARS[r.random_range(0..CHARS.len())] as char)
        .collect()
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

impl Registry {
    pub fn new(node: Arc<Node>) -> Self {
        Registry {
            node,
            fence: None,
            dry_run: false,
        }
    }

    /// This registry as a dry run: checks every write, makes none.
    pub fn dry_run(&self) -> Registry {
        Registry {
            dry_run: true,
            ..self.clone()
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    async fn txn(&self, mut t: TxnRequest) -> Result<TxnResponse, ApiError> {
        if let Some((key, rev)) = &self.fence {
            t.compare.push(cmp_mod(key, *rev));
            // Last, so callers still find their own failure reads first.
            t.failure.push(get(key));
        }
        let r = match self.node.write(Op::Txn(t)).await?.result {
            Some(R::Txn(r)) => r,
            _ => return Err(ApiError::internal("unexpected store answer")),
        };
        if let (false, Some((_, rev))) = (r.succeeded, &self.fence) {
            let fence_now = match r.responses.last().and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(rr)) => {
                    rr.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0)
                }
                _ => 0,
            };
            if fence_now != *rev {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    "fenced: a newer leader has taken over; this master's controllers may not write",
                ));
            }
        }
        Ok(r)
    }

    /// Writes this member's leader fencing token for `term` and returns a
    /// registry whose every write is conditional on it: once a newer leader
    /// writes its token, writes through the returned registry fail with 409.
    pub async fn fenced(&self, term: u64) -> Result<Registry, ApiError> {
        let token = json!({"member": self.node.id, "term": term, "at": now_rfc3339()});
        // Never forwarded: only the leader itself may write its token (a
        // member with a stale view of leadership would otherwise fence out
        // the real leader through it).
        let t = TxnRequest {
            success: vec![put(
                LEADER_FENCE_KEY,
                serde_json::to_vec(&token).unwrap_or_default(),
            )],
            ..Default::default()
        };
        let r = match self.node.write_as_leader(Op::Txn(t)).await?.result {
            Some(R::Txn(r)) => r,
            _ => return Err(ApiError::internal("unexpected store answer")),
        };
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        Ok(Registry {
            node: self.node.clone(),
            fence: Some((Arc::from(LEADER_FENCE_KEY), rev)),
            dry_run: false,
        })
    }

    /// The current revision of the store, after a linearizable barrier.
    pub async fn revision(&self) -> Result<i64, ApiError> {
        self.node.read_barrier().await?;
        Ok(self.node.kv.revision())
    }

    /// Reads one object (linearizable).
    pub async fn get(&self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.node.read_barrier().await?;
        let k = key(kind, ns, name);
        let r = self.node.kv.range(&RangeRequest {
            key: k.into_bytes(),
            ..Default::default()
        })?;
        match r.kvs.first() {
            Some(kv) => decode_kv(kv, kv.mod_revision),
            None => Err(ApiError::not_found(&kind.resource(), name)),
        }
    }

    /// Lists a kind's objects (linearizable) with the revision they were read at.
    pub async fn list(&self, kind: &Kind, ns: Option<&str>) -> Result<(Vec<Value>, i64), ApiError> {
        self.node.read_barrier().await?;
        let p = prefix(kind, ns);
        let r = self.node.kv.range(&RangeRequest {
            range_end: prefix_end(p.as_bytes()),
            key: p.into_bytes(),
            ..Default::default()
        })?;
        let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let items = r
            .kvs
            .iter()
            .map(|kv| decode_kv(kv, kv.mod_revision))
            .collect::<Result<_, _>>()?;
        Ok((items, rev))
    }

    /// Creates an object that must not exist yet, filling in the fields the
    /// server owns (uid, creationTimestamp, generation, a generated name).
    pub async fn create(&self, kind: &Kind, mut obj: Value) -> Result<Value, ApiError> {
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::invalid("metadata: Required value"))?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let g = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            name = format!("{g}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
        let ns = if kind.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("resourceVersion");
        if self.dry_run {
            // What the create would refuse, without its claims or its write.
            if self.get(kind, &ns, &name).await.is_ok() {
                return Err(ApiError::already_exists(&kind.resource(), &name));
            }
            if kind.namespaced {
                self.get(kinds::of::<api::Namespace>(), "", &ns).await?;
            }
            return Ok(obj);
        }
        let strategy = strategy::of(kind.kind);
        strategy.prepare_create(&self.node, &mut obj).await?;
        let r = match self.create_txn(kind, &ns, &name, &obj).await {
            Ok(r) if r.succeeded => r,
            other => {
                strategy.abort_create(&self.node, &obj).await;
                other?
            }
        };
        if !r.succeeded {
            let exists = match r.responses.first().and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(rr)) => !rr.kvs.is_empty(),
                _ => false,
            };
            return Err(if exists {
                ApiError::already_exists(&kind.resource(), &name)
            } else {
                ApiError::not_found("namespaces", &ns)
            });
        }
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        Ok(obj)
    }

    /// The create-only transaction of `obj` (in an existing namespace).
    async fn create_txn(
        &self,
        kind: &Kind,
        ns: &str,
        name: &str,
        obj: &Value,
    ) -> Result<TxnResponse, ApiError> {
        let k = key(kind, ns, name);
        let mut compares = vec![cmp_create(&k, 0, compare::CompareResult::Equal)];
        if kind.namespaced {
            let ns_key = key(kinds::of::<api::Namespace>(), "", ns);
            compares.push(cmp_create(&ns_key, 0, compare::CompareResult::Greater));
        }
        self.txn(TxnRequest {
            compare: compares,
            success: vec![put(&k, encode(obj)?)],
            failure: vec![get(&k)],
        })
        .await
    }

    /// Replaces an object. With `status`, only its status changes (the
    /// `/status` subresource); otherwise everything but its status (for kinds
    /// with a status subresource) and the server-owned metadata. A set
    /// resourceVersion must match the stored one (409 otherwise).
    pub async fn update(&self, kind: &Kind, obj: Value, status: bool) -> Result<Value, ApiError> {
        let ns = str_at(&obj, &["metadata", "namespace"]);
        let ns = if kind.namespaced && ns.is_empty() {
            "default"
        } else {
            ns
        }
        .to_string();
        let name = str_at(&obj, &["metadata", "name"]).to_string();
        let want: Option<i64> = match str_at(&obj, &["metadata", "resourceVersion"]) {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion: invalid value {s:?}"))
            })?),
        };
        let old = self.get(kind, &ns, &name).await?;
        let old_rev: i64 = str_at(&old, &["metadata", "resourceVersion"])
            .parse()
            .unwrap_or(0);
        if want.is_some_and(|w| w != old_rev) {
            return Err(ApiError::conflict(&kind.resource(), &name));
        }
        let mut new = merge_update(kind, &old, obj, status);
        strategy::of(kind.kind).prepare_update(&old, &mut new)?;
        self.replace(kind, &ns, &name, old_rev, new).await
    }

    /// Writes `new` over the object at `expected` revision; 409 if it moved.
    pub async fn replace(
        &self,
        kind: &Kind,
        ns: &str,
        name: &str,
        expected: i64,
        new: Value,
    ) -> Result<Value, ApiError> {
        if self.dry_run {
            let cur = self.get(kind, ns, name).await?;
            if str_at(&cur, &["metadata", "resourceVersion"]) != expected.to_string() {
                return Err(ApiError::conflict(&kind.resource(), name));
            }
            let mut new = new;
            new["metadata"]["resourceVersion"] = json!(expected.to_string());
            return Ok(new);
        }
        let k = key(kind, ns, name);
        let finished = !str_at(&new, &["metadata", "deletionTimestamp"]).is_empty()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        let op = if finished {
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: k.clone().into_bytes(),
                        ..Default::default()
                    },
                )),
            }
        } else {
            put(&k, encode(&new)?)
        };
        let r = self
            .txn(TxnRequest {
                compare: vec![cmp_mod(&k, expected)],
                success: vec![op],
                failure: vec![get(&k)],
            })
            .await?;
        if !r.succeeded {
            let exists = matches!(
                r.responses.first().and_then(|r| r.response.as_ref()),
                Some(response_op::Response::ResponseRange(rr)) if !rr.kvs.is_empty()
            );
            return Err(if exists {
                ApiError::conflict(&kind.resource(), name)
            } else {
                ApiError::not_found(&kind.resource(), name)
            });
        }
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        let mut new = new;
        new["metadata"]["resourceVersion"] = json!(rev.to_string());
        if finished {
            // Gone from the store, whoever removed it (a delete, the last
            // finalizer dropped, a controller): what it held goes back.
            strategy::of(kind.kind).after_delete(&self.node, &new).await;
        }
        Ok(new)
    }

    /// Deletes an object (at `expected` revision when given). An object with
    /// finalizers is only marked with a deletionTimestamp.
    pub async fn delete(
        &self,
        kind: &Kind,
        ns: &str,
        name: &str,
        expected: Option<i64>,
    ) -> Result<Value, ApiError> {
        self.delete_with_finalizer(kind, ns, name, expected, None)
            .await
    }

    /// Deletes an object as `delete` does, first adding `finalizer` (when
    /// given, and not there yet) in the same write: the object is then only
    /// marked, until whoever owns the finalizer drops it (an orphan or
    /// foreground delete: `controllers/propagation.rs`).
    pub async fn delete_with_finalizer(
        &self,
        kind: &Kind,
        ns: &str,
        name: &str,
        expected: Option<i64>,
        finalizer: Option<&str>,
    ) -> Result<Value, ApiError> {
        let old = self.get(kind, ns, name).await?;
        let old_rev: i64 = str_at(&old, &["metadata", "resourceVersion"])
            .parse()
            .unwrap_or(0);
        if expected.is_some_and(|e| e != old_rev) {
            return Err(ApiError::conflict(&kind.resource(), name));
        }
        let mut marked = old.clone();
        if let Some(f) = finalizer {
            let list = &mut marked["metadata"]["finalizers"];
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(l) = list.as_array_mut()
                && !l.iter().any(|x| x == f)
            {
                l.push(json!(f));
            }
        }
        if marked["metadata"]["deletionTimestamp"].is_null() {
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        }
        // `replace` gives back what the object held once it is gone.
        self.replace(kind, ns, name, old_rev, marked).await
    }

    /// Follows the changes to a kind's objects after revision `after`.
    pub fn watch(&self, kind: &'static Kind, ns: Option<&str>, after: i64) -> Watch {
        let prefix = prefix(kind, ns).into_bytes();
        let end = prefix_end(&prefix);
        let (feed, _) = Feed::open_range(self.node.kv.clone(), after + 1, Some((prefix, end)));
        Watch {
            feed,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Creates the namespaces every cluster has (idempotent).
    pub async fn ensure_namespaces(&self) -> Result<(), ApiError> {
        for ns in DEFAULT_NAMESPACES {
            let obj = serde_json::to_value(api::Namespace::new("", ns)).expect("serialises");
            match self.create(kinds::of::<api::Namespace>(), obj).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("member", &self.node.id)
            .finish()
    }
}
