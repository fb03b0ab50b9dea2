//! The SQLite [`Store`]: one file, `hodei.db`, in the data directory.
//!
//! - The schema lives in `migrations/` (embedded, applied at [`SqliteStore::open`]).
//! - WAL journal with `synchronous = FULL`: a commit that returned is on disk.
//! - Writes go through a pool of exactly one connection (the orchestrator
//!   commits one batch at a time); reads use a separate pool of read-only
//!   connections, which in WAL mode never wait for a commit in progress.
//! - Every statement is a fixed SQL string, prepared once per connection by
//!   sqlx; inserts carry up to 64 rows each, so a commit of thousands of rows
//!   is a few dozen statements (about 30 ms for 1,000 jobs + 5,000 chunks).
//! - Rows are checked on the way out: an unknown state, a bad spec JSON or an
//!   out-of-range number is a [`StoreError::Corrupt`] naming the job.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::TryStreamExt;
use hodei_core::engine::{LogWrite, Writes};
use hodei_core::{Job, JobState, LogStream, Millis};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection};

use super::batch::{SHAPES, batches, shapes};
use super::log_files::LogFiles;
use super::rows::{corrupt, decode_chunk, job_from_row, log_end_from_row, to_i64, worker_from_row};
use super::sqlite_checkpoint::Checkpointer;
use super::{FinishedCount, JobFilter, LogChunk, LogQuery, Recovery, Store, StoreError, listing};

/// The database file inside the data directory.
const DB_FILE: &str = "hodei.db";
const READ_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LIMIT: u32 = 100;
/// The API pages at most 1000 jobs and asks for one more to know whether
/// another page follows.
const MAX_LIMIT: u32 = 1001;

/// `SELECT` of the columns a [`Job`] is read from, then `$rest`.
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!(
            "SELECT id, seq, state, attempt, retries, worker, exit_code, signal, reason, \
             cancel_requested, spec, created_at, assigned_at, started_at, finished_at, submitter \
             FROM jobs ",
            $rest
        )
    };
}

const INSERT_JOBS: &str = "INSERT INTO jobs (id, seq, state, attempt, retries, worker, \
     exit_code, signal, reason, cancel_requested, name, priority, spec, created_at, \
     assigned_at, started_at, finished_at, submitter) VALUES ";
/// On conflict only the columns that change after a job is created are set:
/// its id, sequence number, name, priority, spec, creation time and
/// submitter never do. SQLite rewrites the entries of every index on a
/// column named in the `SET` list, changed or not, so leaving these out
/// spares the `seq` and `name` indexes (pages written to the WAL) on every
/// state change.
const UPSERT_JOBS_TAIL: &str = " ON CONFLICT (id) DO UPDATE SET \
     state = excluded.state, attempt = excluded.attempt, retries = excluded.retries, \
     worker = excluded.worker, exit_code = excluded.exit_code, signal = excluded.signal, \
     reason = excluded.reason, cancel_requested = excluded.cancel_requested, \
     assigned_at = excluded.assigned_at, started_at = excluded.started_at, \
     finished_at = excluded.finished_at";
const INSERT_LOGS: &str = "INSERT INTO log_chunks (job_id, attempt, stream, start_offset, \
     end_offset, ts, data) VALUES ";
const UPSERT_WORKER: &str = "INSERT INTO workers (id, labels, slots, last_seen) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, \
     slots = excluded.slots, last_seen = excluded.last_seen";

/// The insert statements for each size (see [`super::batch`]), built once
/// so that each is prepared once per connection.
static UPSERT_JOBS_SQL: LazyLock<[String; SHAPES]> =
    LazyLock::new(|| shapes(|n| multi_row(INSERT_JOBS, 18, n, UPSERT_JOBS_TAIL)));
static INSERT_LOGS_SQL: LazyLock<[String; SHAPES]> =
    LazyLock::new(|| shapes(|n| multi_row(INSERT_LOGS, 7, n, "")));

const GET_JOB: &str = select_jobs!("WHERE id = ?1");
/// `?1` is a JSON array of ids: one statement whatever the number of ids.
const GET_JOBS: &str = select_jobs!("WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY seq");
/// The listing: `select_jobs!` with the conditions of [`listing::list_sql`].
const SELECT_JOBS: &str = select_jobs!("");
const UNFINISHED: &str =
    select_jobs!("WHERE state IN ('queued', 'assigned', 'running') ORDER BY seq");
const LOG_ENDS: &str = "SELECT j.id, j.attempt, l.stream, MAX(l.end_offset) AS end_offset \
     FROM jobs j JOIN log_chunks l ON l.job_id = j.id AND l.attempt = j.attempt \
     WHERE j.state IN ('queued', 'assigned', 'running') GROUP BY j.id, j.attempt, l.stream";
const ALL_WORKERS: &str = "SELECT id, labels, slots, last_seen FROM workers ORDER BY id";
const MAX_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM jobs";

/// The SQLite store. Cloning shares the pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every commit.
    write: SqlitePool,
    /// Read-only connections: everything else.
    read: SqlitePool,
    /// WAL checkpoints, off the writer's path.
    checkpointer: Arc<tokio::sync::Mutex<Checkpointer>>,
    /// Large log chunks (see [`super::log_files`]).
    logs: Arc<LogFiles>,
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/hodei.db` and brings its schema
    /// up to date.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|source| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
        let base = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let write_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // The checkpointer's connection checkpoints; the writer does not.
        let checkpoint_options = write_options.clone();
        let write_options = write_options.pragma("wal_autocheckpoint", "0");
        // No ping before each use (a round trip to the connection's
        // thread): a connection to a local file does not go stale, and a
        // failed statement is handled as a store outage anyway.
        let write = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(write_options)
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        // Opened after the migration, so the file exists and is in WAL mode.
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.read_only(true))
            .await?;
        let checkpointer = Checkpointer::start(checkpoint_options).await?;
        let dir = data_dir.to_path_buf();
        let logs = tokio::task::spawn_blocking(move || LogFiles::open(&dir))
            .await
            .map_err(|e| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source: std::io::Error::other(e),
            })??;
        Ok(SqliteStore {
            write,
            read,
            checkpointer: Arc::new(tokio::sync::Mutex::new(checkpointer)),
            logs: Arc::new(logs),
        })
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.checkpointer.lock().await.stop().await;
        self.read.close().await;
        self.write.close().await;
    }
}

/// A read-write pool of `connections` on `data_dir/hodei.db` (WAL,
/// `synchronous = FULL`: a change that returned is on disk), the schema
/// brought up to date: for the tables kept beside the jobs (auth, secrets).
pub async fn open_pool(data_dir: &Path, connections: u32) -> Result<SqlitePool, StoreError> {
    tokio::fs::create_dir_all(data_dir)
        .await
        .map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join(DB_FILE))
        .busy_timeout(BUSY_TIMEOUT)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn commit(&self, writes: &Writes) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let jobs: Vec<&Job> = writes.jobs.values().collect();
        let statements = batches(&jobs, &UPSERT_JOBS_SQL).count()
            + batches(&writes.logs, &INSERT_LOGS_SQL).count()
            + writes.workers.len();
        // Which chunks' bytes go to files; those are on disk before the
        // rows that name them.
        let in_files = self.logs.placement(&writes.logs);
        let logs: Vec<(&LogWrite, bool)> = writes.logs.iter().zip(in_files).collect();
        let to_files: Vec<LogWrite> = logs
            .iter()
            .filter(|(_, f)| *f)
            .map(|(l, _)| (*l).clone())
            .collect();
        if !to_files.is_empty() {
            let files = self.logs.clone();
            tokio::task::spawn_blocking(move || files.write(&to_files))
                .await
                .map_err(|e| StoreError::DataDir {
                    path: super::log_files::LOGS_DIR.to_string(),
                    source: std::io::Error::other(e),
                })??;
        }
        let mut conn = self.write.acquire().await?;
        if statements == 1 {
            // A lone statement is a transaction of its own (autocommit):
            // atomic, and on disk when it returns (synchronous = FULL). It
            // spares the BEGIN and COMMIT round trips to the connection's
            // thread.
            return write_all(&mut conn, &jobs, &logs, writes).await;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        write_all(&mut tx, &jobs, &logs, writes).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(GET_JOB)
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(ids)
            .map_err(|e| corrupt("?", format!("cannot encode job ids: {e}")))?;
        let rows = sqlx::query(GET_JOBS)
            .bind(ids)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = match filter.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        // A cursor past i64::MAX excludes nothing.
        let before = filter
            .before_seq
            .map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let (sql, values) = listing::list_sql(SELECT_JOBS, filter);
        let mut query = sqlx::query(&sql);
        for value in values {
            query = query.bind(value);
        }
        let rows = query
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        listing::count_by_state(&self.read).await
    }

    async fn finished_since(&self, since: Millis) -> Result<Vec<FinishedCount>, StoreError> {
        listing::finished_since(&self.read, since).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogChunk>, StoreError> {
        // Each stream is read up to `max_bytes` (the most any stream can
        // contribute), then merged by arrival order.
        let mut rows = super::log_read(super::READ_LOGS_SQLITE, q).fetch(&self.read);
        let mut chunks: Vec<(i64, LogChunk)> = Vec::new();
        // Chunks whose bytes are in a file: (index in `chunks`, end offset).
        let mut in_files: Vec<(usize, u64)> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let id: i64 = row.try_get("id")?;
            let end: i64 = row.try_get("end_offset")?;
            let mut chunk = decode_chunk(&row, &q.from).map_err(|m| corrupt(&q.job_id, m))?;
            let end = u64::try_from(end).unwrap_or_default();
            if chunk.data.is_empty() && end > chunk.offset {
                // In a file: read below, from where the reader is.
                chunk.offset = chunk.offset.max(q.from[chunk.stream.index()]);
                in_files.push((chunks.len(), end));
            }
            chunks.push((id, chunk));
        }
        drop(rows);
        if !in_files.is_empty() {
            let files = self.logs.clone();
            let (job_id, attempt) = (q.job_id.clone(), q.attempt);
            let ranges: Vec<(LogStream, u64, u64)> = in_files
                .iter()
                .map(|&(i, end)| (chunks[i].1.stream, chunks[i].1.offset, end))
                .collect();
            let read = tokio::task::spawn_blocking(move || {
                ranges
                    .into_iter()
                    .map(|(stream, from, to)| files.read(&job_id, attempt, stream, from, to))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await
            .map_err(|e| corrupt(&q.job_id, format!("reading log files: {e}")))??;
            for ((i, _), data) in in_files.into_iter().zip(read) {
                chunks[i].1.data = data.into();
            }
        }
        Ok(super::merge_by_arrival(chunks, q.max_bytes))
    }

    async fn recover(&self) -> Result<Recovery, StoreError> {
        // One read transaction: a consistent snapshot.
        let mut tx = self.read.begin().await?;
        let unfinished = sqlx::query(UNFINISHED)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<Job>, StoreError>>()?;
        let mut log_ends: HashMap<(String, u32), [u64; 2]> = unfinished
            .iter()
            .map(|job| ((job.id.clone(), job.attempt), [0, 0]))
            .collect();
        for row in sqlx::query(LOG_ENDS).fetch_all(&mut *tx).await? {
            let (id, attempt, stream, end) = log_end_from_row(&row)?;
            log_ends.entry((id, attempt)).or_default()[stream.index()] = end;
        }
        let workers = sqlx::query(ALL_WORKERS)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(worker_from_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let max_seq: i64 = sqlx::query_scalar(MAX_SEQ).fetch_one(&mut *tx).await?;
        let max_seq = u64::try_from(max_seq)
            .map_err(|_| corrupt("(max seq)", format!("negative seq {max_seq}")))?;
        tx.commit().await?;
        Ok(Recovery {
            unfinished,
            log_ends,
            workers,
            max_seq,
        })
    }
}

/// `head`, then `rows` groups of `cols` placeholders, then `tail`.
fn multi_row(head: &str, cols: usize, rows: usize, tail: &str) -> String {
    let group = format!("({})", vec!["?"; cols].join(", "));
    format!("{head}{}{tail}", vec![group; rows].join(", "))
}

/// Writes the batch's jobs, logs (each with whether its bytes are in a
/// file) and workers on `conn`.
async fn write_all(
    conn: &mut SqliteConnection,
    jobs: &[&Job],
    logs: &[(&LogWrite, bool)],
    writes: &Writes,
) -> Result<(), StoreError> {
    for (sql, group) in batches(jobs, &UPSERT_JOBS_SQL) {
        let mut query = sqlx::query(sql);
        for job in group {
            query = bind_job(query, job)?;
        }
        query.execute(&mut *conn).await?;
    }
    for (sql, group) in batches(logs, &INSERT_LOGS_SQL) {
        let mut query = sqlx::query(sql);
        for (log, in_file) in group {
            query = bind_log(query, log, *in_file)?;
        }
        query.execute(&mut *conn).await?;
    }
    for worker in writes.workers.values() {
        let labels = serde_json::to_string(&worker.labels)
            .map_err(|e| corrupt(&worker.id, format!("cannot encode worker labels: {e}")))?;
        sqlx::query(UPSERT_WORKER)
            .bind(worker.id.as_str())
            .bind(labels)
            .bind(i64::from(worker.slots))
            .bind(worker.last_seen)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

fn bind_job<'q>(query: Query<'q>, job: &'q Job) -> Result<Query<'q>, StoreError> {
    let spec = serde_json::to_string(&job.spec)
        .map_err(|e| corrupt(&job.id, format!("cannot encode spec: {e}")))?;
    Ok(query
        .bind(job.id.as_str())
        .bind(to_i64(job.seq, &job.id, "seq")?)
        .bind(job.state.as_str())
        .bind(i64::from(job.attempt))
        .bind(i64::from(job.retries))
        .bind(job.worker.as_deref())
        .bind(job.exit_code)
        .bind(job.signal)
        .bind(job.reason.as_deref())
        .bind(i64::from(job.cancel_requested))
        .bind(job.spec.name.as_str())
        .bind(job.spec.priority)
        .bind(spec)
        .bind(job.created_at)
        .bind(job.assigned_at)
        .bind(job.started_at)
        .bind(job.finished_at)
        .bind(job.submitter.as_deref()))
}

fn bind_log<'q>(
    query: Query<'q>,
    log: &'q LogWrite,
    in_file: bool,
) -> Result<Query<'q>, StoreError> {
    let end = log.offset.saturating_add(log.data.len() as u64);
    // A chunk kept in a file has an empty `data` and its real end offset.
    let data = if in_file { &[][..] } else { &log.data[..] };
    Ok(query
        .bind(log.job_id.as_str())
        .bind(i64::from(log.attempt))
        .bind(log.stream.index() as i64) // 0 = stdout, 1 = stderr
        .bind(to_i64(log.offset, &log.job_id, "log offset")?)
        .bind(to_i64(end, &log.job_id, "log end offset")?)
        .bind(log.timestamp_ms)
        .bind(data))
}
