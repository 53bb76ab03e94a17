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

/// Reads the body, refusing it with 413 when it is larger than the limit.
pub async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("request body is larger than the {MAX_BODY_BYTES} byte limit"),
            )
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
