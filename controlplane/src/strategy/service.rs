//! The Service strategy: ports and type, and the cluster IP, which the
//! server assigns on create (`service_ip`), keeps on every update and frees
//! when the Service is deleted.

use keel_proto::api;
use keel_store::Node;
use serde_json::{Value, json};

use super::{KindStrategy, service_ip};
use crate::error::ApiError;
use crate::validate::decode;

pub struct ServiceStrategy;

impl KindStrategy for ServiceStrategy {
    fn validate(&self, obj: &Value) -> Result<(), ApiError> {
        let s: api::Service = decode(obj.clone())?;
        if s.spec.ports.is_empty() {
            return Err(ApiError::invalid("spec.ports: Required value"));
        }
        for (i, p) in s.spec.ports.iter().enumerate() {
            if !(1..=65535).contains(&p.port) {
                return Err(ApiError::invalid(format!(
                    "spec.ports[{i}].port: Invalid value: {}: must be between 1 and 65535",
                    p.port
                )));
            }
        }
        match s.spec.type_.as_str() {
            "" | "ClusterIP" => Ok(()),
            t => Err(ApiError::invalid(format!(
                "spec.type: Unsupported value: {t:?}: supported values: \"ClusterIP\""
            ))),
        }
    }

    fn prepare_create<'a>(
        &'a self,
        store: &'a Node,
        obj: &'a mut Value,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(service_ip::before_create(store, obj))
    }

    fn abort_create<'a>(
        &'a self,
        store: &'a Node,
        obj: &'a Value,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(service_ip::release(store, cluster_ip(obj)))
    }

    fn prepare_update(&self, old: &Value, new: &mut Value) -> Result<(), ApiError> {
        keep_cluster_ip(old, new)
    }

    fn after_delete<'a>(
        &'a self,
        store: &'a Node,
        gone: &'a Value,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            // Only marked for deletion: the address is still the Service's.
            let finalizers_left = gone["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if !finalizers_left {
                service_ip::release(store, cluster_ip(gone)).await;
            }
        })
    }
}

fn cluster_ip(obj: &Value) -> Option<std::net::Ipv4Addr> {
    obj["spec"]["clusterIP"].as_str()?.parse().ok()
}

/// A Service keeps its clusterIP: filled in when the update left it out,
/// 422 when it tries to change it.
fn keep_cluster_ip(old: &Value, new: &mut Value) -> Result<(), ApiError> {
    let was = old["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    match new["spec"]["clusterIP"].as_str().unwrap_or("") {
        "" if !was.is_empty() => new["spec"]["clusterIP"] = json!(was),
        s if s == was => {}
        s => {
            return Err(ApiError::invalid(format!(
                "spec.clusterIP: Invalid value: {s:?}: field is immutable"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_the_cluster_ip() {
        let s = ServiceStrategy;
        let old = json!({"spec": {"clusterIP": "127.96.3.4"}});
        let mut new = json!({"spec": {}});
        s.prepare_update(&old, &mut new).unwrap();
        assert_eq!(new["spec"]["clusterIP"], "127.96.3.4");
        let mut same = old.clone();
        s.prepare_update(&old, &mut same).unwrap();
        let mut changed = json!({"spec": {"clusterIP": "127.96.9.9"}});
        assert_eq!(s.prepare_update(&old, &mut changed).unwrap_err().code, 422);
    }

    #[test]
    fn services_need_ports_and_a_supported_type() {
        let s = ServiceStrategy;
        let v = |spec: Value| json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":spec});
        assert!(s.validate(&v(json!({"ports":[{"port":80}]}))).is_ok());
        assert_eq!(s.validate(&v(json!({"ports":[]}))).unwrap_err().code, 422);
        assert_eq!(
            s.validate(&v(json!({"ports":[{"port":0}]})))
                .unwrap_err()
                .code,
            422
        );
        let lb = v(json!({"ports":[{"port":80}],"type":"LoadBalancer"}));
        assert_eq!(s.validate(&lb).unwrap_err().code, 422);
    }
}
