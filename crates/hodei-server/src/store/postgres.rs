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
//! - One orchestrator writes a database at a time: it holds a lease row
//!   (`server_lease`), renewed in the background and in every commit's
//!   transaction; a commit fails if another server took the lease, so a
//!   server that lost it can never write (fencing). A second server waits
//!   for an expired lease at start, or fails with a clear error.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use hodei_core::engine::{LogWrite, Writes};
use hodei_core::{Job, JobState, LogStream, Millis};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};

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
const ROWS_PER_INSERT: usize = 64;
/// How long a lease lasts without renewal, and how often it is renewed.
const LEASE_SECS: u64 = 10;
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(2);

const ACQUIRE_LEASE: &str = "INSERT INTO server_lease (id, holder, expires_at) \
     VALUES (1, $1, clock_timestamp() + make_interval(secs => $2)) \
     ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE server_lease.holder = excluded.holder OR server_lease.expires_at < clock_timestamp()";
const RENEW_LEASE: &str = "UPDATE server_lease \
     SET expires_at = clock_timestamp() + make_interval(secs => $2) WHERE id = 1 AND holder = $1";
const LEASE_HOLDER: &str = "SELECT holder, \
     EXTRACT(EPOCH FROM expires_at - clock_timestamp())::FLOAT8 AS left FROM server_lease";

macro_rules! select_jobs {
    ($rest:literal) => {
        concat!(
            "SELECT id, seq, state, attempt, worker, exit_code, signal, reason, cancel_requested, \
             spec::text AS spec, created_at, assigned_at, started_at, finished_at FROM jobs ",
            $rest
        )
    };
}

const INSERT_JOBS: &str = "INSERT INTO jobs (id, seq, state, attempt, worker, exit_code, signal, \
     reason, cancel_requested, name, priority, spec, created_at, assigned_at, started_at, \
     finished_at) VALUES ";
const UPSERT_JOBS_TAIL: &str = " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, \
     state = excluded.state, attempt = excluded.attempt, worker = excluded.worker, \
     exit_code = excluded.exit_code, signal = excluded.signal, reason = excluded.reason, \
     cancel_requested = excluded.cancel_requested, name = excluded.name, \
     priority = excluded.priority, spec = excluded.spec, created_at = excluded.created_at, \
     assigned_at = excluded.assigned_at, started_at = excluded.started_at, \
     finished_at = excluded.finished_at";
/// Column 12 (the spec) is cast from text to JSONB.
const JOB_CASTS: &[(usize, &str)] = &[(11, "::jsonb")];
const INSERT_LOGS: &str = "INSERT INTO log_chunks (job_id, attempt, stream, start_offset, \
     end_offset, ts, data) VALUES ";
const UPSERT_WORKER: &str = "INSERT INTO workers (id, labels, slots, last_seen) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, \
     slots = excluded.slots, last_seen = excluded.last_seen";

static UPSERT_JOBS_SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
    [1, ROWS_PER_INSERT].map(|n| multi_row(INSERT_JOBS, 16, JOB_CASTS, n, UPSERT_JOBS_TAIL))
});
static INSERT_LOGS_SQL: LazyLock<[String; 2]> =
    LazyLock::new(|| [1, ROWS_PER_INSERT].map(|n| multi_row(INSERT_LOGS, 7, &[], n, "")));

const GET_JOB: &str = select_jobs!("WHERE id = $1");
const GET_JOBS: &str = select_jobs!("WHERE id = ANY($1) ORDER BY seq");
const SELECT_JOBS: &str = select_jobs!("");
const UNFINISHED: &str =
    select_jobs!("WHERE state IN ('queued', 'assigned', 'running') ORDER BY seq");
const LOG_ENDS: &str = "SELECT j.id, j.attempt, l.stream, MAX(l.end_offset) AS end_offset \
     FROM jobs j JOIN log_chunks l ON l.job_id = j.id AND l.attempt = j.attempt \
     WHERE j.state IN ('queued', 'assigned', 'running') GROUP BY j.id, j.attempt, l.stream";
const READ_STREAM: &str = "SELECT id, stream, start_offset, ts, data FROM log_chunks \
     WHERE job_id = $1 AND attempt = $2 AND stream = $3 AND end_offset > $4 \
     ORDER BY end_offset, id";
const ALL_WORKERS: &str = "SELECT id, labels, slots, last_seen FROM workers ORDER BY id";
const MAX_SEQ: &str = "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM jobs";
const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state";
const FINISHED_SINCE: &str = "SELECT (finished_at - $1) / 60000 AS minute, state, \
     COUNT(*) AS n FROM jobs WHERE finished_at >= $1 GROUP BY minute, state";

/// The PostgreSQL store. Cloning shares the pool and the lease.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Who this server is in `server_lease`.
    holder: Arc<str>,
    /// Keeps the lease renewal going while any clone is alive.
    _alive: Arc<()>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), brings the
    /// schema up to date and takes the database's lease as `holder` (a
    /// lasting id of this server: the same server restarting takes its own
    /// lease back at once; another waits for it to expire).
    pub async fn connect(url: &str, holder: &str) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        acquire_lease(&pool, holder).await?;
        let alive = Arc::new(());
        tokio::spawn(renew_lease(
            pool.clone(),
            holder.to_string(),
            Arc::downgrade(&alive),
        ));
        Ok(PgStore {
            pool,
            holder: holder.into(),
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
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let renewed = sqlx::query(RENEW_LEASE)
            .bind(&*self.holder)
            .bind(LEASE_SECS as f64)
            .execute(&mut *tx)
            .await?;
        if renewed.rows_affected() != 1 {
            return Err(StoreError::LeaseLost);
        }
        let jobs: Vec<&Job> = writes.jobs.values().collect();
        for (sql, group) in batches(&jobs, &UPSERT_JOBS_SQL) {
            let mut query = sqlx::query(sql);
            for job in group {
                query = bind_job(query, job)?;
            }
            query.execute(&mut *tx).await?;
        }
        for (sql, group) in batches(&writes.logs, &INSERT_LOGS_SQL) {
            let mut query = sqlx::query(sql);
            for log in group {
                query = bind_log(query, log)?;
            }
            query.execute(&mut *tx).await?;
        }
        for worker in writes.workers.values() {
            let labels = serde_json::to_string(&worker.labels)
                .map_err(|e| corrupt(&worker.id, format!("cannot encode worker labels: {e}")))?;
            sqlx::query(UPSERT_WORKER)
                .bind(worker.id.as_str())
                .bind(labels)
                .bind(i64::from(worker.slots))
                .bind(worker.last_seen)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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
        let streams = q
            .stream
            .as_ref()
            .map_or(&LogStream::BOTH[..], std::slice::from_ref);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut chunks: Vec<(i64, LogChunk)> = Vec::new();
        for stream in streams {
            let from = i64::try_from(q.from[stream.index()]).unwrap_or(i64::MAX);
            let mut rows = sqlx::query(READ_STREAM)
                .bind(q.job_id.as_str())
                .bind(i64::from(q.attempt))
                .bind(stream.index() as i64)
                .bind(from)
                .fetch(&mut *tx);
            let mut total = 0usize;
            while let Some(row) = rows.try_next().await? {
                let id: i64 = row.try_get("id")?;
                let chunk = decode_chunk(&row, &q.from).map_err(|m| corrupt(&q.job_id, m))?;
                total = total.saturating_add(chunk.data.len());
                chunks.push((id, chunk));
                if total >= q.max_bytes {
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(super::merge_by_arrival(chunks, q.max_bytes))
    }

    async fn recover(&self) -> Result<Recovery, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
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

/// Takes the lease, waiting for another holder's lease to expire (it would
/// have been renewed if that server were alive) for at most one lease.
async fn acquire_lease(pool: &PgPool, holder: &str) -> Result<(), StoreError> {
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS + 2);
    loop {
        let taken = sqlx::query(ACQUIRE_LEASE)
            .bind(holder)
            .bind(LEASE_SECS as f64)
            .execute(pool)
            .await?;
        if taken.rows_affected() == 1 {
            return Ok(());
        }
        let row = sqlx::query(LEASE_HOLDER).fetch_one(pool).await?;
        let other: String = row.try_get("holder")?;
        let left: f64 = row.try_get("left")?;
        if Instant::now() > deadline {
            return Err(StoreError::LeaseHeld { holder: other });
        }
        tracing::warn!(
            holder = %other,
            expires_in_s = format!("{left:.1}"),
            "another server holds this database's lease; waiting for it to expire"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Renews the lease until the store is dropped. A failed renewal is only
/// logged: commits renew the lease themselves and fail if it was lost.
async fn renew_lease(pool: PgPool, holder: String, alive: Weak<()>) {
    let mut every = tokio::time::interval(LEASE_RENEW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        match sqlx::query(RENEW_LEASE)
            .bind(&holder)
            .bind(LEASE_SECS as f64)
            .execute(&pool)
            .await
        {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => tracing::error!("this server lost the database lease to another server"),
            Err(e) => tracing::warn!(error = %e, "cannot renew the database lease"),
        }
    }
}

fn batches<'a, T>(
    items: &'a [T],
    sql: &'static [String; 2],
) -> impl Iterator<Item = (&'static str, &'a [T])> {
    let full = items.len() / ROWS_PER_INSERT * ROWS_PER_INSERT;
    let many = items[..full]
        .chunks(ROWS_PER_INSERT)
        .map(|g| (sql[1].as_str(), g));
    many.chain(items[full..].chunks(1).map(|g| (sql[0].as_str(), g)))
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn bind_job<'q>(query: Query<'q>, job: &'q Job) -> Result<Query<'q>, StoreError> {
    let spec = serde_json::to_string(&job.spec)
        .map_err(|e| corrupt(&job.id, format!("cannot encode spec: {e}")))?;
    Ok(query
        .bind(job.id.as_str())
        .bind(to_i64(job.seq, &job.id, "seq")?)
        .bind(job.state.as_str())
        .bind(i64::from(job.attempt))
        .bind(job.worker.as_deref())
        .bind(job.exit_code.map(i64::from))
        .bind(job.signal.map(i64::from))
        .bind(job.reason.as_deref())
        .bind(i64::from(job.cancel_requested))
        .bind(job.spec.name.as_str())
        .bind(i64::from(job.spec.priority))
        .bind(spec)
        .bind(job.created_at)
        .bind(job.assigned_at)
        .bind(job.started_at)
        .bind(job.finished_at))
}

fn bind_log<'q>(query: Query<'q>, log: &'q LogWrite) -> Result<Query<'q>, StoreError> {
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
