//! The container executor: runs a job that has an image in a Docker
//! container, through the engine's API ([`bollard`]).
//!
//! # The engine
//!
//! The agent talks to the engine named by `--docker-socket` (a socket path,
//! or a `unix://`, `tcp://` or `http://` URL), else by `DOCKER_HOST`, else
//! `/var/run/docker.sock`. It negotiates the API version at start (the
//! engine's own when it is older than the client's). Only an agent that
//! reached the engine at start advertises the `docker` capability, so the
//! scheduler sends image jobs to no other agent.
//!
//! # A job's container
//!
//! 1. **Image.** The pull policy is the job's, else the agent's:
//!    `if-not-present` pulls a missing image (bounded by the agent's pull
//!    timeout), `never` does not. A missing image that is not pulled, or a
//!    failed pull, ends the job at once as [`Outcome::SpawnFailed`] with
//!    exit code 125 and a message in its stderr (`docker run` uses 125 the
//!    same way).
//! 2. **Create.** argv becomes the container's whole command (the image's
//!    entrypoint is reset: argv runs as given, as a process job's does); the
//!    environment is the image's plus the job's `env` plus `HODEI_JOB_ID`
//!    and `HODEI_ATTEMPT`. The per-job directory the process executor would
//!    use is mounted at `/workspace` and is the working directory unless the
//!    job names another one (the agent can turn the mount off). CPU
//!    (millicores, as `NanoCpus`) and memory (bytes; swap is not allowed
//!    beyond it) become the container's limits. Labels `hodei.agent`,
//!    `hodei.job` and `hodei.attempt` tell whose container it is. The
//!    container runs with an init process (`--init`), so signals reach the
//!    command and zombies are reaped; its stdin is closed and there is no
//!    TTY. Unless containers are kept, the engine stores no log of it
//!    (logging driver `none`): the agent reads the output itself.
//! 3. **Attach, then start.** The agent attaches to stdout and stderr
//!    *before* starting, so no byte is missed, and forwards each frame as
//!    it comes, the two streams apart (the engine multiplexes them; bollard
//!    splits them again). A command that cannot be started fails the job
//!    with 127 (not found), 126 (not executable) or 125 (anything else), as
//!    `docker run` does.
//! 4. **Wait.** The job's exit code is the container's. When the kernel's
//!    OOM killer ended it (the engine's `State.OOMKilled`, with a non-zero
//!    exit) the outcome is [`Outcome::OomKilled`]; a note goes to stderr
//!    either way.
//! 5. **Cancel and timeout.** SIGTERM to the container, then SIGKILL once
//!    the job's kill grace has passed. The timeout counts from when the
//!    agent took the job, so it includes pulling the image.
//! 6. **Remove.** The container is removed (with its anonymous volumes)
//!    before the result is reported, so a finished job has no container;
//!    `--keep-containers` keeps them for debugging. If the job's task is
//!    dropped midway, the container is still killed and removed.
//!
//! # After a crash
//!
//! Containers outlive the agent. A restarted agent removes every container
//! labelled with its name before it says `Hello` ([`remove_leftovers`]); it
//! does not list their attempts, so the orchestrator declares them lost (or
//! runs them again) by its rules, as for process jobs ([`crate::recover`]).

use std::fmt;
use std::pin::pin;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions};
use futures::FutureExt;
use futures::future::pending;
use hodei_core::Outcome;
use hodei_core::spec::{PullPolicy, human_bytes};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::executor::{CancelSignal, ExecSpec, Executor, OutputChunk};

mod container;
mod image;
mod output;

use container::{ContainerGuard, Ended};
pub use container::{create_body, remove_leftovers, start_failure_code};
pub use image::split_reference;
use output::{failed, note_stderr, pump};

/// Label naming the agent that made a container.
pub const LABEL_AGENT: &str = "hodei.agent";
/// Label naming the job a container runs.
pub const LABEL_JOB: &str = "hodei.job";
/// Label naming the attempt a container runs.
pub const LABEL_ATTEMPT: &str = "hodei.attempt";
/// Where the per-job directory is mounted in the container.
pub const WORKSPACE: &str = "/workspace";
/// Exit code of a job whose container could not be made or started for a
/// reason other than its command (no image, pull failed, engine error).
pub const EXIT_CONTAINER_FAILED: i32 = 125;

/// The engine address used when neither the agent nor `DOCKER_HOST` names one.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// How long the agent waits for the engine to answer at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each engine request until its response starts (streams such as
/// output and waiting run longer).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// How long the output may take to end after the container stopped.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for a container to stop after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// How the agent runs container jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The engine: a socket path, or a `unix://`, `tcp://` or `http://`
    /// URL; `None`: `DOCKER_HOST`, else [`DEFAULT_DOCKER_HOST`].
    pub host: Option<String>,
    /// Keep containers after their job (for debugging); they are removed
    /// otherwise.
    pub keep_containers: bool,
    /// Mount the per-job directory at [`WORKSPACE`] and start there.
    pub mount_workspace: bool,
    /// The pull policy of jobs that do not set one.
    pub pull_policy: PullPolicy,
    /// Run an init process as the container's pid 1 (`--init`).
    pub init: bool,
    /// Longest an image pull may take.
    pub pull_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            keep_containers: false,
            mount_workspace: true,
            pull_policy: PullPolicy::IfNotPresent,
            init: true,
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// Why the agent cannot use the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("unsupported Docker host {0:?}: use a socket path or a unix://, tcp:// or http:// URL")]
    UnsupportedHost(String),
    #[error("cannot reach the Docker engine at {host}: {source}")]
    Unreachable {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the Docker engine at {host} did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("Docker engine request failed: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// The engine address: `flag` if set, else `DOCKER_HOST`, else the default.
pub fn resolve_host(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
}

/// A client for `host` (no request is made yet).
fn client_for(host: &str) -> Result<Docker, DockerError> {
    let version = bollard::API_DEFAULT_VERSION;
    let made = if host.starts_with("unix://") || host.starts_with('/') {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, version)
    } else {
        return Err(DockerError::UnsupportedHost(host.to_string()));
    };
    made.map_err(|source| DockerError::Unreachable {
        host: host.to_string(),
        source,
    })
}

/// The engine's error message without bollard's framing.
pub(crate) fn describe(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Runs jobs in Docker containers; see the [module documentation](self).
pub struct DockerExecutor {
    docker: Docker,
    agent: String,
    host: String,
    config: DockerConfig,
}

impl fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("agent", &self.agent)
            .field("host", &self.host)
            .field("config", &self.config)
            .finish()
    }
}

impl DockerExecutor {
    /// Connects to the engine for agent `agent` and negotiates the API
    /// version; fails when the engine does not answer.
    pub async fn connect(config: DockerConfig, agent: &str) -> Result<DockerExecutor, DockerError> {
        let host = resolve_host(config.host.as_deref());
        let docker = client_for(&host)?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| DockerError::Timeout {
                host: host.clone(),
                secs: CONNECT_TIMEOUT.as_secs(),
            })?
            .map_err(|source| DockerError::Unreachable {
                host: host.clone(),
                source,
            })?;
        info!(%host, api = %docker.client_version(), "Docker engine reachable");
        Ok(DockerExecutor {
            docker,
            agent: agent.to_string(),
            host,
            config,
        })
    }

    /// The engine API version in use.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Kills and removes the containers an earlier run of this agent left
    /// (see [`remove_leftovers`]); returns how many were removed.
    pub async fn remove_leftovers(&self) -> Result<usize, DockerError> {
        remove_leftovers(&self.docker, &self.agent, self.config.keep_containers).await
    }

    async fn image_ready(&self, c: &crate::executor::ContainerSpec) -> Result<(), String> {
        let policy = c.pull_policy.unwrap_or(self.config.pull_policy);
        image::ensure(&self.docker, &c.image, policy, self.config.pull_timeout).await
    }

    /// The host pid of the container's first process, or 0 when unknown.
    async fn pid_of(&self, id: &str) -> u32 {
        match self.docker.inspect_container(id, None).await {
            Ok(info) => info
                .state
                .and_then(|s| s.pid)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }
}

#[async_trait::async_trait]
impl Executor for DockerExecutor {
    async fn run(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
        mut cancel: CancelSignal,
    ) -> Outcome {
        let job = spec.job_id.clone();
        let deadline = spec.timeout.map(|t| Instant::now() + t);
        let Some(c) = spec.container.clone() else {
            let message = "hodei: the job has no image; it cannot run in a container".into();
            return failed(EXIT_CONTAINER_FAILED, message, &output).await;
        };
        if *cancel.borrow() {
            return Outcome::Cancelled;
        }
        tokio::select! {
            ready = self.image_ready(&c) => if let Err(message) = ready {
                return failed(EXIT_CONTAINER_FAILED, message, &output).await;
            },
            why = stopped(&mut cancel, deadline) => return why,
        }

        let body = create_body(&spec, &c, &self.agent, &self.config);
        let name = container_name(&job, spec.attempt);
        // Guarded from before it exists: dropped while the engine creates
        // it, the container is still removed.
        let mut guard = ContainerGuard::new(self.docker.clone(), name.clone(), &self.config);
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(created) => {
                guard.created();
                created.id
            }
            Err(e) => {
                guard.finish().await;
                let message = format!(
                    "hodei: cannot create a container from image {:?}: {}",
                    c.image,
                    describe(&e)
                );
                return failed(EXIT_CONTAINER_FAILED, message, &output).await;
            }
        };
        debug!(job, container = %id, "container created");

        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = match self.docker.attach_container(&id, Some(attach)).await {
            Ok(a) => a,
            Err(e) => {
                guard.finish().await;
                let message = format!("hodei: cannot attach to the container: {}", describe(&e));
                return failed(EXIT_CONTAINER_FAILED, message, &output).await;
            }
        };
        drop(attached.input); // stdin is not open
        let mut pump = tokio::spawn(pump(attached.output, output.clone()));

        if let Err(e) = self.docker.start_container(&id, None).await {
            let why = describe(&e);
            pump.abort();
            guard.finish().await;
            let program = spec.command.first().map(String::as_str).unwrap_or("");
            let message = format!(
                "hodei: cannot start {program:?} in a container of image {:?}: {why}",
                c.image
            );
            return failed(start_failure_code(&why), message, &output).await;
        }
        let pid = self.pid_of(&id).await;
        debug!(job, container = %id, pid, "container started");
        spec.on_start.started(pid);

        let mut exited = pin!(container::wait_exit(&self.docker, &id).fuse());
        let reason = tokio::select! {
            () = &mut exited => None,
            why = stopped(&mut cancel, deadline) => Some(why),
        };
        if let Some(reason) = &reason {
            debug!(job, container = %id, ?reason, "stopping the container");
            container::signal(&self.docker, &id, "SIGTERM").await;
            if tokio::time::timeout(spec.kill_grace, &mut exited)
                .await
                .is_err()
            {
                container::signal(&self.docker, &id, "SIGKILL").await;
                if tokio::time::timeout(KILL_WAIT, &mut exited).await.is_err() {
                    warn!(job, container = %id, "the container did not stop after SIGKILL");
                }
            }
        }
        if tokio::time::timeout(OUTPUT_GRACE, &mut pump).await.is_err() {
            debug!(job, container = %id, "output did not end after the container stopped");
            pump.abort();
        }
        let ended = container::ended(&self.docker, &id).await;
        guard.finish().await;

        let outcome = match (reason, ended) {
            (Some(reason), _) => reason,
            (None, Ok(Ended { oom_killed, code })) => {
                if oom_killed {
                    let note = match c.memory_bytes {
                        Some(limit) => format!(
                            "hodei: out of memory: the OOM killer killed a process of the job (memory limit {})",
                            human_bytes(limit)
                        ),
                        None => "hodei: out of memory: the OOM killer killed a process of the job"
                            .to_string(),
                    };
                    note_stderr(&note, &output).await;
                }
                if oom_killed && code != 0 {
                    Outcome::OomKilled
                } else {
                    Outcome::Exited { code }
                }
            }
            (None, Err(why)) => {
                note_stderr(
                    &format!("hodei: cannot read how the container ended: {why}"),
                    &output,
                )
                .await;
                Outcome::Exited { code: -1 }
            }
        };
        debug!(job, ?outcome, "container job finished");
        outcome
    }
}

/// A container name for people: `hodei-<job>-<attempt>-<random>`.
fn container_name(job: &str, attempt: u32) -> String {
    let job: String = job.chars().take(64).collect();
    format!(
        "hodei-{job}-{attempt}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Resolves when the job is cancelled or its deadline passes, with the
/// outcome that says which.
async fn stopped(cancel: &mut CancelSignal, deadline: Option<Instant>) -> Outcome {
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => pending().await,
        }
    };
    let cancelled = async {
        if cancel.wait_for(|c| *c).await.is_err() {
            pending::<()>().await; // No sender left: cannot be cancelled.
        }
    };
    tokio::select! {
        () = cancelled => Outcome::Cancelled,
        () = timeout => Outcome::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_valid_and_bounded() {
        let name = container_name(&"j".repeat(200), 3);
        assert!(name.starts_with("hodei-jjj"));
        assert!(name.len() < 90, "{name}");
        let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        assert!(container_name("a.b_c-d", 1).chars().all(ok));
    }

    #[test]
    fn hosts_resolve_flag_first() {
        assert_eq!(resolve_host(Some("/x.sock")), "/x.sock");
        assert!(matches!(
            client_for("ssh://host"),
            Err(DockerError::UnsupportedHost(_))
        ));
        assert!(client_for("/nonexistent/docker.sock").is_err());
    }
}
