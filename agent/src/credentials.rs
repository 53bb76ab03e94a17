//! The agent's credentials as one shared handle: set from the bootstrap
//! result (`bootstrap::credentials`), replaced by the renewal loop
//! (`bootstrap::renewal_loop`) when the node certificate is renewed, and
//! read by whatever dials the masters next (a pod watch reconnecting). The
//! agent owns it; nothing in the process holds credentials globally.

use std::sync::{Arc, RwLock};

use keel_proto::pki::Credentials;

/// A cheaply cloned handle to the agent's current credentials.
#[derive(Clone, Default)]
pub struct SharedCredentials(Arc<RwLock<Credentials>>);

impl SharedCredentials {
    pub fn new(c: Credentials) -> Self {
        SharedCredentials(Arc::new(RwLock::new(c)))
    }

    /// The credentials as they are now.
    pub fn get(&self) -> Credentials {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the credentials (a renewed certificate).
    pub fn set(&self, c: Credentials) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_a_replacement() {
        let a = SharedCredentials::new(Credentials::plaintext());
        let b = a.clone();
        assert!(b.get().tls.is_none());
        a.set(Credentials::tls("ca", None).with_token("t"));
        assert!(b.get().tls.is_some());
        assert_eq!(b.get().token.as_deref(), Some("t"));
    }
}
