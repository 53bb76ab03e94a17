//! Typed access to the registry for the controllers and tests: the
//! JSON objects decoded into and encoded from `keel_proto::api` types.

use keel_proto::api::Resource;
use serde_json::{Value, json};

use super::Registry;
use crate::error::ApiError;
use crate::kinds;

impl Registry {
    pub async fn get_t<T: Resource>(&self, ns: &str, name: &str) -> Result<T, ApiError> {
        from_value(self.get(kinds::of::<T>(), ns, name).await?)
    }

    pub async fn list_t<T: Resource>(&self, ns: Option<&str>) -> Result<(Vec<T>, i64), ApiError> {
        let (items, rev) = self.list(kinds::of::<T>(), ns).await?;
        Ok((
            items
                .into_iter()
                .map(from_value)
                .collect::<Result<_, _>>()?,
            rev,
        ))
    }

    pub async fn create_t<T: Resource>(&self, obj: &T) -> Result<T, ApiError> {
        let mut o = obj.clone();
        o.meta_mut().resource_version.clear();
        let mut v = to_value(&o)?;
        v["apiVersion"] = json!(T::API_VERSION);
        v["kind"] = json!(T::KIND);
        from_value(self.create(kinds::of::<T>(), v).await?)
    }
}

pub fn to_value<T: serde::Serialize>(t: &T) -> Result<Value, ApiError> {
    serde_json::to_value(t).map_err(|e| ApiError::internal(e.to_string()))
}

pub fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::internal(format!("stored object: {e}")))
}
