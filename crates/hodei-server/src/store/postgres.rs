//! The PostgreSQL [`Store`], selected with `--database postgres://…`.
//!
//! - The schema lives in `migrations-postgres/` (embedded, applied at
//!   [`PgStore::connect`] under sqlx's migration lock, so replicas starting
//!   together apply it once).
//! - A commit is one transaction; PostgreSQL's default `synchronous_commit`
//!   means it is flushed to the write-ahead log before `COMMIT` returns.
//! - Inserts carry up to 64 rows each, as in the SQLite store.
//! - Reads that must agree with each other (logs of two streams, recovery)
//!   run in one `REPEATABLE READ` transaction: one snapshot.
//! - Rows are decoded and checked by [`super::rows`], shared with SQLite.
//! - Any number of orchestrators (replicas) share a database: each holds a
//!   lease row in `replicas`, renewed in the background and in every
//!   commit's transaction, and every job write is fenced by the row's
//!   owner (see `cluster.rs` and `pg_replica.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::TryStreamExt;
use hodei_core::engine::{LogWrite, Writes};
use hodei_core::{Job, JobState, Millis};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::Cluster;
use super::batch::{SHAPES, batches, shapes};
use super::pg_replica;
use super::pg_sql::{list_sql, multi_row};
use super::rows::{
    corrupt, decode_chunk, finished_from_row, job_from_row, log_end_from_row, state_count_from_row,
    to_i64, worker_from_row,
};
use super::{FinishedCount, JobFilter, LogChunk, LogQuery, Recovery, Store, StoreError};

const MAX_CONNECTIONS: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1001;

/// The columns a job is decoded from (see `rows::job_from_row`).
macro_rules! job_columns {
    () => {
        "id, seq, state, attempt, retries, worker, exit_code, signal, reason, cancel_requested, \
         spec::text AS spec, created_at, assigned_at, started_at, finished_at, submitter"
    };
}

macro_rules! select_jobs {
    ($rest:literal) => {
        concat!("SELECT ", job_columns!(), " FROM jobs ", $rest)
    };
}

/// `RETURNING` these to decode the rows an `UPDATE` changed.
pub(super) const RETURNING_JOB: &str = job_columns!();

const INSERT_JOBS: &str = "INSERT INTO jobs (id, seq, state, attempt, retries, worker, \
     exit_code, signal, reason, cancel_requested, name, priority, spec, created_at, \
     assigned_at, started_at, finished_at, submitter, replica) VALUES ";
/// Columns per job row in `INSERT_JOBS`.
const JOB_COLS: usize = 19;
const UPSERT_JOBS_TAIL: &str = " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, \
     state = excluded.state, attempt = excluded.attempt, retries = excluded.retries, \
     worker = excluded.worker, exit_code = excluded.exit_code, signal = excluded.signal, \
     reason = excluded.reason, cancel_requested = excluded.cancel_requested, \
     name = excluded.name, priority = excluded.priority, spec = excluded.spec, \
     created_at = excluded.created_at, assigned_at = excluded.assigned_at, \
     started_at = excluded.started_at, finished_at = excluded.finished_at, \
     submitter = excluded.submitter, \
     replica = excluded.replica \
     WHERE jobs.seq = excluded.seq AND (jobs.replica IS NULL OR jobs.replica = ";
/// Column 13 (the spec) is cast from text to JSONB.
const JOB_CASTS: &[(usize, &str)] = &[(12, "::jsonb")];
const INSERT_LOGS: &str = "INSERT INTO log_chunks (job_id, attempt, stream, start_offset, \
     end_offset, ts, data) VALUES ";
const UPSERT_WORKER: &str = "INSERT INTO workers (id, labels, slots, last_seen) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, \
     slots = excluded.slots, last_seen = excluded.last_seen";

/// The fenced upsert: a row another replica owns is left alone, and so is
/// a job that another replica created first under the same id (a job's
/// sequence number never changes, so another one means another creation);
/// the ids written are returned. The last parameter is this replica's id.
static UPSERT_JOBS_SQL: LazyLock<[String; SHAPES]> = LazyLock::new(|| {
    shapes(|n| {
        let tail = format!("{UPSERT_JOBS_TAIL}${}) RETURNING id", n * JOB_COLS + 1);
        multi_row(INSERT_JOBS, JOB_COLS, JOB_CASTS, n, &tail)
    })
});
static INSERT_LOGS_SQL: LazyLock<[String; SHAPES]> =
    LazyLock::new(|| shapes(|n| multi_row(INSERT_LOGS, 7, &[], n, "")));

const GET_JOB: &str = select_jobs!("WHERE id = $1");
const GET_JOBS: &str = select_jobs!("WHERE id = ANY($1) ORDER BY seq");
const SELECT_JOBS: &str = select_jobs!("");
/// Unfinished jobs this replica holds after a start: the shared queue,
/// its own attempts, and attempts no replica owns (written before replicas).
const UNFINISHED: &str = select_jobs!(
    "WHERE state IN ('queued', 'assigned', 'running') \
     AND (replica IS NULL OR replica = $1) ORDER BY seq"
);
const LOG_ENDS: &str = "SELECT j.id, j.attempt, l.stream, MAX(l.end_offset) AS end_offset \
     FROM jobs j JOIN log_chunks l ON l.job_id = j.id AND l.attempt = j.attempt \
     WHERE j.state IN ('queued', 'assigned', 'running') \
     AND (j.replica IS NULL OR j.replica = $1) GROUP BY j.id, j.attempt, l.stream";
const ALL_WORKERS: &str = "SELECT id, labels, slots, last_seen FROM workers ORDER BY id";
const MAX_SEQ: &str = "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM jobs";
const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state";
const FINISHED_SINCE: &str = "SELECT (finished_at - $1) / 60000 AS minute, state, \
     COUNT(*) AS n FROM jobs WHERE finished_at >= $1 GROUP BY minute, state";

/// The PostgreSQL store. Cloning shares the pool and the lease.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// Who this server is in `replicas` (its lasting `server-id`).
    pub(super) replica: Arc<str>,
    /// Its sequence slot (see `hodei_core::engine::replica_seq`).
    pub(super) slot: Arc<AtomicU16>,
    /// Keeps the lease renewal going while any clone is alive.
    _alive: Arc<()>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), brings the
    /// schema up to date and registers as replica `replica` (a lasting id
    /// of this server: the same server restarting gets its own row, slot
    /// and unfinished jobs back).
    pub async fn connect(url: &str, replica: &str) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        let slot = pg_replica::register(&pool, replica, 0).await?;
        let alive = Arc::new(());
        tokio::spawn(pg_replica::renew_lease(
            pool.clone(),
            replica.to_string(),
            Arc::downgrade(&alive),
        ));
        tracing::info!(replica, slot, "registered as a replica of the database");
        Ok(PgStore {
            pool,
            replica: replica.into(),
            slot: Arc::new(AtomicU16::new(slot)),
            _alive: alive,
        })
    }

    /// The pool, for the replica machinery that shares this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn commit(&self, writes: &Writes) -> Result<(), StoreError> {
        let lost = super::Cluster::commit_fenced(self, writes).await?;
        if !lost.is_empty() {
            tracing::debug!(?lost, "jobs owned by another replica were not written");
        }
        Ok(())
    }

    fn cluster(&self) -> Option<&dyn super::Cluster> {
        Some(self)
    }

    fn pg_pool(&self) -> Option<PgPool> {
        Some(self.pool.clone())
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(GET_JOB)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(GET_JOBS)
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = match filter.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let before = filter
            .before_seq
            .map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let (sql, values) = list_sql(SELECT_JOBS, filter);
        let mut query = sqlx::query(&sql);
        for value in values {
            query = query.bind(value);
        }
        let rows = query
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let rows = sqlx::query(COUNT_BY_STATE).fetch_all(&self.pool).await?;
        rows.iter().map(state_count_from_row).collect()
    }

    async fn finished_since(&self, since: Millis) -> Result<Vec<FinishedCount>, StoreError> {
        let rows = sqlx::query(FINISHED_SINCE)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(finished_from_row).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogChunk>, StoreError> {
        // Each stream is read up to `max_bytes` (the most any stream can
        // contribute), then merged by arrival order.
        let mut rows = super::log_read(super::READ_LOGS_PG, q).fetch(&self.pool);
        let mut chunks: Vec<(i64, LogChunk)> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let id: i64 = row.try_get("id")?;
            chunks.push((
                id,
                decode_chunk(&row, &q.from).map_err(|m| corrupt(&q.job_id, m))?,
            ));
        }
        Ok(super::merge_by_arrival(chunks, q.max_bytes))
    }

    async fn recover(&self) -> Result<Recovery, StoreError> {
        // Back after an outage in which this replica was swept: it joins
        // again, with nothing of its own left.
        let slot = pg_replica::register(&self.pool, &self.replica, self.seq_slot()).await?;
        self.slot.store(slot, Ordering::Relaxed);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let unfinished = sqlx::query(UNFINISHED)
            .bind(&*self.replica)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<Job>, StoreError>>()?;
        let mut log_ends: HashMap<(String, u32), [u64; 2]> = unfinished
            .iter()
            .map(|job| ((job.id.clone(), job.attempt), [0, 0]))
            .collect();
        for row in sqlx::query(LOG_ENDS)
            .bind(&*self.replica)
            .fetch_all(&mut *tx)
            .await?
        {
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

/// Writes a batch's jobs (fenced: see `UPSERT_JOBS_SQL`), their logs and
/// workers in `tx`. Returns the ids of the jobs written; logs of jobs not
/// written are dropped (another replica owns them now).
pub(super) async fn write_jobs_logs_workers(
    tx: &mut Transaction<'_, Postgres>,
    writes: &Writes,
    replica: &str,
) -> Result<HashSet<String>, StoreError> {
    let jobs: Vec<&Job> = writes.jobs.values().collect();
    let mut written = HashSet::with_capacity(jobs.len());
    for (sql, group) in batches(&jobs, &UPSERT_JOBS_SQL) {
        let mut query = sqlx::query(sql);
        for job in group {
            query = bind_job(query, job, replica)?;
        }
        for row in query.bind(replica).fetch_all(&mut **tx).await? {
            written.insert(row.try_get::<String, _>(0)?);
        }
    }
    let logs: Vec<&LogWrite> = writes
        .logs
        .iter()
        .filter(|l| written.contains(&l.job_id) || !writes.jobs.contains_key(&l.job_id))
        .collect();
    for (sql, group) in batches(&logs, &INSERT_LOGS_SQL) {
        let mut query = sqlx::query(sql);
        for log in group {
            query = bind_log(query, log)?;
        }
        query.execute(&mut **tx).await?;
    }
    for worker in writes.workers.values() {
        let labels = serde_json::to_string(&worker.labels)
            .map_err(|e| corrupt(&worker.id, format!("cannot encode worker labels: {e}")))?;
        sqlx::query(UPSERT_WORKER)
            .bind(worker.id.as_str())
            .bind(labels)
            .bind(i64::from(worker.slots))
            .bind(worker.last_seen)
            .execute(&mut **tx)
            .await?;
    }
    Ok(written)
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds a job row; the owner column is `replica` unless the job waits in
/// the shared queue (owned by no one).
fn bind_job<'q>(query: Query<'q>, job: &'q Job, replica: &'q str) -> Result<Query<'q>, StoreError> {
    let owner = (job.state != JobState::Queued).then_some(replica);
    let spec = serde_json::to_string(&job.spec)
        .map_err(|e| corrupt(&job.id, format!("cannot encode spec: {e}")))?;
    Ok(query
        .bind(job.id.as_str())
        .bind(to_i64(job.seq, &job.id, "seq")?)
        .bind(job.state.as_str())
        .bind(i64::from(job.attempt))
        .bind(i64::from(job.retries))
        .bind(job.worker.as_deref())
        .bind(job.exit_code.map(i64::from))
        .bind(job.signal.map(i64::from))
        // Reasons carry text from users and agents; PostgreSQL refuses NUL.
        .bind(job.reason.as_deref().map(|r| r.replace('\0', "\u{FFFD}")))
        .bind(i64::from(job.cancel_requested))
        .bind(job.spec.name.as_str())
        .bind(i64::from(job.spec.priority))
        .bind(spec)
        .bind(job.created_at)
        .bind(job.assigned_at)
        .bind(job.started_at)
        .bind(job.finished_at)
        .bind(job.submitter.as_deref())
        .bind(owner))
}

fn bind_log<'q>(query: Query<'q>, log: &&'q LogWrite) -> Result<Query<'q>, StoreError> {
    let end = log.offset.saturating_add(log.data.len() as u64);
    Ok(query
        .bind(log.job_id.as_str())
        .bind(i64::from(log.attempt))
        .bind(log.stream.index() as i64)
        .bind(to_i64(log.offset, &log.job_id, "log offset")?)
        .bind(to_i64(end, &log.job_id, "log end offset")?)
        .bind(log.timestamp_ms)
        .bind(&log.data[..]))
}
