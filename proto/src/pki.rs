//! The cluster's public key infrastructure: a CA created at bootstrap
//! (rcgen), certificates it issues (masters' serving and peer certificates
//! with their addresses as SANs, clients by CN/O, nodes from their CSRs), and
//! the rustls configurations every connection uses: mutual TLS for Raft peers
//! and the client gRPC port, HTTPS for the REST API.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

mod live;
pub use live::{CurrentPair, server_config_live};

/// A PKI failure.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid PEM in {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("certificate request refused: {0}")]
    Refused(String),
}

/// The cluster CA: its certificate and signing key, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, as PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What an issued certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Both ends of mutual TLS (masters: serving, peer and client).
    ServerAndClient,
    /// A client only (users, agents).
    Client,
}

const VALIDITY_DAYS: i64 = 3650;
/// Node certificates are short-lived; agents renew them (see
/// `agent/src/bootstrap.rs`) once less than a third of this is left.
pub const NODE_VALIDITY_DAYS: i64 = 30;
/// Certificates are valid from this long before they are issued (clock skew).
pub const BACKDATE_SECS: i64 = 3600;

impl Ca {
    /// A new self-signed CA named after the cluster.
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("keel-ca-{cluster}"));
        dn.push(DnType::OrganizationName, "keel");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut p);
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Issues a certificate for `cn` (organisation `org`) valid for `sans`
    /// (IP addresses or DNS names).
    pub fn issue(
        &self,
        cn: &str,
        org: Option<&str>,
        sans: &[String],
        usage: Usage,
    ) -> Result<Pair, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = name(cn, org);
        p.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        leaf(&mut p, usage);
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's certificate request for `node:<name>`, whatever names
    /// the request asked for: a client certificate, and the serving
    /// certificate of the node's log endpoint under the one name
    /// `node_server_name(node)` (never an address, so a node can never pose
    /// as a master, whom clients reach by address).
    pub fn sign_node_csr(&self, csr_pem: &str, node: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Refused(format!("malformed certificate request: {e}")))?;
        csr.params.distinguished_name = name(&format!("node:{node}"), Some("keel:nodes"));
        csr.params.subject_alt_names = vec![SanType::DnsName(node_server_name(node).try_into()?)];
        csr.params.is_ca = IsCa::NoCa;
        leaf(&mut csr.params, Usage::ServerAndClient);
        let now = std::time::SystemTime::now();
        csr.params.not_after =
            (now + std::time::Duration::from_secs(NODE_VALIDITY_DAYS as u64 * 86_400)).into();
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn leaf(p: &mut CertificateParams, usage: Usage) {
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = match usage {
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    set_validity(p);
}

fn set_validity(p: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(BACKDATE_SECS as u64)).into();
    p.not_after = (now + std::time::Duration::from_secs(VALIDITY_DAYS as u64 * 86_400)).into();
}

/// The host part of a `host:port` address, without the brackets of an IPv6
/// address (`[::1]:7101` → `::1`): what a certificate names and a TLS
/// client verifies.
pub fn addr_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The TLS server name to verify a peer at `host:port` against (its host
/// part: an IP address or a DNS name, as tonic's `https://host:port` uses).
pub fn addr_server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = addr_host(addr);
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))
}

/// The name a node's log endpoint is verified against (its only SAN).
pub fn node_server_name(node: &str) -> String {
    format!("{node}.nodes.keel")
}

/// Checks that `csr_pem` is a well-formed, self-signed certificate request
/// for node `node` (common name `node:<node>`): a request naming another
/// node, or none, is refused.
pub fn check_csr(csr_pem: &str, node: &str) -> Result<(), PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Refused(format!("malformed certificate request: {e}")))?;
    let want = format!("node:{node}");
    let cn = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(|v| match v {
            rcgen::DnValue::PrintableString(s) => s.to_string(),
            rcgen::DnValue::Utf8String(s) => s.clone(),
            other => format!("{other:?}"),
        });
    if cn.as_deref() != Some(want.as_str()) {
        return Err(PkiError::Refused(format!(
            "the certificate request is for {:?}, not {want:?}",
            cn.unwrap_or_default()
        )));
    }
    Ok(())
}

/// When a certificate was issued (seconds since the epoch), and when it
/// expires.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let v = c.validity();
    Some((
        v.not_before.timestamp() + BACKDATE_SECS,
        v.not_after.timestamp(),
    ))
}

/// `validity` of a PEM certificate.
pub fn pem_validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = certs(cert_pem).ok()?.into_iter().next()?;
    validity(&der)
}

/// A new key and a certificate request for it (what an agent sends when it joins).
pub fn node_csr(node: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = name(&format!("node:{node}"), Some("keel:nodes"));
    let csr = p.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file readable only by its owner (0600), atomically.
pub fn write_private(path: &Path, data: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The admin client certificate's name in a PKI directory (admin.crt/.key).
pub const ADMIN_CERT: &str = "admin";
/// The admin bearer token's file in a PKI directory (0600).
pub const ADMIN_TOKEN: &str = "admin.token";

/// The files of a PKI directory.
pub struct PkiDir(pub PathBuf);

impl PkiDir {
    /// The admin's credentials in a directory made by `keel pki init`: the
    /// CA, the admin client certificate and the admin token.
    pub fn admin_credentials(&self) -> Result<Credentials, PkiError> {
        let token = read(&self.0.join(ADMIN_TOKEN))?.trim().to_string();
        Ok(Credentials {
            tls: Some(TlsBundle {
                ca_pem: read(&self.ca_cert())?,
                me: Some(self.load_pair(ADMIN_CERT)?),
            }),
            token: Some(token),
        })
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.key"))
    }

    pub fn load_ca(&self) -> Result<Ca, PkiError> {
        Ok(Ca {
            cert_pem: read(&self.ca_cert())?,
            key_pem: read(&self.ca_key())?,
        })
    }

    pub fn save_ca(&self, ca: &Ca) -> Result<(), PkiError> {
        write_private(&self.ca_key(), &ca.key_pem)?;
        write_private(&self.ca_cert(), &ca.cert_pem)
    }

    pub fn load_pair(&self, name: &str) -> Result<Pair, PkiError> {
        Ok(Pair {
            cert_pem: read(&self.cert(name))?,
            key_pem: read(&self.key(name))?,
        })
    }

    pub fn save_pair(&self, name: &str, p: &Pair) -> Result<(), PkiError> {
        write_private(&self.key(name), &p.key_pem)?;
        write_private(&self.cert(name), &p.cert_pem)
    }
}

pub(crate) fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if v.is_empty() {
        return Err(PkiError::Pem("no certificate".into()));
    }
    Ok(v)
}

pub(crate) fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        r.add(c).map_err(|e| PkiError::Tls(e.to_string()))?;
    }
    Ok(r)
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server that requires a client certificate from the CA (`require_client`)
/// or accepts clients without one (whose certificate, if any, must still be the CA's).
pub fn server_config(
    ca_pem: &str,
    me: &Pair,
    require_client: bool,
) -> Result<rustls::ServerConfig, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let mut c = server_builder(ca_pem, require_client)?
        .with_single_cert(certs(&me.cert_pem)?, key(&me.key_pem)?)
        .map_err(tls)?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// A server configuration builder that verifies clients against the CA.
pub(crate) fn server_builder(
    ca_pem: &str,
    require_client: bool,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, PkiError>
{
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        provider(),
    );
    let verifier = if require_client {
        verifier
    } else {
        verifier.allow_unauthenticated()
    };
    let verifier = verifier.build().map_err(|e| PkiError::Tls(e.to_string()))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_client_cert_verifier(verifier))
}

/// A client that trusts only the CA and presents `me` when given.
pub fn client_config(ca_pem: &str, me: Option<&Pair>) -> Result<rustls::ClientConfig, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_root_certificates(roots(ca_pem)?);
    match me {
        Some(p) => b
            .with_client_auth_cert(certs(&p.cert_pem)?, key(&p.key_pem)?)
            .map_err(tls),
        None => Ok(b.with_no_client_auth()),
    }
}

/// The organisation of masters' certificates (Raft peers, full access).
pub const ORG_MASTERS: &str = "keel:masters";
/// The organisation of node certificates (`CN=node:<name>`).
pub const ORG_NODES: &str = "keel:nodes";
/// Organisations of user certificates, by role.
pub const ORG_ADMIN: &str = "keel:admin";
pub const ORG_EDIT: &str = "keel:edit";
pub const ORG_VIEW: &str = "keel:view";

/// The TLS material of one process: the cluster CA it trusts and, for
/// mutual TLS, its own certificate.
#[derive(Clone)]
pub struct TlsBundle {
    pub ca_pem: String,
    pub me: Option<Pair>,
}

impl std::fmt::Debug for TlsBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key.
        f.debug_struct("TlsBundle")
            .field("has_identity", &self.me.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsBundle {
    /// tonic's server side of mutual TLS: a client without a certificate
    /// signed by the cluster CA fails the handshake.
    pub fn tonic_server(&self) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        let me = self
            .me
            .as_ref()
            .ok_or_else(|| PkiError::Tls("a server needs its own certificate".into()))?;
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &me.cert_pem,
                &me.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false))
    }

    /// tonic's client side: trusts only the cluster CA, presents our certificate.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some(me) = &self.me {
            c = c.identity(tonic::transport::Identity::from_pem(
                &me.cert_pem,
                &me.key_pem,
            ));
        }
        c
    }

    /// rustls client configuration (for reqwest and raw TLS).
    pub fn rustls_client(&self) -> Result<rustls::ClientConfig, PkiError> {
        client_config(&self.ca_pem, self.me.as_ref())
    }
}

/// How a client dials Keel masters: the cluster CA and a client
/// certificate (`tls`; `None`: plain text to masters run with `--insecure`),
/// and a bearer token for the REST API. Nothing reads it implicitly: whoever
/// knows the cluster builds one (the CLI from its config file, a harness
/// from its cluster's PKI, an agent from its bootstrap, a master from its own
/// certificate) and hands it to every client it makes (`ApiClient::new`,
/// `Credentials::endpoint`), so one process can talk to several clusters.
#[derive(Clone, Default)]
pub struct Credentials {
    pub tls: Option<TlsBundle>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key or a token.
        f.debug_struct("Credentials")
            .field("tls", &self.tls)
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Credentials {
    /// Plain text, no token (masters run with `--insecure`; etcd baselines).
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// The cluster CA and, when given, a client certificate; no token.
    pub fn tls(ca_pem: impl Into<String>, me: Option<Pair>) -> Self {
        Credentials {
            tls: Some(TlsBundle {
                ca_pem: ca_pem.into(),
                me,
            }),
            token: None,
        }
    }

    /// The same credentials with a bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A gRPC endpoint for a master's `host:port`: mutual TLS with these
    /// credentials' certificate when they have TLS, plain text otherwise.
    pub fn endpoint(
        &self,
        addr: &str,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        let addr = addr
            .trim()
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        match &self.tls {
            Some(t) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(t.tonic_client()),
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")),
        }
    }
}

/// The (CN, O) of a peer's leaf certificate.
pub fn subject(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let s = c.subject();
    let cn = s.iter_common_name().next()?.as_str().ok()?.to_string();
    let o = s
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .unwrap_or("")
        .to_string();
    Some((cn, o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs a TLS handshake in memory; returns the server's view of the client's certificate subject.
    fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
        name: &str,
    ) -> Result<Option<(String, String)>, String> {
        let mut s = rustls::ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        let sn =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let mut c =
            rustls::ClientConnection::new(Arc::new(client), sn).map_err(|e| e.to_string())?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets()
                    .map_err(|e| format!("server: {e}"))?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()
                    .map_err(|e| format!("client: {e}"))?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        // TLS 1.3: the server sees a bad client certificate only after the client's flight.
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        Ok(s.peer_certificates()
            .and_then(|c| c.first().and_then(subject)))
    }

    #[test]
    fn mutual_tls_accepts_the_cluster_and_refuses_strangers() {
        let ca = Ca::generate("test").unwrap();
        let master = ca
            .issue(
                "m1",
                Some("keel:masters"),
                &["127.0.0.1".into(), "localhost".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        let admin = ca
            .issue("admin", Some("keel:admin"), &[], Usage::Client)
            .unwrap();
        let other = Ca::generate("other").unwrap();
        let stranger = other
            .issue("admin", Some("keel:admin"), &[], Usage::Client)
            .unwrap();
        let server = || server_config(&ca.cert_pem, &master, true).unwrap();
        let got = handshake(
            server(),
            client_config(&ca.cert_pem, Some(&admin)).unwrap(),
            "127.0.0.1",
        )
        .unwrap();
        assert_eq!(got, Some(("admin".into(), "keel:admin".into())));
        assert!(
            handshake(
                server(),
                client_config(&ca.cert_pem, None).unwrap(),
                "127.0.0.1"
            )
            .is_err(),
            "no client cert"
        );
        assert!(
            handshake(
                server(),
                client_config(&ca.cert_pem, Some(&stranger)).unwrap(),
                "127.0.0.1"
            )
            .is_err(),
            "wrong CA client"
        );
        assert!(
            handshake(
                server(),
                client_config(&other.cert_pem, Some(&admin)).unwrap(),
                "127.0.0.1"
            )
            .is_err(),
            "client trusting another CA"
        );
        assert!(
            handshake(
                server(),
                client_config(&ca.cert_pem, Some(&admin)).unwrap(),
                "10.9.9.9"
            )
            .is_err(),
            "address not in SANs"
        );
        // Optional client certificates (the REST API): anonymous allowed, strangers still refused.
        let optional = || server_config(&ca.cert_pem, &master, false).unwrap();
        assert_eq!(
            handshake(
                optional(),
                client_config(&ca.cert_pem, None).unwrap(),
                "localhost"
            )
            .unwrap(),
            None
        );
        assert!(
            handshake(
                optional(),
                client_config(&ca.cert_pem, Some(&stranger)).unwrap(),
                "localhost"
            )
            .is_err()
        );
    }

    #[test]
    fn node_csrs_are_signed_as_their_node_only() {
        let ca = Ca::generate("test").unwrap();
        let (csr, key) = node_csr("n1").unwrap();
        let cert = ca.sign_node_csr(&csr, "n1").unwrap();
        let master = ca
            .issue("m1", None, &["127.0.0.1".into()], Usage::ServerAndClient)
            .unwrap();
        let node = Pair {
            cert_pem: cert,
            key_pem: key,
        };
        let got = handshake(
            server_config(&ca.cert_pem, &master, true).unwrap(),
            client_config(&ca.cert_pem, Some(&node)).unwrap(),
            "127.0.0.1",
        )
        .unwrap();
        assert_eq!(got, Some(("node:n1".into(), "keel:nodes".into())));
        assert!(ca.sign_node_csr("garbage", "n1").is_err());
        // The node serves its log endpoint under its node name only: a
        // client dialing a master's address never accepts a node certificate.
        let serve = |name: &str| {
            handshake(
                server_config(&ca.cert_pem, &node, true).unwrap(),
                client_config(&ca.cert_pem, Some(&master)).unwrap(),
                name,
            )
        };
        assert!(serve(&node_server_name("n1")).is_ok());
        assert!(serve("127.0.0.1").is_err());
        assert!(serve(&node_server_name("n2")).is_err());
    }

    #[test]
    fn pki_dirs_round_trip_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = PkiDir(d.path().join("pki"));
        let ca = Ca::generate("t").unwrap();
        dir.save_ca(&ca).unwrap();
        assert_eq!(dir.load_ca().unwrap(), ca);
        let mode = std::fs::metadata(dir.ca_key())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
