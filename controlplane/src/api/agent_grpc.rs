//! The agent-facing gRPC service (`proto/keel/agent.proto`), served on the
//! REST API's port: a node agent watches the pods bound to its node here,
//! from a revision, with the same change feed as REST watches.

use std::pin::Pin;

use futures::Stream;
use keel_proto::api::Pod;
use keel_proto::keelagent::agent_server::{Agent, AgentServer};
use keel_proto::keelagent::{PodEvent, WatchPodsRequest};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::kinds;
use crate::registry::{Registry, str_at};

/// The service over one master's registry.
pub struct AgentService {
    reg: Registry,
}

/// The service, ready to be mounted next to the REST routes.
pub fn server(reg: Registry) -> AgentServer<AgentService> {
    AgentServer::new(AgentService { reg })
}

fn status(e: ApiError) -> Status {
    match e.code {
        410 => Status::out_of_range(e.message),
        404 => Status::not_found(e.message),
        503 => Status::unavailable(e.message),
        _ => Status::internal(e.message),
    }
}

fn on_node(pod: &Value, node: &str) -> bool {
    str_at(pod, &["spec", "nodeName"]) == node
}

#[tonic::async_trait]
impl Agent for AgentService {
    type WatchPodsStream = Pin<Box<dyn Stream<Item = Result<PodEvent, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node_name))]
    async fn watch_pods(
        &self,
        req: Request<WatchPodsRequest>,
    ) -> Result<Response<Self::WatchPodsStream>, Status> {
        // Node restriction: a node watches only its own pods (the auth layer
        // put the caller's identity in the request's extensions).
        let caller = req.extensions().get::<crate::auth::Identity>().cloned();
        let WatchPodsRequest {
            node_name,
            resource_version,
        } = req.into_inner();
        if node_name.is_empty() {
            return Err(Status::invalid_argument("node_name is required"));
        }
        if let Some(me) = caller.as_ref().and_then(|c| c.node_name())
            && me != node_name
        {
            return Err(Status::permission_denied(format!(
                "node {me} may only watch its own pods, not those of node {node_name}"
            )));
        }
        let kind = kinds::of::<Pod>();
        let (first, after) = if resource_version > 0 {
            let compacted = self.reg.node().kv.compact_revision();
            if resource_version < compacted {
                return Err(Status::out_of_range(format!(
                    "too old resource version: {resource_version} (compacted to {compacted})"
                )));
            }
            (None, resource_version)
        } else {
            let (items, rev) = self.reg.list(kind, None).await.map_err(status)?;
            let mine: Vec<Value> = items
                .into_iter()
                .filter(|p| on_node(p, &node_name))
                .collect();
            let list = PodEvent {
                r#type: "LIST".into(),
                object: serde_json::to_vec(&mine).unwrap_or_default(),
                resource_version: rev,
            };
            (Some(list), rev)
        };
        let mut w = self.reg.watch(kind, None, after);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            if let Some(l) = first
                && tx.send(Ok(l)).await.is_err()
            {
                return;
            }
            loop {
                let c = tokio::select! {
                    _ = tx.closed() => return,
                    c = w.next() => c,
                };
                match c {
                    Ok(c) if on_node(&c.object, &node_name) => {
                        let ev = PodEvent {
                            r#type: c.type_.into(),
                            object: serde_json::to_vec(&c.object).unwrap_or_default(),
                            resource_version: c.revision,
                        };
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
