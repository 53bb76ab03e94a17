//! One Keel master's control plane: the Kubernetes-shaped REST API every
//! master serves, and the scheduler and controllers only the Raft leader runs.

pub mod error;
pub mod kinds;
pub mod registry;
pub mod strategy;
pub mod validate;
pub mod value;

pub use error::ApiError;
pub use registry::Registry;
pub mod api;
pub mod auth;
pub mod controllers;
pub mod events;
pub mod informer;
pub mod leader;
pub mod scheduler;
pub mod workqueue;
pub mod write;
