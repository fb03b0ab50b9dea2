//! OpenAPI schemas of the API's JSON shapes.
//!
//! The shapes themselves live in `hodei_core` (`api`, `job`, `spec`,
//! `engine::WorkerInfo`), which stays free of OpenAPI. Each schema here
//! mirrors one of them field by field under the same name (`as = ...`);
//! the tests serialize real values of the `hodei_core` types and check them
//! against these schemas, so a field added on one side and not the other
//! fails the build's tests.

#![allow(dead_code)] // The mirrors are only read by the OpenAPI derive.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// Where a job is in its life.
#[derive(Serialize, ToSchema)]
#[schema(as = JobState)]
#[serde(rename_all = "snake_case")]
pub enum JobStateSchema {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

/// Which output of a process a log chunk belongs to.
#[derive(Serialize, ToSchema)]
#[schema(as = LogStream)]
#[serde(rename_all = "snake_case")]
pub enum LogStreamSchema {
    Stdout,
    Stderr,
}

/// A worker's state: `ready` (attached, free slots), `busy` (all slots
/// used), `draining` (no new jobs) or `offline` (no session).
#[derive(Serialize, ToSchema)]
#[schema(as = WorkerState)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStateSchema {
    Ready,
    Busy,
    Draining,
    Offline,
}

/// When a worker pulls a job's image: `if-not-present` (pull a missing
/// image) or `never` (a missing image fails the job).
#[derive(Serialize, ToSchema)]
#[schema(as = PullPolicy)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicySchema {
    IfNotPresent,
    Never,
}

/// Everything a user says about a job.
#[derive(Serialize, ToSchema)]
#[schema(as = JobSpec)]
pub struct JobSpecSchema {
    /// Human name; defaults to the command's first word.
    name: String,
    /// argv: executed directly, no shell.
    command: Vec<String>,
    /// Container image; when set the job needs a worker with `docker`.
    image: Option<String>,
    env: BTreeMap<String, String>,
    /// Working directory on the worker; null: a fresh per-job directory.
    working_dir: Option<String>,
    timeout_ms: Option<u64>,
    /// Capabilities the worker must have (sorted, unique).
    labels: Vec<String>,
    /// Higher runs first; FIFO within a priority.
    priority: i32,
    /// How many times a lost job is run again.
    max_retries: u32,
    /// SIGTERM → SIGKILL grace on cancel or timeout.
    kill_grace_ms: Option<u64>,
    /// CPU limit of the job's container in millicores (1000 = one CPU);
    /// image jobs only.
    cpu_millicores: Option<u64>,
    /// Memory limit of the job's container in bytes; image jobs only.
    memory_bytes: Option<u64>,
    /// null: the agent's default (`if-not-present` unless set otherwise);
    /// image jobs only.
    pull_policy: Option<PullPolicySchema>,
    /// Names of stored secrets the job gets as environment variables.
    /// Never their values.
    secrets: Vec<String>,
}

/// The durable record of a job. Times are Unix milliseconds.
#[derive(Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobSchema {
    id: String,
    spec: JobSpecSchema,
    state: JobStateSchema,
    /// The current attempt; 0 until first assigned.
    attempt: u32,
    /// Attempts lost (their worker gone) and queued again; counts against
    /// `spec.max_retries`. Attempts the agent rejected before starting them
    /// do not count.
    retries: u32,
    /// The worker holding the current attempt, or the last one.
    worker: Option<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// Why the job ended as it did (spawn error, lost worker, cancel reason).
    reason: Option<String>,
    cancel_requested: bool,
    /// Submission order; also the list cursor.
    seq: u64,
    created_at: i64,
    assigned_at: Option<i64>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    /// The id of the token that submitted the job; absent when auth is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    submitter: Option<String>,
}

/// A job submission. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = SubmitRequest)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequestSchema {
    /// Optional client-chosen id (letters, digits, `._-`, at most 128); the
    /// server makes a UUIDv7 when absent. The same id and spec again
    /// returns the same job.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    command: Vec<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    max_retries: u32,
    #[serde(default)]
    kill_grace_ms: Option<u64>,
    /// CPU limit in millicores (1000 = one CPU); image jobs only.
    #[serde(default)]
    cpu_millicores: Option<u64>,
    /// Memory limit in bytes (at least 6 MiB); image jobs only.
    #[serde(default)]
    memory_bytes: Option<u64>,
    /// Absent: the agent's default. Image jobs only.
    #[serde(default)]
    pull_policy: Option<PullPolicySchema>,
    /// Names of stored secrets (`PUT /api/v1/secrets/{name}`) the job gets
    /// as environment variables of the same names. Unknown names: 400.
    #[serde(default)]
    secrets: Vec<String>,
}

/// The reply to a submission.
#[derive(Serialize, ToSchema)]
#[schema(as = SubmitResponse)]
pub struct SubmitResponseSchema {
    job: JobSchema,
    /// False when an identical job with this id already existed.
    created: bool,
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = JobList)]
pub struct JobListSchema {
    jobs: Vec<JobSchema>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Every error: a stable machine `code` (`invalid_argument`, `not_found`,
/// `already_exists`, `failed_precondition`, `payload_too_large`,
/// `unsupported_media_type`, `method_not_allowed`, `unavailable`,
/// `internal`) and a human `message`.
#[derive(Serialize, ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorBodySchema {
    code: String,
    message: String,
    /// The input field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// SSE `log` event of a log follow.
#[derive(Serialize, ToSchema)]
#[schema(as = LogEvent)]
pub struct LogEventSchema {
    attempt: u32,
    stream: LogStreamSchema,
    /// Byte offset of `data` in its stream.
    offset: u64,
    /// The raw bytes, base64 (standard alphabet).
    data: String,
    /// When the agent read them (Unix ms).
    timestamp_ms: i64,
}

/// SSE `end` event of a log follow: the job finished and every byte was sent.
#[derive(Serialize, ToSchema)]
#[schema(as = EndEvent)]
pub struct EndEventSchema {
    state: JobStateSchema,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<String>,
}

/// A worker as users see it.
#[derive(Serialize, ToSchema)]
#[schema(as = WorkerInfo)]
pub struct WorkerInfoSchema {
    id: String,
    labels: Vec<String>,
    /// Jobs it runs at once.
    slots: u32,
    /// Assignments it takes beyond its slots, each waiting on the agent for
    /// a slot to free (`hodei agent --prefetch`; 0 for an agent that did
    /// not ask for any).
    prefetch: u32,
    /// Ids of the jobs it holds: at most `slots` of them run, the others
    /// (at most `prefetch`) wait on the agent for a slot.
    running: Vec<String>,
    state: WorkerStateSchema,
    /// Last heartbeat or session change (Unix ms).
    last_seen: i64,
}

/// Finished jobs by how they ended (`failed` counts failed, timed out and lost).
#[derive(Serialize, ToSchema)]
#[schema(as = Finished)]
pub struct FinishedSchema {
    succeeded: u64,
    failed: u64,
    cancelled: u64,
}

/// Jobs that finished in one minute.
#[derive(Serialize, ToSchema)]
#[schema(as = MinuteStats)]
pub struct MinuteStatsSchema {
    /// Start of the minute (Unix ms).
    start_ms: i64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
}

/// Workers by state.
#[derive(Serialize, ToSchema)]
#[schema(as = WorkerCounts)]
pub struct WorkerCountsSchema {
    ready: u64,
    busy: u64,
    draining: u64,
    offline: u64,
}

/// The overview numbers.
#[derive(Serialize, ToSchema)]
#[schema(as = Stats)]
pub struct StatsSchema {
    /// When these numbers were taken (Unix ms).
    at_ms: i64,
    /// Jobs in each state, every state present.
    jobs: BTreeMap<String, u64>,
    /// Jobs `queued`.
    queue_depth: u64,
    /// Jobs `assigned` or `running`.
    running: u64,
    /// Jobs finished in the last 60 minutes (the current one included).
    last_hour: FinishedSchema,
    /// Jobs finished per minute, oldest first, 60 entries.
    per_minute: Vec<MinuteStatsSchema>,
    workers: WorkerCountsSchema,
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
