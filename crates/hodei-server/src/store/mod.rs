//! Durable state behind a small trait, so a PostgreSQL store can be added
//! without touching the rest. The orchestrator writes only through
//! [`Store::commit`], one transaction per engine batch; everything else reads.

mod batch;
mod cluster;
mod listing;
mod log_files;
mod pg_replica;
mod pg_sql;
mod postgres;
mod rows;
mod sqlite;
mod sqlite_checkpoint;

use std::collections::HashMap;

use bytes::Bytes;
use hodei_core::engine::{WorkerRecord, Writes};
use hodei_core::{Job, JobState, LogStream, Millis};

pub use cluster::{Cluster, ClusterEvent};
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, open_pool as open_sqlite_pool};

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
    #[error(
        "unsupported database URL {0}: use postgres://user:password@host:port/database, or no --database for the embedded SQLite store"
    )]
    UnsupportedDatabase(String),
    #[error(
        "this replica's lease expired and another replica took over its jobs; \
         refusing to write until it has rejoined"
    )]
    LeaseLost,
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

    /// The replica machinery when several orchestrators share this store.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }

    /// The PostgreSQL pool, when the store is PostgreSQL: tokens and
    /// secrets then live in the same database, shared by every replica.
    fn pg_pool(&self) -> Option<sqlx::PgPool> {
        None
    }
}

/// Opens the store a server is configured with: PostgreSQL when `database`
/// is a `postgres://` (or `postgresql://`) URL, else the embedded SQLite
/// database in `data_dir`.
pub async fn open(
    database: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let holder = server_id(data_dir).await?;
            Ok(std::sync::Arc::new(PgStore::connect(url, &holder).await?))
        }
        Some(other) => Err(StoreError::UnsupportedDatabase(redact_url(other))),
        None => Ok(std::sync::Arc::new(SqliteStore::open(data_dir).await?)),
    }
}

/// This server's lasting id: `server-id` in the data directory, created at
/// first start.
async fn server_id(data_dir: &std::path::Path) -> Result<String, StoreError> {
    let dir_error = |source| StoreError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    tokio::fs::create_dir_all(data_dir)
        .await
        .map_err(dir_error)?;
    let path = data_dir.join("server-id");
    match tokio::fs::read_to_string(&path).await {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => Err(dir_error(std::io::Error::other("server-id is empty"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::now_v7().to_string();
            tokio::fs::write(&path, format!("{id}\n"))
                .await
                .map_err(dir_error)?;
            Ok(id)
        }
        Err(e) => Err(dir_error(e)),
    }
}

/// `url` without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The range of one stream a log read covers: chunks that end after
/// `from`, up to the first that ends at or past `limit`. Chunks of a stream
/// are stored in offset order with neither gap nor overlap (the engine
/// refuses a chunk that would leave one), so the bytes from `from` to a
/// chunk's end are that end minus `from`: the chunk that ends at or past
/// `from + max_bytes` is the one a read stops after (at least one chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamRange {
    from: i64,
    limit: i64,
}

impl LogQuery {
    /// `stream`'s range; a stream not asked for is read from past every
    /// stored byte.
    fn range(&self, stream: LogStream) -> StreamRange {
        let wanted = self.stream.is_none_or(|s| s == stream);
        // An offset past i64::MAX is past every stored byte.
        let from = match i64::try_from(self.from[stream.index()]) {
            Ok(from) if wanted => from,
            _ => i64::MAX,
        };
        let max = i64::try_from(self.max_bytes.max(1)).unwrap_or(i64::MAX);
        StreamRange {
            from,
            limit: from.saturating_add(max),
        }
    }
}

/// One stream's part of [`READ_LOGS_SQLITE`] / [`READ_LOGS_PG`]: the
/// stream's chunks from its `from` up to the first that ends at or past its
/// `limit` (see [`StreamRange`]), each bound a range of the index found by
/// one seek, however long the log; a stream that ends first is read to its
/// end (`i64::MAX`).
macro_rules! read_stream_sql {
    ($stream:literal, $job:literal, $attempt:literal, $from:literal, $limit:literal) => {
        concat!(
            "SELECT * FROM (SELECT id, stream, start_offset, end_offset, ts, data ",
            "FROM log_chunks WHERE job_id = ",
            $job,
            " AND attempt = ",
            $attempt,
            " AND stream = ",
            $stream,
            " AND end_offset > ",
            $from,
            " AND end_offset <= COALESCE((SELECT MIN(end_offset) FROM log_chunks ",
            "WHERE job_id = ",
            $job,
            " AND attempt = ",
            $attempt,
            " AND stream = ",
            $stream,
            " AND end_offset >= ",
            $limit,
            "), 9223372036854775807) ORDER BY end_offset, id) AS s",
            $stream
        )
    };
}

/// A log read, both streams in one statement ([`log_read`] binds it): one
/// snapshot for both, one round trip to the database. Placeholders in the
/// SQLite and the PostgreSQL spelling.
macro_rules! read_logs_sql {
    ($p1:literal, $p2:literal, $p3:literal, $p4:literal, $p5:literal, $p6:literal) => {
        concat!(
            read_stream_sql!("0", $p1, $p2, $p3, $p4),
            " UNION ALL ",
            read_stream_sql!("1", $p1, $p2, $p5, $p6)
        )
    };
}

pub(crate) const READ_LOGS_SQLITE: &str = read_logs_sql!("?1", "?2", "?3", "?4", "?5", "?6");
pub(crate) const READ_LOGS_PG: &str = read_logs_sql!("$1", "$2", "$3", "$4", "$5", "$6");

/// The stores' one statement for a log read (`sql`: [`READ_LOGS_SQLITE`]
/// or [`READ_LOGS_PG`]) with `q` bound: job id, attempt, stdout's from and
/// limit, stderr's from and limit.
pub(crate) fn log_read<'q, DB>(
    sql: &'q str,
    q: &'q LogQuery,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let (out, err) = (q.range(LogStream::Stdout), q.range(LogStream::Stderr));
    sqlx::query(sql)
        .bind(q.job_id.as_str())
        .bind(i64::from(q.attempt))
        .bind(out.from)
        .bind(out.limit)
        .bind(err.from)
        .bind(err.limit)
}

/// Chunks read per stream, each with its arrival number, merged into
/// arrival order and cut after about `max_bytes` (at least one chunk).
pub(crate) fn merge_by_arrival(
    mut chunks: Vec<(i64, LogChunk)>,
    max_bytes: usize,
) -> Vec<LogChunk> {
    chunks.sort_by_key(|(id, _)| *id);
    let mut total = 0usize;
    let mut out = Vec::new();
    for (_, chunk) in chunks {
        total = total.saturating_add(chunk.data.len());
        out.push(chunk);
        if total >= max_bytes {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://hodei:s3cret@db:5432/hodei"),
            "postgres://hodei:***@db:5432/hodei"
        );
        assert_eq!(redact_url("postgres://db/hodei"), "postgres://db/hodei");
        assert_eq!(redact_url("mysql://u:p@h/d"), "mysql://u:***@h/d");
    }
}
