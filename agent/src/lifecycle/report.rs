//! The pod's status as the API sees it (reported through `/status` when
//! it changed) and as the agent persists it for the next agent to adopt.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_proto::api::Pod;
use keel_proto::api::meta::now_rfc3339;
use tokio::time::Instant;

use super::Worker;
use crate::state::PodRecord;
use crate::status::{self, ContainerView};

impl Worker {
    pub(super) fn views(&self) -> Vec<ContainerView> {
        self.ctrs
            .iter()
            .map(|c| ContainerView {
                name: c.spec.name.clone(),
                image: c.spec.image.clone(),
                state: c.state.clone(),
                last_state: c.last_state.clone(),
                restart_count: c.restart_count(),
                ready: c.ready(),
                started_once: c.attempts > 0,
                done: c.done,
            })
            .collect()
    }

    /// Writes the pod's status if it changed since the last report.
    pub(super) async fn report(&mut self) {
        if self.retry_report.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.retry_report = None;
        let st = status::pod_status(
            &self.views(),
            &self.sandbox.ip.to_string(),
            &self.ctx.node_ip.to_string(),
            &self.start_time,
            &self.pod.status,
            &now_rfc3339(),
        );
        if self.reported.as_ref() == Some(&st) {
            return;
        }
        let mut p = self.pod.clone();
        p.status = st.clone();
        let c = self.ctx.client.get();
        match c.update_status(&p).await {
            Ok(updated) => {
                tracing::debug!(phase = %st.phase, "status reported");
                self.pod = updated;
                self.reported = Some(st);
            }
            Err(e) if e.code() == 409 => {
                let m = &self.pod.metadata;
                match c.get::<Pod>(&m.namespace, &m.name).await {
                    Ok(cur) if cur.metadata.uid == m.uid => {
                        self.pod.metadata.resource_version = cur.metadata.resource_version;
                        self.retry_report = Some(Instant::now());
                    }
                    _ => self.retry_report = Some(Instant::now() + Duration::from_secs(1)),
                }
            }
            Err(e) => {
                if e.code() != 404 {
                    tracing::warn!(error = %e, "cannot report the pod's status; retrying");
                }
                self.retry_report = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    pub(super) fn persist(&self) {
        let m = &self.pod.metadata;
        let mut containers = BTreeMap::new();
        let mut restarts = BTreeMap::new();
        let mut finished = BTreeMap::new();
        for c in &self.ctrs {
            if let Some(h) = &c.handle {
                containers.insert(c.spec.name.clone(), h.clone());
            }
            if let Some(code) = c.done {
                finished.insert(c.spec.name.clone(), code);
            }
            restarts.insert(c.spec.name.clone(), c.restart_count());
        }
        self.ctx.state.put(PodRecord {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            sandbox: self.sandbox.clone(),
            grace_seconds: self.grace().as_secs() as i64,
            containers,
            restarts,
            finished,
        });
    }
}
