//! The `portforward` subresource (`GET|POST /api/v1/namespaces/{ns}/pods/
//! {name}/portforward`), which `kubectl port-forward` (1.31) opens as a
//! WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io`: a SPDY
//! session tunneled in binary messages, whose streams name the pod's ports.
//! As for exec, the master checks the pod and relays the upgrade to the
//! agent of the pod's node (`node_link::relay_websocket`); the SPDY session
//! itself is the agent's (`keel_agent::portforward`). RBAC sees `create
//! pods/portforward`, for GET as for POST. Plain SPDY (kubectl's fallback
//! when the WebSocket upgrade fails) is not served: a 400.

use axum::http::HeaderMap;
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use keel_proto::api::Pod;
use keel_proto::percent_encode as encode;
use keel_proto::pki;

use super::node_link;
use crate::error::ApiError;
use crate::registry::Registry;

/// Serves a port-forward request for pod `ns/name`; `upgrade` is the
/// client connection's upgrade once the `101` is sent.
pub async fn serve(
    reg: &Registry,
    creds: &pki::Credentials,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    let pod: Pod = reg.get_t(ns, name).await?;
    let Some(upgrade) = node_link::websocket(headers, upgrade) else {
        return Err(ApiError::bad_request(
            "port-forward needs a WebSocket upgrade (SPDY/3.1+portforward.k8s.io); SPDY is not served",
        ));
    };
    let path = format!("/portforward/{}/{}", encode(ns), encode(name));
    node_link::relay_websocket(reg, creds, &pod, &path, headers, upgrade, "port-forward").await
}
