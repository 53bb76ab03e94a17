//! The agent's credentials as one shared handle: set from the bootstrap
//! result (`bootstrap::credentials`), replaced by the renewal loop
//! (`bootstrap::renewal_loop`) when the node certificate is renewed, and
//! read by whatever dials the masters next (a pod watch reconnecting, the
//! REST client through `MasterClient`). The agent owns it; nothing in the
//! process holds credentials globally.

use std::sync::{Arc, Mutex, RwLock};

use keel_proto::client::ApiClient;
use keel_proto::pki::{self, Credentials};

/// A cheaply cloned handle to the agent's current credentials, with a
/// generation that every replacement bumps.
#[derive(Clone, Default)]
pub struct SharedCredentials(Arc<RwLock<(u64, Credentials)>>);

impl SharedCredentials {
    pub fn new(c: Credentials) -> Self {
        SharedCredentials(Arc::new(RwLock::new((0, c))))
    }

    /// The credentials as they are now.
    pub fn get(&self) -> Credentials {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// The credentials and their generation.
    fn current(&self) -> (u64, Credentials) {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn generation(&self) -> u64 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Replaces the credentials (a renewed certificate).
    pub fn set(&self, c: Credentials) {
        let mut g = self.0.write().unwrap_or_else(|e| e.into_inner());
        *g = (g.0 + 1, c);
    }
}

/// The node certificate as it is now, for the agent's endpoint, which
/// serves the renewed certificate from the next handshake on.
impl pki::CurrentPair for SharedCredentials {
    fn current(&self) -> Option<pki::Pair> {
        self.get().tls.and_then(|t| t.me)
    }
}

/// The agent's REST client for the masters, built from the current
/// credentials and built again when they change: after a renewal every
/// request carries the new certificate, before the old one expires.
#[derive(Clone)]
pub struct MasterClient {
    masters: Arc<Vec<String>>,
    creds: SharedCredentials,
    built: Arc<Mutex<(u64, Arc<ApiClient>)>>,
}

impl MasterClient {
    pub fn new(masters: &[String], creds: SharedCredentials) -> Self {
        let (generation, c) = creds.current();
        let client = Arc::new(ApiClient::new(masters, &c));
        MasterClient {
            masters: Arc::new(masters.to_vec()),
            creds,
            built: Arc::new(Mutex::new((generation, client))),
        }
    }

    /// The client for the credentials as they are now.
    pub fn get(&self) -> Arc<ApiClient> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if built.0 != self.creds.generation() {
            let (generation, c) = self.creds.current();
            tracing::info!("credentials changed: dialing the masters with the new ones");
            *built = (generation, Arc::new(ApiClient::new(&self.masters, &c)));
        }
        built.1.clone()
    }

    /// The masters' addresses.
    pub fn servers(&self) -> &[String] {
        &self.masters
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

    #[test]
    fn the_master_client_is_built_again_after_a_renewal_and_only_then() {
        let creds = SharedCredentials::new(Credentials::plaintext().with_token("old"));
        let masters = vec!["http://127.0.0.1:1".to_string()];
        let client = MasterClient::new(&masters, creds.clone());
        let first = client.get();
        assert!(
            Arc::ptr_eq(&first, &client.get()),
            "rebuilt without a change"
        );
        creds.set(Credentials::plaintext().with_token("renewed"));
        let second = client.clone().get();
        assert!(!Arc::ptr_eq(&first, &second), "still the old client");
        assert!(Arc::ptr_eq(&second, &client.get()));
        assert_eq!(client.servers(), masters.as_slice());
    }
}
