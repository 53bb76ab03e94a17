//! `keel logs POD [-c CONTAINER] [-f] [-p] [--tail N]`: a container's log, read
//! through any master (the `log` subresource), which fetches it from the
//! agent of the pod's node.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use keel_proto::api::Status;
use keel_proto::client::encode;

use crate::kubectl::Target;

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The pod.
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// The log of the container's previous instance (Docker runtime).
    #[arg(short = 'p', long)]
    pub previous: bool,
}

pub async fn run(t: &Target, a: LogsArgs) -> anyhow::Result<()> {
    let client = t.client();
    let pod = a.pod.strip_prefix("pod/").unwrap_or(&a.pod);
    let mut q = Vec::new();
    if let Some(c) = &a.container {
        q.push(format!("container={}", encode(c)));
    }
    if a.follow {
        q.push("follow=true".to_string());
    }
    if a.previous {
        q.push("previous=true".to_string());
    }
    if let Some(n) = a.tail {
        q.push(format!("tailLines={n}"));
    }
    let mut path = format!("/api/v1/namespaces/{}/pods/{pod}/log", t.namespace);
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let r = client.send(reqwest::Method::GET, &path, None, None).await?;
    let code = r.status().as_u16();
    if !(200..300).contains(&code) {
        let body = r.bytes().await.unwrap_or_default();
        let msg = serde_json::from_slice::<Status>(&body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{msg}");
    }
    let mut out = std::io::stdout();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(())
}
