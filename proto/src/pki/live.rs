//! Serving a certificate that is renewed while the server runs (an agent's
//! node certificate): the certificate is resolved at each handshake from
//! what its holder has then.

use std::sync::Arc;

use super::{Pair, PkiError, certs, key, provider, server_builder};

/// The serving certificate of a server whose certificate is renewed while
/// it runs: `current` gives the pair to present now.
pub trait CurrentPair: Send + Sync {
    fn current(&self) -> Option<Pair>;
}

/// `server_config`, presenting at each handshake the pair `me` holds then
/// (an agent's endpoint keeps serving after its node certificate renews).
pub fn server_config_live(
    ca_pem: &str,
    me: Arc<dyn CurrentPair>,
    require_client: bool,
) -> Result<rustls::ServerConfig, PkiError> {
    let resolver = LiveCert {
        me,
        cache: std::sync::Mutex::new(None),
    };
    let mut c = server_builder(ca_pem, require_client)?.with_cert_resolver(Arc::new(resolver));
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// Resolves the certificate of a `CurrentPair`, parsed once per pair.
struct LiveCert {
    me: Arc<dyn CurrentPair>,
    cache: std::sync::Mutex<Option<(String, Arc<rustls::sign::CertifiedKey>)>>,
}

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCert")
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let pair = self.me.current()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pem, ck)) = cache.as_ref()
            && *pem == pair.cert_pem
        {
            return Some(ck.clone());
        }
        let signer = provider()
            .key_provider
            .load_private_key(key(&pair.key_pem).ok()?)
            .ok()?;
        let ck = Arc::new(rustls::sign::CertifiedKey::new(
            certs(&pair.cert_pem).ok()?,
            signer,
        ));
        *cache = Some((pair.cert_pem, ck.clone()));
        Some(ck)
    }
}
