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
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", m)
    }
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
    }
    pub fn conflict(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
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
