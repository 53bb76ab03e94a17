//! The `portforward` subresource (`GET|POST /api/v1/namespaces/{ns}/pods/
//! {name}/portforward`), which `kubectl port-forward` (1.31) opens as a
//! WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io`: a SPDY
//! session tunneled in binary messages, whose streams name the pod's ports.
//! As for exec, the master checks the pod and relays the upgrade to the
//! agent of the pod's node (`node_link::relay_upgrade`); the SPDY session
//! itself is the agent's (`keel_agent::portforward`). kubectl's fallback,
//! a POST upgrading to plain `SPDY/3.1`, is relayed the same way. RBAC sees
//! `create pods/portforward`, for GET as for POST.

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
    let kind = if node_link::wants(&node_link::SPDY, headers) {
        &node_link::SPDY
    } else {
        &node_link::WEBSOCKET
    };
    let Some(upgrade) = node_link::asks(kind, headers, upgrade) else {
        return Err(ApiError::bad_request(
            "port-forward needs an upgrade: a WebSocket (SPDY/3.1+portforward.k8s.io) or SPDY/3.1",
        ));
    };
    let path = format!("/portforward/{}/{}", encode(ns), encode(name));
    let what = "port-forward";
    node_link::relay_upgrade(reg, creds, &pod, kind, &path, headers, upgrade, what).await
}
