//! The table of resource kinds the API serves: REST names, scope, and the
//! typed decoder that validates each object.

use keel_proto::api::{self, Resource};
use serde_json::Value;

use crate::error::ApiError;
use crate::{strategy, validate};

/// One served resource.
#[derive(Debug)]
pub struct Kind {
    pub kind: &'static str,
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    /// Kubernetes' short names (`po`, `deploy`), as discovery lists them.
    pub short: &'static [&'static str],
    pub namespaced: bool,
    /// Whether `status` is a subresource (the main PUT leaves it alone).
    pub has_status: bool,
    /// Whether `scale` is a subresource (`spec.replicas` as an `autoscaling/v1` Scale).
    pub has_scale: bool,
    /// Whether `kubectl get all` lists it (discovery category `all`).
    pub in_all: bool,
    /// Decodes and validates an object of this kind (the rules of every
    /// object, then its strategy's), returning it normalised.
    pub check: fn(Value) -> Result<Value, ApiError>,
    /// Adds the kind's JSON schema (and those of its parts) to a generator's
    /// definitions, for the OpenAPI documents; returns its reference.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl Kind {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The singular resource name used in messages (`pods` → `pods`), as Kubernetes says it.
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn checker<T: Resource>(v: Value) -> Result<Value, ApiError> {
    let obj: T = validate::decode(v)?;
    validate::object(&obj)?;
    let v = serde_json::to_value(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
    strategy::of(T::KIND).validate(&v)?;
    Ok(v)
}

macro_rules! kind {
    ($t:ty, $group:literal, $short:expr, $status:literal, $scale:literal, $all:literal) => {
        Kind {
            kind: <$t as Resource>::KIND,
            group: $group,
            version: "v1",
            plural: <$t as Resource>::PLURAL,
            short: $short,
            namespaced: <$t as Resource>::NAMESPACED,
            has_status: $status,
            has_scale: $scale,
            in_all: $all,
            check: checker::<$t>,
            schema: |g| g.subschema_for::<$t>(),
        }
    };
}

pub static KINDS: &[Kind] = &[
    kind!(api::Namespace, "", &["ns"], true, false, false),
    kind!(api::Node, "", &["no"], true, false, false),
    kind!(api::Pod, "", &["po"], true, false, true),
    kind!(api::Service, "", &["svc"], false, false, true),
    kind!(api::Endpoints, "", &["ep"], false, false, false),
    kind!(api::Event, "", &["ev"], false, false, false),
    kind!(api::ReplicaSet, "apps", &["rs"], true, true, true),
    kind!(api::Deployment, "apps", &["deploy"], true, true, true),
    kind!(api::Lease, "coordination.k8s.io", &[], false, false, false),
];

/// The kind served at `group`/`plural`.
pub fn by_path(group: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural)
}

/// The kind named by `kind` and `apiVersion` in a manifest.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.kind == kind && k.api_version() == api_version)
}

/// The kind a user typed on the command line: plural, singular, short name or Kind.
pub fn by_name(name: &str) -> Option<&'static Kind> {
    let n = name.to_ascii_lowercase();
    KINDS.iter().find(|k| {
        k.plural == n || k.kind.to_ascii_lowercase() == n || k.short.contains(&n.as_str())
    })
}

/// The kind of a typed resource.
pub fn of<T: Resource>() -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.kind == T::KIND)
        .expect("every Resource type is in KINDS")
}
