//! Who may do what: identities (bearer tokens, certificate names), the
//! role-based access rules, and the audit log of mutating and denied requests.

pub mod audit;
pub mod credentials;
pub mod rbac;
pub mod throttle;
pub mod tokens;

pub use rbac::{Identity, Role};
