//! Request bodies in (JSON or YAML, bounded in size) and responses out (JSON,
//! or YAML when the client asks for it), errors as Kubernetes `Status`.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;

/// Request bodies larger than this are refused with 413, as Kubernetes' 3 MiB limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How far past its limit an oversized body is still read (and dropped)
/// before the refusal is sent. A client still sending when the answer comes
/// sees its write fail ("error sending request") instead of the 413, which
/// `cli/tests/api.rs` caught once in a clean-clone CI run; reading on lets
/// it finish and read the answer. Past this bound the connection is dropped.
pub const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// Why [`read_limited`] refused a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the {0} byte limit")]
    TooLarge(usize),
    #[error("reading the request body: {0}")]
    Read(String),
}

/// Reads a body of at most `limit` bytes. A larger one is refused, after
/// reading and dropping up to [`DRAIN_BYTES`] more of it.
pub async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    use futures::StreamExt;
    let mut data = body.into_data_stream();
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            out.extend_from_slice(&chunk);
        } else if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(out)
}

/// Reads the body, refusing it with 413 when it is larger than the limit.
pub async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    read_limited(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => ApiError::new(413, "RequestEntityTooLarge", e.to_string()),
            BodyError::Read(_) => ApiError::new(400, "BadRequest", e.to_string()),
        })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parses a JSON or YAML document (by Content-Type, or by trying JSON first).
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let ct = content_type(headers);
    let yaml = ct.contains("yaml");
    let v: Value = if yaml {
        parse_yaml(body)?
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) if ct.contains("json") => {
                return Err(ApiError::bad_request(format!("malformed JSON: {e}")));
            }
            Err(_) => parse_yaml(body)?,
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be an object (a JSON object or a YAML mapping)",
        ));
    }
    Ok(v)
}

pub fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed YAML: {e}")))
}

/// Whether the client asked for YAML.
pub fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("yaml"))
}

/// Serialises `v` as the client asked, with `code`.
pub fn respond<T: Serialize>(headers: &HeaderMap, code: u16, v: &T) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if wants_yaml(headers) {
        match serde_yaml_ng::to_string(v) {
            Ok(s) => (status, [(header::CONTENT_TYPE, "application/yaml")], s).into_response(),
            Err(e) => error(headers, &ApiError::internal(e.to_string())),
        }
    } else {
        match serde_json::to_vec(v) {
            Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
            Err(e) => error(headers, &ApiError::internal(e.to_string())),
        }
    }
}

/// An error as a `Status` body.
pub fn error(headers: &HeaderMap, e: &ApiError) -> Response {
    let s = e.status_json();
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if wants_yaml(headers) {
        serde_yaml_ng::to_string(&s)
            .unwrap_or_default()
            .into_bytes()
    } else {
        serde_json::to_vec(&s).unwrap_or_default()
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            if wants_yaml(headers) {
                "application/yaml"
            } else {
                "application/json"
            },
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_and_read_on_only_so_far() {
        let ok = read_limited(Body::from(vec![1u8; 10]), 10).await.unwrap();
        assert_eq!(ok.len(), 10);
        let e = read_limited(Body::from(vec![1u8; 11]), 10).await;
        assert!(matches!(e, Err(BodyError::TooLarge(10))), "{e:?}");
        // A body far past the drain bound is refused too (reading stops
        // there; the connection is then dropped by the server).
        use futures::StreamExt;
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = read.clone();
        let chunks =
            futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20])))
                .inspect(move |_| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
        let e = read_limited(Body::from_stream(chunks), 10).await;
        assert!(matches!(e, Err(BodyError::TooLarge(10))), "{e:?}");
        let mib = read.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(mib, DRAIN_BYTES / (1 << 20) + 1, "MiB chunks read");
    }
}
