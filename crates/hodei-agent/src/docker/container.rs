//! A job's container: its configuration, signals, waiting for it, reading
//! how it ended, removing it, and removing what an earlier agent left.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
    HostConfigLogConfig, Mount, MountType,
};
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::{
    DockerConfig, DockerError, LABEL_AGENT, LABEL_ATTEMPT, LABEL_JOB, WORKSPACE, describe,
};
use crate::executor::{ContainerSpec, ExecSpec};

/// The container for `spec`, made by agent `agent`.
pub fn create_body(
    spec: &ExecSpec,
    c: &ContainerSpec,
    agent: &str,
    config: &DockerConfig,
) -> ContainerCreateBody {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("HODEI_JOB_ID={}", spec.job_id));
    env.push(format!("HODEI_ATTEMPT={}", spec.attempt));
    let labels = HashMap::from([
        (LABEL_AGENT.to_string(), agent.to_string()),
        (LABEL_JOB.to_string(), spec.job_id.clone()),
        (LABEL_ATTEMPT.to_string(), spec.attempt.to_string()),
    ]);
    let mounts = config.mount_workspace.then(|| {
        vec![Mount {
            target: Some(WORKSPACE.to_string()),
            source: Some(spec.working_dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        }]
    });
    let working_dir = c
        .working_dir
        .clone()
        .or_else(|| config.mount_workspace.then(|| WORKSPACE.to_string()));
    let memory = c.memory_bytes.and_then(|m| i64::try_from(m).ok());
    let host_config = HostConfig {
        mounts,
        memory,
        // Equal to the memory limit: no swap beyond it.
        memory_swap: memory,
        nano_cpus: c
            .cpu_millicores
            .and_then(|m| i64::try_from(m.saturating_mul(1_000_000)).ok()),
        init: Some(config.init),
        log_config: (!config.keep_containers).then(|| HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(c.image.clone()),
        cmd: Some(spec.command.clone()),
        // `[""]` resets the image's entrypoint: argv runs as given.
        entrypoint: Some(vec![String::new()]),
        env: Some(env),
        working_dir,
        labels: Some(labels),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The exit code for a container that did not start, from the engine's
/// message, as `docker run` reports it: 127 command not found, 126 not
/// executable, 125 anything else.
pub fn start_failure_code(message: &str) -> i32 {
    let m = message.to_ascii_lowercase();
    if m.contains("executable file not found") || m.contains("no such file or directory") {
        127
    } else if m.contains("permission denied") {
        126
    } else {
        super::EXIT_CONTAINER_FAILED
    }
}

/// Sends `signal` to the container; errors (it already stopped) are ignored.
pub async fn signal(docker: &Docker, id: &str, signal: &str) {
    let options = KillContainerOptions {
        signal: signal.to_string(),
    };
    if let Err(e) = docker.kill_container(id, Some(options)).await {
        debug!(container = id, signal, error = %describe(&e), "kill");
    }
}

/// Resolves once the container is not running (or is gone, or the engine
/// cannot say otherwise).
pub async fn wait_exit(docker: &Docker, id: &str) {
    loop {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut waiting = docker.wait_container(id, Some(options));
        match waiting.next().await {
            // bollard reports a non-zero exit code as an error.
            Some(Ok(_)) | Some(Err(Error::DockerContainerWaitError { .. })) => return,
            Some(Err(Error::DockerResponseServerError {
                status_code: 404, ..
            })) => return,
            Some(Err(e)) => debug!(container = id, error = %describe(&e), "wait broke off"),
            None => debug!(container = id, "wait ended without a status"),
        }
        // The wait broke off (engine restarted, connection lost): look again.
        match docker.inspect_container(id, None).await {
            Ok(info) => {
                let status = info.state.and_then(|s| s.status);
                let running = matches!(
                    status,
                    Some(
                        ContainerStateStatusEnum::RUNNING
                            | ContainerStateStatusEnum::PAUSED
                            | ContainerStateStatusEnum::RESTARTING
                            | ContainerStateStatusEnum::CREATED
                    )
                );
                if !running {
                    return;
                }
            }
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return,
            Err(e) => debug!(container = id, error = %describe(&e), "inspect"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub code: i32,
    pub oom_killed: bool,
}

/// Reads the exit code and OOM flag of a stopped container.
pub async fn ended(docker: &Docker, id: &str) -> Result<Ended, String> {
    let info = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| describe(&e))?;
    let state = info.state.unwrap_or_default();
    let code = state
        .exit_code
        .and_then(|c| i32::try_from(c).ok())
        .ok_or_else(|| "the engine reported no exit code".to_string())?;
    Ok(Ended {
        code,
        oom_killed: state.oom_killed.unwrap_or(false),
    })
}

/// How long the agent keeps trying to remove a container.
const REMOVE_PATIENCE: Duration = Duration::from_secs(30);
/// How long a container whose creation was under way may take to appear.
const APPEAR_PATIENCE: Duration = Duration::from_secs(5);

/// Removes the container (killing it if it runs) and its anonymous volumes.
/// A removal racing with the container's start can fail (the engine
/// refuses to remove a container it is starting): it is tried again, with
/// backoff, for [`REMOVE_PATIENCE`]. With `may_appear` (its creation was
/// under way), "no such container" is tried again too, for
/// [`APPEAR_PATIENCE`].
async fn remove(docker: &Docker, id: &str, may_appear: bool) {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let patience = match docker.remove_container(id, Some(options)).await {
            Ok(()) => {
                debug!(container = id, "container removed");
                return;
            }
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) if !may_appear => return,
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => APPEAR_PATIENCE,
            Err(e) => {
                debug!(container = id, error = %describe(&e), "removing the container failed");
                REMOVE_PATIENCE
            }
        };
        if started.elapsed() + pause > patience {
            if patience == REMOVE_PATIENCE {
                warn!(
                    container = id,
                    "cannot remove the container; the agent removes it when it starts again"
                );
            }
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Owns a job's container, by its name (so it can be made before the
/// container is created): [`ContainerGuard::finish`] removes it (or, when
/// containers are kept, leaves it); dropped without `finish` (the job's
/// task was dropped), it kills the container and removes it unless kept.
pub struct ContainerGuard {
    docker: Docker,
    name: Option<String>,
    keep: bool,
    /// The engine said it created the container.
    created: bool,
}

impl ContainerGuard {
    pub fn new(docker: Docker, name: String, config: &DockerConfig) -> ContainerGuard {
        ContainerGuard {
            docker,
            name: Some(name),
            keep: config.keep_containers,
            created: false,
        }
    }

    /// The engine created the container.
    pub fn created(&mut self) {
        self.created = true;
    }

    /// The job is over: remove the container unless containers are kept.
    pub async fn finish(mut self) {
        if let Some(name) = self.name.take()
            && !self.keep
        {
            remove(&self.docker, &name, false).await;
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            warn!(container = %name, "cannot remove the container: no runtime");
            return;
        };
        let docker = self.docker.clone();
        let (keep, may_appear) = (self.keep, !self.created);
        handle.spawn(async move {
            if keep {
                signal(&docker, &name, "SIGKILL").await;
            } else {
                remove(&docker, &name, may_appear).await;
            }
        });
    }
}

/// Kills and removes the containers labelled with agent `agent`: an
/// earlier run of the agent left them (it crashed, or was killed). With
/// `keep_stopped`, stopped ones are left for debugging.
pub async fn remove_leftovers(
    docker: &Docker,
    agent: &str,
    keep_stopped: bool,
) -> Result<usize, DockerError> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_AGENT}={agent}")])]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let found = docker.list_containers(Some(options)).await?;
    let mut removed = 0;
    for c in found {
        let Some(id) = c.id else { continue };
        let stopped = matches!(
            c.state,
            Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
        );
        if stopped && keep_stopped {
            continue;
        }
        let labels = c.labels.unwrap_or_default();
        info!(
            container = %id,
            job = labels.get(LABEL_JOB).map(String::as_str).unwrap_or(""),
            attempt = labels.get(LABEL_ATTEMPT).map(String::as_str).unwrap_or(""),
            state = ?c.state,
            "removing a container an earlier run of this agent left"
        );
        remove(docker, &id, false).await;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn exec() -> ExecSpec {
        ExecSpec {
            job_id: "job-7".into(),
            attempt: 2,
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            working_dir: PathBuf::from("/var/lib/hodei/work/job-7-2"),
            timeout: None,
            kill_grace: Duration::from_secs(1),
            on_start: Default::default(),
            container: None,
        }
    }

    #[test]
    fn the_container_carries_the_job() {
        let c = ContainerSpec {
            image: "busybox:1".into(),
            cpu_millicores: Some(500),
            memory_bytes: Some(64 << 20),
            ..Default::default()
        };
        let body = create_body(&exec(), &c, "agent-1", &DockerConfig::default());
        assert_eq!(body.image.as_deref(), Some("busybox:1"));
        assert_eq!(body.cmd, Some(exec().command));
        assert_eq!(body.entrypoint, Some(vec![String::new()]));
        assert_eq!(body.working_dir.as_deref(), Some(WORKSPACE));
        let env = body.env.unwrap_or_default();
        for var in ["A=1", "HODEI_JOB_ID=job-7", "HODEI_ATTEMPT=2"] {
            assert!(env.contains(&var.to_string()), "{var} in {env:?}");
        }
        let labels = body.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_AGENT).map(String::as_str), Some("agent-1"));
        assert_eq!(labels.get(LABEL_JOB).map(String::as_str), Some("job-7"));
        assert_eq!(labels.get(LABEL_ATTEMPT).map(String::as_str), Some("2"));
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20));
        assert_eq!(host.init, Some(true));
        let mounts = host.mounts.unwrap_or_default();
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/var/lib/hodei/work/job-7-2")
        );
        assert_eq!(host.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
    }

    #[test]
    fn without_the_workspace_the_image_decides_the_directory() {
        let config = DockerConfig {
            mount_workspace: false,
            keep_containers: true,
            ..DockerConfig::default()
        };
        let c = ContainerSpec {
            image: "busybox".into(),
            ..Default::default()
        };
        let body = create_body(&exec(), &c, "a", &config);
        assert_eq!(body.working_dir, None);
        let host = body.host_config.unwrap_or_default();
        assert!(host.mounts.is_none() && host.log_config.is_none());
        assert_eq!((host.memory, host.nano_cpus), (None, None));
        let named = ContainerSpec {
            working_dir: Some("/src".into()),
            ..c
        };
        let body = create_body(&exec(), &named, "a", &DockerConfig::default());
        assert_eq!(body.working_dir.as_deref(), Some("/src"));
    }

    #[test]
    fn start_failures_get_docker_run_codes() {
        let not_found = "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown";
        assert_eq!(start_failure_code(not_found), 127);
        assert_eq!(
            start_failure_code("exec: \"/x\": stat /x: no such file or directory"),
            127
        );
        assert_eq!(
            start_failure_code("exec: \"/etc/passwd\": permission denied"),
            126
        );
        assert_eq!(start_failure_code("cgroup setup failed"), 125);
    }
}
