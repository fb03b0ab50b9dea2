//! The JSON shapes of the HTTP API (`/api/v1`), shared by the server and its
//! clients so both sides agree by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState};
use crate::log::LogStream;
use crate::spec::{JobSpec, PullPolicy};

/// `POST /api/v1/jobs`. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Optional client-chosen id; the server makes one when absent.
    /// Submitting the same id and spec again returns the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_ms: Option<u64>,
    /// CPU limit in millicores (1000 = one CPU); image jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
    /// Memory limit in bytes; image jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// `if-not-present` or `never`; absent: the agent's default. Image jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Names of stored secrets the job gets as environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl SubmitRequest {
    /// Splits the request into the optional id and the job spec.
    pub fn into_parts(self) -> (Option<String>, JobSpec) {
        let spec = JobSpec {
            name: self.name,
            command: self.command,
            image: self.image,
            env: self.env,
            working_dir: self.working_dir,
            timeout_ms: self.timeout_ms,
            labels: self.labels,
            priority: self.priority,
            max_retries: self.max_retries,
            kill_grace_ms: self.kill_grace_ms,
            cpu_millicores: self.cpu_millicores,
            memory_bytes: self.memory_bytes,
            pull_policy: self.pull_policy,
            secrets: self.secrets,
        };
        (self.id, spec)
    }
}

/// `PUT /api/v1/secrets/{name}`: a secret's value. No endpoint ever
/// returns it; Debug output hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecretRequest {
    pub value: String,
}

impl std::fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetSecretRequest { value: [MASKED] }")
    }
}

/// A stored secret: its name and times (Unix ms), never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: crate::Millis,
    pub updated_at: crate::Millis,
}

/// `GET /api/v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// The reply to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub job: Job,
    /// False when an identical job with this id already existed.
    pub created: bool,
}

/// Most jobs one `POST /api/v1/jobs/batch` takes.
pub const MAX_BATCH_JOBS: usize = 10_000;

/// `POST /api/v1/jobs/batch`: several submissions in one request, applied
/// in one transaction. Each item is a [`SubmitRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSubmitRequest {
    pub jobs: Vec<SubmitRequest>,
}

/// The reply to a batch submission, in the order of the request's items.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSubmitResponse {
    /// The job ids (generated where the item had none).
    pub ids: Vec<String>,
    /// False where an identical job with that id already existed.
    pub created: Vec<bool>,
}

/// `GET /api/v1/jobs`: a page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging of `GET /api/v1/jobs`, as a client sends them (every
/// filter is optional; they combine with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Jobs that require this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Jobs whose current (or last) attempt ran on this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Jobs whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Finished jobs, by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub succeeded: u64,
    /// `failed`, `timed_out` and `lost`.
    pub failed: u64,
    pub cancelled: u64,
}

impl Finished {
    /// Counts `n` jobs that ended in `state` (unfinished states are ignored).
    pub fn add(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Succeeded => self.succeeded += n,
            JobState::Failed | JobState::TimedOut | JobState::Lost => self.failed += n,
            JobState::Cancelled => self.cancelled += n,
            JobState::Queued | JobState::Assigned | JobState::Running => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// Jobs that finished in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteStats {
    /// Start of the minute (Unix ms).
    pub start_ms: i64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// Workers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounts {
    pub ready: u64,
    pub busy: u64,
    pub draining: u64,
    pub offline: u64,
}

/// `GET /api/v1/stats`: the overview numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// When these numbers were taken (Unix ms).
    pub at_ms: i64,
    /// Jobs in each state; every state is present.
    pub jobs: BTreeMap<String, u64>,
    /// Jobs waiting for a worker (`queued`).
    pub queue_depth: u64,
    /// Jobs on a worker (`assigned` or `running`).
    pub running: u64,
    /// Jobs that finished in the last hour.
    pub last_hour: Finished,
    /// Jobs finished per minute over the last hour, oldest first (60 entries,
    /// the last one the current, partial minute).
    pub per_minute: Vec<MinuteStats>,
    pub workers: WorkerCounts,
}

/// Event names of `GET /api/v1/events` (Server-Sent Events).
pub mod events {
    /// Sent once when the stream is subscribed: changes from now on are sent.
    pub const READY: &str = "ready";
    /// A job changed state; data is the [`crate::Job`] as stored.
    pub const JOB: &str = "job";
    /// A worker changed (state, slots in use, running jobs); data is the
    /// [`crate::engine::WorkerInfo`].
    pub const WORKER: &str = "worker";
    /// Changes were missed (the client was too slow); data is how many.
    /// Reload what is shown.
    pub const LAGGED: &str = "lagged";
}

/// Every error body: a stable machine `code` and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// The input field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// SSE `log` event of `GET /api/v1/jobs/{id}/logs/follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    pub attempt: u32,
    pub stream: LogStream,
    pub offset: u64,
    /// The raw bytes, base64 (standard alphabet): output need not be UTF-8.
    pub data: String,
    pub timestamp_ms: i64,
}

/// SSE `end` event: the job finished and every log byte was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndEvent {
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
}

impl EndEvent {
    pub fn of(job: &Job) -> EndEvent {
        EndEvent {
            state: job.state,
            exit_code: job.exit_code,
            signal: job.signal,
            reason: job.reason.clone(),
        }
    }

    /// The exit status `hodei run` reports for this ending: the job's own
    /// code, 124 timed out, 130 cancelled, 125 lost (Hodei could not finish it).
    pub fn cli_exit_code(&self) -> i32 {
        match self.state {
            JobState::Succeeded => 0,
            JobState::Failed => self.exit_code.unwrap_or(1),
            JobState::TimedOut => 124,
            JobState::Cancelled => 130,
            JobState::Lost | JobState::Queued | JobState::Assigned | JobState::Running => 125,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SubmitRequest>(r#"{"command":["true"],"bogus":1}"#);
        assert!(err.is_err());
        let ok: SubmitRequest = serde_json::from_str(r#"{"command":["true"]}"#).unwrap();
        assert_eq!(ok.into_parts().1.command, vec!["true"]);
    }

    #[test]
    fn job_queries_serialize_only_what_is_set() {
        let q = JobQuery {
            state: Some(JobState::TimedOut),
            name_prefix: Some("build".into()),
            ..JobQuery::default()
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"state": "timed_out", "name_prefix": "build"})
        );
    }

    #[test]
    fn finished_counts_group_failures() {
        let mut f = Finished::default();
        for s in JobState::ALL {
            f.add(s, 1);
        }
        assert_eq!(
            (f.succeeded, f.failed, f.cancelled, f.total()),
            (1, 3, 1, 5)
        );
    }

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        let end = |state, exit_code| EndEvent {
            state,
            exit_code,
            signal: None,
            reason: None,
        };
        assert_eq!(end(JobState::Succeeded, Some(0)).cli_exit_code(), 0);
        assert_eq!(end(JobState::Failed, Some(3)).cli_exit_code(), 3);
        assert_eq!(end(JobState::Failed, Some(127)).cli_exit_code(), 127);
        assert_eq!(end(JobState::TimedOut, None).cli_exit_code(), 124);
        assert_eq!(end(JobState::Cancelled, None).cli_exit_code(), 130);
        assert_eq!(end(JobState::Lost, None).cli_exit_code(), 125);
    }
}
