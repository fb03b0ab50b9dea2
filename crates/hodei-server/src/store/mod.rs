//! Durable state behind a small trait, so a PostgreSQL store can be added
//! without touching the rest. The orchestrator writes only through
//! [`Store::commit`], one transaction per engine batch; everything else reads.

mod listing;
mod sqlite;

use std::collections::HashMap;

use bytes::Bytes;
use hodei_core::engine::{WorkerRecord, Writes};
use hodei_core::{Job, JobState, LogStream, Millis};

pub use sqlite::SqliteStore;

/// A store failure. The orchestrator treats a failed commit as fatal for the
/// batch: nothing in it is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt record for job {job_id}: {message}")]
    Corrupt { job_id: String, message: String },
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// Which jobs to list, newest first. Every filter is optional; they combine
/// with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    /// Jobs whose spec requires this label.
    pub label: Option<String>,
    /// Jobs whose current (or last) attempt was on this worker.
    pub worker: Option<String>,
    /// Jobs whose name starts with this.
    pub name_prefix: Option<String>,
    /// Only jobs submitted before this sequence number (the cursor of the
    /// previous page).
    pub before_seq: Option<u64>,
    pub limit: u32,
}

/// A stored piece of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    /// Byte offset of `data` within its stream.
    pub offset: u64,
    pub data: Bytes,
    pub timestamp_ms: Millis,
}

/// Where to read a log from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub job_id: String,
    pub attempt: u32,
    /// `None`: both streams, in the order the chunks were stored.
    pub stream: Option<LogStream>,
    /// Read bytes at or after these offsets (stdout, stderr).
    pub from: [u64; 2],
    /// Stop after about this many bytes (at least one chunk is returned).
    pub max_bytes: usize,
}

/// How many jobs in `state` finished in the minute `minute` (minutes counted
/// from the `since` of [`Store::finished_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedCount {
    pub minute: u32,
    pub state: JobState,
    pub count: u64,
}

/// Everything the orchestrator needs to rebuild its state after a start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Jobs in `queued`, `assigned` or `running`.
    pub unfinished: Vec<Job>,
    /// Stored log end (stdout, stderr) of each unfinished job's current attempt.
    pub log_ends: HashMap<(String, u32), [u64; 2]>,
    pub workers: Vec<WorkerRecord>,
    /// The highest job sequence number ever given (0 if none).
    pub max_seq: u64,
}

/// The orchestrator's durable state.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Makes `writes` durable in one transaction (all or nothing); returns
    /// only once it is on disk.
    async fn commit(&self, writes: &Writes) -> Result<(), StoreError>;

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// The stored records of those of `ids` that exist.
    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError>;

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError>;

    /// How many jobs are in each state (states with none are left out).
    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError>;

    /// Jobs finished at or after `since`, counted per minute and state.
    async fn finished_since(&self, since: Millis) -> Result<Vec<FinishedCount>, StoreError>;

    /// Answers when the store can serve reads (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Log chunks in order, the first one trimmed to start at `from`.
    async fn read_logs(&self, query: &LogQuery) -> Result<Vec<LogChunk>, StoreError>;

    async fn recover(&self) -> Result<Recovery, StoreError>;
}
