//! Kind strategies, as kube-apiserver's registry has them: what is
//! particular to one kind on the write path, behind one trait, so the
//! registry itself stays kind-agnostic. The registry calls the hooks from
//! its write path (`Registry::create`, `update`, `delete`); the kinds table
//! calls `validate` when it admits an object (`kinds::Kind::check`).
//!
//! Contract of a strategy:
//! - `validate`: the kind's own rules of a decoded object (422), after the
//!   rules every object has (`validate::object`). Pure.
//! - `prepare_create`: before the create's transaction; fills in what the
//!   server assigns for this kind and claims what it must own (a Service's
//!   cluster IP). If it fails nothing is written; if the transaction then
//!   fails, `abort_create` gives the claims back.
//! - `prepare_update`: on the merged object before it is written; keeps
//!   immutable fields (422 on a change). Pure.
//! - `after_delete`: once the object is gone from the store, whatever
//!   removed it (a delete, its last finalizer dropped, a controller's
//!   write), with the object as it was; frees what it owned. Best effort:
//!   it never fails the write.
//!
//! Strategies see the store (`keel_store::Node`), never the registry or the
//! API, so no module cycle runs through them.

mod pod;
mod service;
pub mod service_ip;
mod workload;

use futures::future::BoxFuture;
use keel_store::Node;
use serde_json::Value;

use crate::error::ApiError;

pub use pod::pod_spec;

/// What is particular to one kind on the write path (see the module doc).
pub trait KindStrategy: Sync {
    /// The kind's own rules of an admitted object.
    fn validate(&self, _obj: &Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// Before a create is written: server-assigned fields and claims.
    fn prepare_create<'a>(
        &'a self,
        _store: &'a Node,
        _obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    /// The create prepared as `obj` was not written: give its claims back.
    fn abort_create<'a>(&'a self, _store: &'a Node, _obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Before an update is written: `new` (already merged over `old`) keeps
    /// what may not change.
    fn prepare_update(&self, _old: &Value, _new: &mut Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// After a delete: frees what the object owned.
    fn after_delete<'a>(&'a self, _store: &'a Node, _gone: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Kinds with nothing particular on the write path.
struct Plain;
impl KindStrategy for Plain {}

/// The strategy of the kind named `kind` (`Pod`, `Service`, ...).
pub fn of(kind: &str) -> &'static dyn KindStrategy {
    match kind {
        "Pod" => &pod::PodStrategy,
        "Service" => &service::ServiceStrategy,
        "ReplicaSet" => &workload::ReplicaSetStrategy,
        "Deployment" => &workload::DeploymentStrategy,
        _ => &Plain,
    }
}
