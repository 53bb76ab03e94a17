//! The typed REST client of the Keel API, used by the CLI, agents and tests:
//! any master can answer, so requests fail over to the next server when one
//! cannot be reached.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{List, Resource, Status, WatchEvent};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error `Status`.
    #[error("{} ({}): {}", .0.reason, .0.code, .0.message)]
    Api(Box<Status>),
    /// No server could be reached.
    #[error("no API server reachable ({0})")]
    Unreachable(String),
    #[error("bad response: {0}")]
    Decode(String),
    #[error("client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP code of an API error (0 for transport failures).
    pub fn code(&self) -> u16 {
        match self {
            ClientError::Api(s) => s.code,
            _ => 0,
        }
    }
}

/// The path prefix of a resource's API group (`/api/v1`, `/apis/apps/v1`).
pub fn group_prefix(api_version: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    }
}

/// The collection path of `T` in `ns` (all namespaces when `ns` is empty).
pub fn collection<T: Resource>(ns: &str) -> String {
    let g = group_prefix(T::API_VERSION);
    if T::NAMESPACED && !ns.is_empty() {
        format!("{g}/namespaces/{ns}/{}", T::PLURAL)
    } else {
        format!("{g}/{}", T::PLURAL)
    }
}

/// The path of one object of `T`.
pub fn object<T: Resource>(ns: &str, name: &str) -> String {
    format!("{}/{name}", collection::<T>(ns))
}

/// How a client proves who it is and whom it trusts (see `pki::Credentials`).
pub use crate::pki::Credentials;

/// A client of one cluster's API servers.
pub struct ApiClient {
    servers: Vec<String>,
    http: reqwest::Client,
    /// `Bearer <token>`, sent with every request.
    auth: Option<reqwest::header::HeaderValue>,
    /// The server that answered last; tried first.
    current: AtomicUsize,
    /// Why the configured credentials could not be used (every request fails).
    broken: Option<String>,
}

impl ApiClient {
    /// A client of `servers` (base URLs or `host:port`) built from `creds`:
    /// HTTPS pinned to the cluster CA with the client certificate when they
    /// have TLS, plain HTTP otherwise, and their token on every request. If
    /// the credentials cannot be used (a bad PEM), the client never falls
    /// back to plain text: every request reports why.
    pub fn new(servers: &[String], creds: &Credentials) -> Self {
        Self::try_new(servers, creds).unwrap_or_else(|e| {
            let mut c = Self::try_new(servers, &Credentials::plaintext())
                .expect("a plain HTTP client always builds");
            c.broken = Some(e.to_string());
            c
        })
    }

    /// As `new`, but unusable credentials are an error here.
    /// `host:port` servers get `https://` with a CA, `http://` without.
    pub fn try_new(servers: &[String], creds: &Credentials) -> Result<Self, ClientError> {
        let scheme = if creds.tls.is_some() { "https" } else { "http" };
        let servers = servers
            .iter()
            .map(|s| {
                let s = s.trim().trim_end_matches('/');
                if s.contains("://") {
                    s.to_string()
                } else {
                    format!("{scheme}://{s}")
                }
            })
            .collect();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(t) = &creds.tls {
            let tls = t
                .rustls_client()
                .map_err(|e| ClientError::Config(e.to_string()))?;
            b = b.use_preconfigured_tls(tls);
        }
        let http = b.build().map_err(|e| ClientError::Config(e.to_string()))?;
        let auth = match &creds.token {
            Some(t) => {
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| ClientError::Config("the token has invalid characters".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(ApiClient {
            servers,
            http,
            auth,
            current: AtomicUsize::new(0),
            broken: None,
        })
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Sends a request, trying each server in turn while they cannot be
    /// reached (or answer 503 because their store has no leader yet).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        if let Some(e) = &self.broken {
            return Err(ClientError::Config(e.clone()));
        }
        let n = self.servers.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no servers configured");
        for attempt in 0..n * 2 {
            let i = (start + attempt) % n;
            let Some(base) = self.servers.get(i) else {
                break;
            };
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(a) = &self.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a.clone());
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some((ct, b)) = &body {
                req = req.header("Content-Type", *ct).body(b.clone());
            }
            match req.send().await {
                Ok(r) if r.status().as_u16() == 503 && attempt + 1 < n * 2 => {
                    last = format!("{base}: 503");
                }
                Ok(r) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) if e.is_connect() => last = format!("{base}: {e}"),
                Err(e) if e.is_timeout() => last = format!("{base}: timed out"),
                Err(e) => return Err(ClientError::Unreachable(format!("{base}: {e}"))),
            }
            if attempt + 1 >= n {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Err(ClientError::Unreachable(last))
    }

    /// Sends a request and decodes a 2xx JSON answer; other answers become
    /// `ClientError::Api` with the server's `Status`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<T, ClientError> {
        let r = self
            .send(method, path, body, Some(Duration::from_secs(30)))
            .await?;
        let code = r.status().as_u16();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !(200..300).contains(&code) {
            let s = serde_json::from_slice::<Status>(&bytes).unwrap_or_else(|_| {
                Status::failure(code, "Unknown", String::from_utf8_lossy(&bytes).to_string())
            });
            return Err(ClientError::Api(Box::new(s)));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn get_value(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn get<T: Resource>(&self, ns: &str, name: &str) -> Result<T, ClientError> {
        self.call(reqwest::Method::GET, &object::<T>(ns, name), None)
            .await
    }

    /// Lists `T` in `ns` (all namespaces when empty), filtered by a label selector.
    pub async fn list<T: Resource>(
        &self,
        ns: &str,
        selector: &str,
    ) -> Result<List<T>, ClientError> {
        let mut path = collection::<T>(ns);
        if !selector.is_empty() {
            path = format!("{path}?labelSelector={}", encode(selector));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// POSTs `body` as JSON to `path` and decodes the answer (Keel's own
    /// endpoints: tokens, bootstrap).
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        self.call(reqwest::Method::POST, path, Some(json_body(body)?))
            .await
    }

    pub async fn create<T: Resource>(&self, obj: &T) -> Result<T, ClientError> {
        let path = collection::<T>(&obj.meta().namespace_or_default::<T>());
        self.call(reqwest::Method::POST, &path, Some(json_body(obj)?))
            .await
    }

    /// Replaces an object; its resourceVersion must still be current.
    pub async fn update<T: Resource>(&self, obj: &T) -> Result<T, ClientError> {
        let m = obj.meta();
        let path = object::<T>(&m.namespace_or_default::<T>(), &m.name);
        self.call(reqwest::Method::PUT, &path, Some(json_body(obj)?))
            .await
    }

    /// Replaces an object's status (the `/status` subresource).
    pub async fn update_status<T: Resource>(&self, obj: &T) -> Result<T, ClientError> {
        let m = obj.meta();
        let path = format!(
            "{}/status",
            object::<T>(&m.namespace_or_default::<T>(), &m.name)
        );
        self.call(reqwest::Method::PUT, &path, Some(json_body(obj)?))
            .await
    }

    /// Applies a JSON merge patch to an object.
    pub async fn merge_patch<T: Resource>(
        &self,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(patch).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(
            reqwest::Method::PATCH,
            &object::<T>(ns, name),
            Some(("application/merge-patch+json", body)),
        )
        .await
    }

    pub async fn delete<T: Resource>(&self, ns: &str, name: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::DELETE, &object::<T>(ns, name), None)
            .await
    }

    /// Watches a collection path (with its query) from `resource_version`
    /// (empty: the current objects as ADDED, then changes).
    pub async fn watch(
        &self,
        path: &str,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<Value>, ClientError>> + use<>, ClientError>
    {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut p = format!("{path}{sep}watch=1");
        if !resource_version.is_empty() {
            p = format!("{p}&resourceVersion={resource_version}");
        }
        let r = self.send(reqwest::Method::GET, &p, None, None).await?;
        let code = r.status().as_u16();
        if !(200..300).contains(&code) {
            let bytes = r.bytes().await.unwrap_or_default();
            let s = serde_json::from_slice::<Status>(&bytes).unwrap_or_else(|_| {
                Status::failure(code, "Unknown", String::from_utf8_lossy(&bytes).to_string())
            });
            return Err(ClientError::Api(Box::new(s)));
        }
        Ok(lines(r.bytes_stream()).map(|l| {
            let l = l?;
            serde_json::from_slice::<WatchEvent<Value>>(&l)
                .map_err(|e| ClientError::Decode(e.to_string()))
        }))
    }
}

/// Splits a byte stream into newline-terminated lines.
fn lines(
    s: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> impl Stream<Item = Result<Vec<u8>, ClientError>> {
    futures::stream::unfold((s, Vec::<u8>::new()), |(mut s, mut buf)| async move {
        loop {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                return Some((Ok(line[..line.len() - 1].to_vec()), (s, buf)));
            }
            match s.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    return Some((Err(ClientError::Unreachable(e.to_string())), (s, buf)));
                }
                None => return None,
            }
        }
    })
}

fn json_body<T: serde::Serialize>(obj: &T) -> Result<(&'static str, Vec<u8>), ClientError> {
    serde_json::to_vec(obj)
        .map(|b| ("application/json", b))
        .map_err(|e| ClientError::Decode(e.to_string()))
}

/// Percent-encodes a query value.
pub use crate::percent_encode as encode;

impl crate::api::ObjectMeta {
    /// The namespace, or `default` for namespaced kinds without one.
    pub fn namespace_or_default<T: Resource>(&self) -> String {
        if T::NAMESPACED && self.namespace.is_empty() {
            "default".into()
        } else {
            self.namespace.clone()
        }
    }
}
