//! Runs one assignment: creates its spool entry, prepares its working
//! directory, hands it to the executor (the container executor for a job
//! with an image, the process executor otherwise), records its process in
//! the spool, moves its output into the outbox and records its result.
//!
//! A job with an image always gets a fresh per-job directory (mounted as
//! the container's workspace); its `working_dir` is a directory inside the
//! container. A process job's `working_dir` is a directory on this machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hodei_core::spec::{DEFAULT_KILL_GRACE_MS, PullPolicy};
use hodei_core::{LogStream, Outcome};
use hwp_proto::pb;
use tokio::sync::{mpsc, watch};

use crate::executor::{ContainerSpec, ExecSpec, Executor, OnStart, OutputChunk, now_ms};
use crate::mask::{IDLE_FLUSH, OutputFilter};
use crate::outbox::{Outbox, SpoolPlan};
use crate::slots::{Slots, Turn};
use crate::workdir::WorkDirs;

/// Starts jobs for the session.
#[derive(Clone)]
pub struct Runner {
    /// The slots: an assignment taken beyond them (prefetch) waits for
    /// one, in the order assignments arrived, before it starts.
    pub slots: Arc<Slots>,
    pub outbox: Arc<Outbox>,
    pub executor: Arc<dyn Executor>,
    /// Runs jobs with an image; `None` when the agent has no Docker engine.
    pub docker: Option<Arc<dyn Executor>>,
    /// Names, makes, recycles and deletes the per-job directories.
    pub work_dirs: Arc<WorkDirs>,
    /// Keep per-job directories after the job (for debugging).
    pub keep_work_dirs: bool,
}

impl Runner {
    /// Starts the assignment in the background; `Err` is the reason to
    /// reject it.
    pub fn start(&self, a: pb::Assignment) -> Result<(), String> {
        let cancel = self
            .outbox
            .add(&a.job_id, a.attempt, [a.stdout_offset, a.stderr_offset])
            .ok_or_else(|| format!("job {} is already running here", a.job_id))?;
        let turn = self.slots.line_up();
        let runner = self.clone();
        tokio::spawn(async move { runner.run(a, cancel, turn).await });
        Ok(())
    }

    async fn run(self, a: pb::Assignment, mut cancel: watch::Receiver<bool>, turn: Turn) {
        // A prefetched assignment waits here for a slot, or for its cancel
        // (or its take-back, which cancels it too).
        let slot = tokio::select! {
            slot = turn.slot() => Some(slot),
            _ = cancel.wait_for(|c| *c) => None,
        };
        let Some(slot) = slot else {
            if !self.outbox.tracks(&a.job_id, a.attempt) {
                // Taken back by the orchestrator (revoked), which was told.
                return;
            }
            tracing::info!(job = %a.job_id, attempt = a.attempt, "job cancelled before it started");
            let outcome = Outcome::Cancelled;
            self.outbox
                .finish(&a.job_id, result(&a.job_id, a.attempt, &outcome))
                .await;
            return;
        };
        if !self.outbox.take_slot(&a.job_id, a.attempt) {
            // Taken back while it got its slot: the next in line takes it.
            return;
        }
        let spec = a.spec.clone().unwrap_or_default();
        let job_id = a.job_id.clone();
        let container = (!a.image.is_empty()).then(|| ContainerSpec {
            image: a.image.clone(),
            working_dir: Some(spec.working_dir.clone()).filter(|d| !d.is_empty()),
            cpu_millicores: Some(spec.cpu_millicores).filter(|c| *c > 0),
            memory_bytes: Some(spec.memory_bytes).filter(|m| *m > 0),
            pull_policy: pull_policy(spec.pull_policy),
        });
        let (dir, ours) = if spec.working_dir.is_empty() || container.is_some() {
            (self.work_dirs.job_dir(&a.job_id, a.attempt), true)
        } else {
            (PathBuf::from(&spec.working_dir), false)
        };
        let (spool, made) = self.prepare(&job_id, &dir, ours).await;
        let outcome = if let Err(e) = spool {
            // Without a spool there is nowhere to keep the output: do not run.
            let message = format!("hodei: cannot create the job's log spool: {e}");
            tracing::error!(job = %job_id, error = %e, "cannot create the job's log spool");
            Outcome::SpawnFailed { code: 126, message }
        } else if !a.secrets_error.is_empty() {
            // Running it without a secret it needs would be wrong: fail it.
            let message = format!("hodei: {}", a.secrets_error);
            self.note(&job_id, &message).await;
            Outcome::SpawnFailed { code: 125, message }
        } else if let Err(message) = made {
            self.note(&job_id, &message).await;
            Outcome::SpawnFailed { code: 126, message }
        } else {
            let filter = OutputFilter::new(
                &a.secrets,
                a.max_log_bytes,
                a.stdout_offset.saturating_add(a.stderr_offset),
            );
            // The job's environment: its spec's, then its secrets.
            let mut env: std::collections::BTreeMap<String, String> =
                spec.env.into_iter().collect();
            env.extend(a.secrets.iter().map(|s| (s.name.clone(), s.value.clone())));
            let exec = ExecSpec {
                job_id: a.job_id.clone(),
                attempt: a.attempt,
                command: a.command.clone(),
                env,
                working_dir: dir.clone(),
                timeout: (spec.timeout_ms > 0).then(|| Duration::from_millis(spec.timeout_ms)),
                kill_grace: Duration::from_millis(if spec.kill_grace_ms > 0 {
                    spec.kill_grace_ms
                } else {
                    DEFAULT_KILL_GRACE_MS
                }),
                on_start: OnStart::default(),
                container,
            };
            self.execute(exec, cancel, filter).await
        };
        // Its process is gone: the next job may start.
        drop(slot);
        tracing::info!(job = %job_id, attempt = a.attempt, ?outcome, "job finished");
        self.outbox
            .finish(&job_id, result(&job_id, a.attempt, &outcome))
            .await;
        if ours && !self.keep_work_dirs {
            // Nothing waits for it: with other clean-up, in the background.
            let dirs = self.work_dirs.clone();
            self.outbox.janitor().defer(move || {
                if let Err(e) = dirs.release(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove job directory");
                }
            });
        }
    }

    /// Creates the attempt's spool entry and makes (or checks) its working
    /// directory: file-system work, done by the janitor in its lane for
    /// waited-for work (one hand-off, shared with other jobs' such work on
    /// a busy agent).
    async fn prepare(
        &self,
        job_id: &str,
        dir: &Path,
        ours: bool,
    ) -> (std::io::Result<()>, Result<(), String>) {
        let plan = self.outbox.spool_plan(job_id);
        let (dirs, to) = (self.work_dirs.clone(), dir.to_path_buf());
        let done = self
            .outbox
            .janitor()
            .run(move || {
                let files = plan.and_then(SpoolPlan::create);
                (files, make_dir(&dirs, &to, ours))
            })
            .await;
        match done {
            Some((files, made)) => {
                let spool = files.map(|files| self.outbox.install_spool(job_id, files));
                (spool, made)
            }
            None => (
                Err(std::io::Error::other("the preparation panicked")),
                Err("hodei: cannot prepare the job: the preparation panicked".to_string()),
            ),
        }
    }

    async fn execute(
        &self,
        mut exec: ExecSpec,
        cancel: watch::Receiver<bool>,
        mut filter: OutputFilter,
    ) -> Outcome {
        let job_id = exec.job_id.clone();
        let executor = if exec.container.is_some() {
            let Some(docker) = self.docker.clone() else {
                let message =
                    "hodei: this agent cannot run jobs with an image: it has no Docker engine"
                        .to_string();
                self.note(&job_id, &message).await;
                return Outcome::SpawnFailed {
                    code: crate::docker::EXIT_CONTAINER_FAILED,
                    message,
                };
            };
            docker
        } else {
            self.executor.clone()
        };
        // A container's processes are found again by its labels, not by a
        // process group: only process jobs are recorded in the spool.
        let record = exec.container.is_none();
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
        let (pid_tx, mut pid_rx) = mpsc::unbounded_channel::<u32>();
        let outbox = self.outbox.clone();
        let id = job_id.clone();
        exec.on_start = OnStart::new(move |pid| {
            // `Started` (with the pid) is due at once; the spool record follows.
            outbox.set_pid(&id, pid);
            let _ = pid_tx.send(pid);
        });
        let handle = tokio::spawn(async move { executor.run(exec, tx, cancel).await });
        let mut pids_open = true;
        loop {
            tokio::select! {
                biased;
                pid = pid_rx.recv(), if pids_open => match pid {
                    Some(pid) if record => self.outbox.record_process_later(&job_id, pid),
                    Some(_) => {}
                    None => pids_open = false,
                },
                chunk = rx.recv() => match chunk {
                    Some(chunk) => self.push(&job_id, filter.chunk(chunk)).await,
                    None => break,
                },
                // Bytes held back as a possible start of a secret go out
                // after a pause, so a prompt without a newline shows.
                () = tokio::time::sleep(IDLE_FLUSH), if filter.has_pending() => {
                    self.push(&job_id, filter.flush()).await;
                }
            }
        }
        // Everything the job wrote is in the outbox before its result.
        self.push(&job_id, filter.finish()).await;
        match handle.await {
            Ok(outcome) => outcome,
            Err(e) => {
                let message = format!("hodei: the executor failed: {e}");
                self.note(&job_id, &message).await;
                Outcome::SpawnFailed { code: 126, message }
            }
        }
    }

    async fn push(&self, job_id: &str, chunks: Vec<OutputChunk>) {
        for chunk in chunks {
            self.outbox.push(job_id, chunk).await;
        }
    }

    /// Writes an agent message into the job's stderr, so users see it.
    async fn note(&self, job_id: &str, message: &str) {
        let chunk = OutputChunk {
            stream: LogStream::Stderr,
            data: format!("{message}\n").into(),
            timestamp_ms: now_ms(),
        };
        self.outbox.push(job_id, chunk).await;
    }
}

/// Makes the job's own directory, or checks that the directory it names is
/// one (blocking).
fn make_dir(dirs: &WorkDirs, dir: &Path, ours: bool) -> Result<(), String> {
    let made = if ours {
        dirs.make(dir)
    } else {
        std::fs::metadata(dir).and_then(|m| {
            if m.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a directory"))
            }
        })
    };
    made.map_err(|e| format!("hodei: cannot use working directory {}: {e}", dir.display()))
}

/// A wire pull policy; unspecified (or unknown) means the agent's default.
fn pull_policy(value: i32) -> Option<PullPolicy> {
    match pb::PullPolicy::try_from(value) {
        Ok(pb::PullPolicy::IfNotPresent) => Some(PullPolicy::IfNotPresent),
        Ok(pb::PullPolicy::Never) => Some(PullPolicy::Never),
        Ok(pb::PullPolicy::Unspecified) => None,
        Err(_) => {
            tracing::warn!(
                value,
                "unknown pull policy in an assignment; using the agent's"
            );
            None
        }
    }
}

/// The wire form of an attempt's outcome.
pub fn result(job_id: &str, attempt: u32, outcome: &Outcome) -> pb::JobResult {
    let (kind, exit_code, signal, message) = match outcome {
        Outcome::Exited { code } => (pb::Outcome::Exited, *code, 0, String::new()),
        Outcome::Signaled { signal } => {
            (pb::Outcome::Signaled, 128 + signal, *signal, String::new())
        }
        Outcome::Cancelled => (pb::Outcome::Cancelled, 130, 0, String::new()),
        Outcome::TimedOut => (pb::Outcome::TimedOut, 124, 0, String::new()),
        Outcome::SpawnFailed { code, message } => {
            (pb::Outcome::SpawnFailed, *code, 0, message.clone())
        }
        Outcome::OomKilled => (
            pb::Outcome::OomKilled,
            hodei_core::job::OOM_EXIT_CODE,
            hodei_core::job::OOM_EXIT_CODE - 128,
            "out of memory: killed by the OOM killer".to_string(),
        ),
    };
    pb::JobResult {
        job_id: job_id.to_string(),
        exit_code,
        attempt,
        outcome: kind as i32,
        signal,
        message,
        stdout: None,
        stderr: None,
    }
}
