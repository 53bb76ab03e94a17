//! Images for the Docker runtime: `imagePullPolicy` applied (Always pulls,
//! IfNotPresent pulls only a missing image, Never refuses a missing one)
//! and pulls with their progress in the agent's log.

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;

use crate::runtime::RuntimeError;

/// The reference to pull: an untagged image means `:latest` (the Engine
/// would otherwise pull every tag).
pub fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or("");
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Makes `image` present as `policy` asks.
pub async fn ensure(docker: &Docker, image: &str, policy: &str) -> Result<(), RuntimeError> {
    if image.is_empty() {
        return Err(RuntimeError::Setup(
            "no image: the docker runtime runs spec.containers[].image".into(),
        ));
    }
    let present = docker.inspect_image(image).await.is_ok();
    match policy {
        "Never" if !present => Err(RuntimeError::ImageNeverPull(format!(
            "Container image {image:?} is not present with pull policy of Never"
        ))),
        "Never" | "IfNotPresent" if present => Ok(()),
        _ => pull(docker, image).await,
    }
}

/// Pulls `image`, logging each new status line of the Engine's progress.
pub async fn pull(docker: &Docker, image: &str) -> Result<(), RuntimeError> {
    let reference = pull_reference(image);
    tracing::info!(image = %reference, "pulling image");
    let opts = CreateImageOptionsBuilder::new()
        .from_image(&reference)
        .build();
    let mut progress = docker.create_image(Some(opts), None, None);
    let mut last = String::new();
    while let Some(step) = progress.next().await {
        match step {
            Ok(info) => {
                if let Some(d) = info.error_detail.and_then(|d| d.message) {
                    return Err(RuntimeError::ImagePull(format!(
                        "failed to pull image {reference:?}: {d}"
                    )));
                }
                let line = format!(
                    "{} {}",
                    info.id.unwrap_or_default(),
                    info.status.unwrap_or_default()
                );
                if line != last {
                    tracing::info!(image = %reference, progress = %line.trim(), "pull");
                    last = line;
                }
            }
            Err(e) => {
                return Err(RuntimeError::ImagePull(format!(
                    "failed to pull image {reference:?}: {e}"
                )));
            }
        }
    }
    tracing::info!(image = %reference, "pulled image");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pull_reference;

    #[test]
    fn untagged_images_pull_latest() {
        assert_eq!(pull_reference("busybox"), "busybox:latest");
        assert_eq!(
            pull_reference("localhost:5000/b"),
            "localhost:5000/b:latest"
        );
        assert_eq!(pull_reference("b:1"), "b:1");
        assert_eq!(pull_reference("b@sha256:00"), "b@sha256:00");
    }
}
