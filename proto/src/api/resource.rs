//! The `Resource` trait tying a Rust type to its kind, API group and REST
//! path, and the macro that declares each top-level object.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::meta::ObjectMeta;

/// A top-level API object stored under `/registry/<plural>/<namespace>/<name>`.
pub trait Resource: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static {
    const KIND: &'static str;
    /// `v1` for the core group, `apps/v1` and so on for named groups.
    const API_VERSION: &'static str;
    const PLURAL: &'static str;
    const NAMESPACED: bool;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

/// Declares a resource struct with `apiVersion`, `kind`, `metadata` and the
/// given body fields, and implements [`Resource`] for it.
#[macro_export]
macro_rules! resource {
    ($name:ident, $api:literal, $plural:literal, $ns:literal, { $($body:tt)* }) => {
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            #[serde(default)]
            pub api_version: String,
            #[serde(default)]
            pub kind: String,
            #[serde(default)]
            pub metadata: $crate::api::meta::ObjectMeta,
            $($body)*
        }

        impl $crate::api::resource::Resource for $name {
            const KIND: &'static str = stringify!($name);
            const API_VERSION: &'static str = $api;
            const PLURAL: &'static str = $plural;
            const NAMESPACED: bool = $ns;
            fn meta(&self) -> &$crate::api::meta::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut $crate::api::meta::ObjectMeta {
                &mut self.metadata
            }
        }

        impl $name {
            /// A new object with `apiVersion` and `kind` filled in.
            pub fn new(namespace: &str, name: &str) -> Self {
                let mut o = Self::default();
                o.api_version = $api.into();
                o.kind = stringify!($name).into();
                o.metadata.name = name.into();
                if $ns {
                    o.metadata.namespace = namespace.into();
                }
                o
            }
        }
    };
}

/// A list of objects as the list endpoints return it.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ListMeta,
    pub items: Vec<T>,
}

#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
}

/// One line of a `?watch=1` stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct WatchEvent<T> {
    /// ADDED, MODIFIED, DELETED (or ERROR with a Status object).
    #[serde(rename = "type")]
    pub type_: String,
    pub object: T,
}
