//! The control plane's errors, each one a Kubernetes `Status` with an HTTP
//! code and a reason a client can act on.

use keel_proto::api::Status;
use keel_store::EtcdError;

/// A failed API request or store operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    /// Kubernetes' `StatusReason`: NotFound, AlreadyExists, Conflict, Invalid, ...
    pub reason: &'static str,
    pub message: String,
    /// The object the error is about (`details` of the Status), when there is one.
    pub details: Option<Box<Details>>,
}

/// `Status.details`: the object an error names, as kubectl reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Details {
    pub name: String,
    pub group: String,
    /// The resource (plural) for most errors, the Kind for `Invalid`, as
    /// Kubernetes puts them in `details.kind`.
    pub kind: String,
    /// For `Invalid`: the field at fault and what is wrong with it.
    pub causes: Vec<(String, String)>,
}

impl Details {
    /// Of `name` and a resource as messages say it (`pods`, `deployments.apps`).
    fn of(resource: &str, name: &str) -> Details {
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            causes: Vec::new(),
        }
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// The same error, naming the object it is about.
    pub fn about(mut self, resource: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details::of(resource, name)));
        self
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", m)
    }
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found")).about(resource, name)
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .about(resource, name)
    }
    pub fn conflict(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .about(resource, name)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(422, "Invalid", m)
    }
    pub fn gone(m: impl Into<String>) -> Self {
        Self::new(410, "Expired", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(500, "InternalError", m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", m)
    }

    /// The `Status` body sent to the client.
    pub fn status(&self) -> Status {
        Status::failure(self.code, self.reason, self.message.clone())
    }

    /// A 422 about the object `name` of `kind` (`Deployment`) in `group`, as
    /// Kubernetes words it (`Deployment.apps "web" is invalid: spec.replicas:
    /// ...`) with the field path as its cause, so kubectl prints the same.
    /// Other errors, and 422s that already name their object, are unchanged.
    pub fn invalid_object(self, kind: &str, group: &str, name: &str) -> Self {
        if self.code != 422 || self.details.is_some() {
            return self;
        }
        let m = self.message.as_str();
        let (field, what) = if let Some(rest) = m.strip_prefix("invalid value at ") {
            rest.split_once(": ").unwrap_or((rest, ""))
        } else if let Some(rest) = m.strip_prefix("field not supported: ") {
            let (f, w) = rest.split_once(": ").unwrap_or((rest, ""));
            (f, w)
        } else {
            match m.split_once(": ") {
                Some((f, w)) if !f.contains(' ') => (f, w),
                _ => ("", m),
            }
        };
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = ApiError::invalid(format!("{gk} \"{name}\" is invalid: {m}"));
        e.details = Some(Box::new(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            causes: vec![(field.to_string(), what.to_string())],
        }));
        e
    }

    /// The `Status` body as JSON, with `details` when the error names an object.
    pub fn status_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.status()).unwrap_or_default();
        if let Some(d) = &self.details {
            let mut det = serde_json::json!({"name": d.name, "kind": d.kind});
            if !d.group.is_empty() {
                det["group"] = serde_json::json!(d.group);
            }
            if !d.causes.is_empty() {
                det["causes"] = d
                    .causes
                    .iter()
                    .map(|(f, m)| serde_json::json!({"reason": "FieldValueInvalid", "field": f, "message": m}))
                    .collect();
            }
            v["details"] = det;
        }
        v
    }

    pub fn is_conflict(&self) -> bool {
        self.code == 409
    }
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }
}

impl From<EtcdError> for ApiError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::NoLeader | EtcdError::Timeout | EtcdError::Unavailable(_) => {
                ApiError::unavailable(format!("the store is unavailable: {e}"))
            }
            EtcdError::Compacted => ApiError::gone(format!("too old resource version: {e}")),
            EtcdError::RequestTooLarge => {
                ApiError::new(413, "RequestEntityTooLarge", e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_objects_name_kind_and_field_as_kubernetes_does() {
        let e =
            ApiError::invalid("spec.replicas: Invalid value: must be greater than or equal to 0")
                .invalid_object("Deployment", "apps", "web");
        assert_eq!(
            e.message,
            "Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: must be greater than or equal to 0"
        );
        let v = e.status_json();
        assert_eq!(v["details"]["kind"], "Deployment");
        assert_eq!(v["details"]["causes"][0]["field"], "spec.replicas");
        // Other errors keep their own details.
        let nf = ApiError::not_found("deployments.apps", "web").invalid_object(
            "Deployment",
            "apps",
            "web",
        );
        assert_eq!(nf.status_json()["details"]["kind"], "deployments");
        assert_eq!(nf.status_json()["details"]["group"], "apps");
    }
}
