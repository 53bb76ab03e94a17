//! Keel's API resources: Kubernetes-shaped objects (serde), the metadata they
//! share, and the quantities their resource requests use.

pub mod apps;
pub mod coordination;
pub mod core;
pub mod meta;
pub mod quantity;
pub mod resource;

pub use apps::{Deployment, ReplicaSet};
pub use coordination::Lease;
pub use core::{Endpoints, Event, Namespace, Node, Pod, Service};
pub use meta::{LabelSelector, ObjectMeta, OwnerReference, Status};
pub use resource::{List, Resource, WatchEvent};
