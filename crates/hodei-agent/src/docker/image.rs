//! Making sure a job's image is there: the pull policy.

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error;
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt;
use hodei_core::spec::PullPolicy;
use tracing::info;

use super::describe;

/// Splits an image reference into the repository and the tag or digest to
/// pull (`latest` when it names neither: the engine would pull every tag).
pub fn split_reference(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    // A ':' after the last '/' starts the tag; before it, a registry port.
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => {
            let at = name_start + i;
            (image[..at].to_string(), image[at + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

/// Makes sure `image` is present, pulling it if `policy` allows. `Err` is
/// the message for the job's log.
pub async fn ensure(
    docker: &Docker,
    image: &str,
    policy: PullPolicy,
    pull_timeout: Duration,
) -> Result<(), String> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            return Err(format!(
                "hodei: cannot look up image {image:?}: {}",
                describe(&e)
            ));
        }
    }
    if policy == PullPolicy::Never {
        return Err(format!(
            "hodei: image {image:?} is not on this worker and the pull policy is never"
        ));
    }
    info!(image, "pulling image");
    let (repo, tag) = split_reference(image);
    let options = CreateImageOptions {
        from_image: Some(repo),
        tag: Some(tag),
        ..Default::default()
    };
    let pulled = tokio::time::timeout(pull_timeout, async {
        let mut progress = docker.create_image(Some(options), None, None);
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(message) = info.error_detail.and_then(|d| d.message) {
                        return Err(message);
                    }
                }
                Err(e) => return Err(describe(&e)),
            }
        }
        Ok(())
    })
    .await;
    match pulled {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("hodei: cannot pull image {image:?}: {why}")),
        Err(_) => Err(format!(
            "hodei: pulling image {image:?} took longer than {} s",
            pull_timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        let split = |s| split_reference(s);
        assert_eq!(split("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split("busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(
            split("127.0.0.1:5000/team/tool"),
            ("127.0.0.1:5000/team/tool".into(), "latest".into())
        );
        assert_eq!(
            split("127.0.0.1:5000/team/tool:2"),
            ("127.0.0.1:5000/team/tool".into(), "2".into())
        );
        assert_eq!(
            split("rust@sha256:abcd"),
            ("rust".into(), "sha256:abcd".into())
        );
    }
}
