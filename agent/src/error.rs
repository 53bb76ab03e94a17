//! The agent's errors at its library boundary: what failed and where, so the
//! binary can print one precise line.

use keel_proto::client::ClientError;

use crate::runtime::RuntimeError;

/// A failure of the agent itself (a pod's failure is reported in its status instead).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API request failed: {0}")]
    Api(Box<ClientError>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("state file {path}: {message}")]
    State { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl AgentError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError::Api(Box::new(e))
    }
}
