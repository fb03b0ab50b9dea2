//! How the agent runs a job: the executor trait and the data it works on.
//! The process executor lives in [`crate::process`], the container executor
//! in [`crate::docker`]; the runner picks one per job (image or not).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hodei_core::spec::PullPolicy;
use hodei_core::{LogStream, Outcome};
use tokio::sync::{mpsc, watch};

/// What to run, already resolved by the agent (working directory created).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub job_id: String,
    pub attempt: u32,
    /// argv; executed directly, no shell.
    pub command: Vec<String>,
    /// Added on top of the agent's own environment (a container's starts
    /// from its image's instead).
    pub env: BTreeMap<String, String>,
    /// The process's current directory; for a container job, the per-job
    /// directory on this machine that is mounted as its workspace.
    pub working_dir: PathBuf,
    pub timeout: Option<Duration>,
    /// SIGTERM → SIGKILL grace on cancel or timeout.
    pub kill_grace: Duration,
    /// Told the pid of the job's leader process as soon as it started.
    pub on_start: OnStart,
    /// Set for a job with an image: run it in a container.
    pub container: Option<ContainerSpec>,
}

/// What makes a job a container job: its image and the container's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: String,
    /// Directory inside the container to start in; `None`: the workspace
    /// (`/workspace`) when it is mounted, else the image's own.
    pub working_dir: Option<String>,
    /// CPU limit in millicores (1000 = one CPU).
    pub cpu_millicores: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// `None`: the agent's default.
    pub pull_policy: Option<PullPolicy>,
}

/// A callback the executor calls with the pid of the job's leader process
/// (also its process group id) right after starting it. Default: none.
#[derive(Clone, Default)]
pub struct OnStart(Option<Arc<dyn Fn(u32) + Send + Sync>>);

impl OnStart {
    pub fn new(f: impl Fn(u32) + Send + Sync + 'static) -> OnStart {
        OnStart(Some(Arc::new(f)))
    }

    /// Reports `pid`; does nothing without a callback.
    pub fn started(&self, pid: u32) {
        if let Some(f) = &self.0 {
            f(pid);
        }
    }
}

impl fmt::Debug for OnStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "OnStart(set)"
        } else {
            "OnStart(none)"
        })
    }
}

/// Bytes read from one of the job's outputs, in order.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: LogStream,
    pub data: Bytes,
    /// When the agent read the bytes (Unix ms).
    pub timestamp_ms: i64,
}

/// Set to `true` to cancel a running job.
pub type CancelSignal = watch::Receiver<bool>;

/// Runs one job to completion.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs `spec`, sends every byte of its stdout and stderr to `output` as
    /// it is produced (each stream in order), and returns how it ended. Called
    /// once `output` has received every byte. Kills the whole process tree
    /// (SIGTERM, grace, SIGKILL) when `cancel` turns true or the timeout
    /// passes. Calls `spec.on_start` with the pid once the process started.
    /// A program that cannot be started is an outcome
    /// ([`Outcome::SpawnFailed`]) with a message also written to stderr, not
    /// an error.
    async fn run(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancelSignal,
    ) -> Outcome;
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
