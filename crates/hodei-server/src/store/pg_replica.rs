//! Several orchestrator replicas on one PostgreSQL database: leases,
//! fenced commits, take-overs, the sweep and notifications (the
//! [`Cluster`] of [`PgStore`]). See `cluster.rs` for the rules.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;

use hodei_core::engine::{AttemptRef, Writes};
use hodei_core::{Job, JobState};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::mpsc;

use super::cluster::{Cluster, ClusterEvent, decode, encode};
use super::postgres::{PgStore, write_jobs_logs_workers};
use super::rows::job_from_row;
use super::{StoreError, postgres::RETURNING_JOB};

/// How long a replica's lease lasts without renewal, and how often it is
/// renewed (also in every commit).
pub(super) const LEASE_SECS: f64 = 10.0;
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(2);
/// The channel replicas notify each other on.
const CHANNEL: &str = "hodei_jobs";
/// The advisory lock held (per transaction) by the replica that sweeps.
const SWEEP_LOCK: i64 = 0x686f_6465_6901;
/// How often registration retries when another replica took the same slot.
const REGISTER_ATTEMPTS: u32 = 8;

const REGISTER: &str = "INSERT INTO replicas (id, slot, expires_at) \
     SELECT $1, s, clock_timestamp() + make_interval(secs => $2) \
     FROM generate_series(0, 4095) AS s \
     WHERE NOT EXISTS (SELECT 1 FROM replicas r WHERE r.slot = s AND r.id <> $1) \
     ORDER BY s <> $3, s LIMIT 1 \
     ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at \
     RETURNING slot";
pub(super) const RENEW: &str = "UPDATE replicas \
     SET expires_at = clock_timestamp() + make_interval(secs => $2) WHERE id = $1";
const SWEEP_DEAD: &str = "DELETE FROM replicas \
     WHERE expires_at < clock_timestamp() AND id <> $1 RETURNING id";
const QUEUED_IDS: &str = "SELECT id FROM jobs WHERE state = 'queued' \
     ORDER BY priority DESC, seq LIMIT $1";

/// Registers replica `id` (or renews its row after a restart) and returns
/// its sequence slot: `prefer` if it is free.
pub(super) async fn register(pool: &PgPool, id: &str, prefer: u16) -> Result<u16, StoreError> {
    let mut attempt = 1;
    loop {
        match sqlx::query_scalar::<_, i32>(REGISTER)
            .bind(id)
            .bind(LEASE_SECS)
            .bind(i32::from(prefer))
            .fetch_optional(pool)
            .await
        {
            Ok(Some(slot)) => {
                return u16::try_from(slot)
                    .map_err(|_| super::rows::corrupt("(replicas)", format!("slot {slot}")));
            }
            Ok(None) => {
                return Err(StoreError::Corrupt {
                    job_id: "(replicas)".into(),
                    message: "all 4096 replica slots are taken".into(),
                });
            }
            // Two replicas picked the same free slot at once: try again.
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && attempt < REGISTER_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Renews this replica's lease until the store is dropped. A failed
/// renewal is only logged: commits renew the lease themselves and fail once
/// it was lost (the replica was swept).
pub(super) async fn renew_lease(pool: PgPool, id: String, alive: Weak<()>) {
    let mut every = tokio::time::interval(LEASE_RENEW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        match sqlx::query(RENEW)
            .bind(&id)
            .bind(LEASE_SECS)
            .execute(&pool)
            .await
        {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => tracing::error!(
                "this replica's lease expired and another replica took over its jobs"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot renew this replica's lease"),
        }
    }
}

/// Renews the lease inside `tx`; fails when this replica was swept.
pub(super) async fn renew_in(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<(), StoreError> {
    let renewed = sqlx::query(RENEW)
        .bind(id)
        .bind(LEASE_SECS)
        .execute(&mut **tx)
        .await?;
    if renewed.rows_affected() != 1 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

/// Sends `event` to every replica when `tx` commits.
async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    event: &ClusterEvent,
) -> Result<(), StoreError> {
    for payload in encode(event) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn decode_jobs(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(job_from_row).collect()
}

fn unfinished_ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

#[async_trait::async_trait]
impl Cluster for PgStore {
    fn replica_id(&self) -> &str {
        &self.replica
    }

    fn seq_slot(&self) -> u16 {
        self.slot.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn commit_fenced(&self, writes: &Writes) -> Result<Vec<String>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        renew_in(&mut tx, &self.replica).await?;
        let written = write_jobs_logs_workers(&mut tx, writes, &self.replica).await?;
        let lost: Vec<String> = writes
            .jobs
            .keys()
            .filter(|id| !written.contains(id.as_str()))
            .cloned()
            .collect();
        let mut queued = Vec::new();
        let mut changed: HashSet<&str> = HashSet::new();
        for (id, job) in &writes.jobs {
            if !written.contains(id.as_str()) {
                continue;
            }
            if job.state == JobState::Queued {
                queued.push(id.clone());
            }
            changed.insert(id);
        }
        changed.extend(
            writes
                .logs
                .iter()
                .filter(|l| !lost.contains(&l.job_id))
                .map(|l| l.job_id.as_str()),
        );
        let from = self.replica.to_string();
        if !queued.is_empty() {
            notify(
                &mut tx,
                &ClusterEvent::Queued {
                    from: from.clone(),
                    job_ids: queued,
                },
            )
            .await?;
        }
        if !changed.is_empty() {
            let job_ids = changed.into_iter().map(str::to_string).collect();
            notify(&mut tx, &ClusterEvent::Changed { from, job_ids }).await?;
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn take_over(
        &self,
        worker: &str,
        running: &[AttemptRef],
    ) -> Result<Vec<Job>, StoreError> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = running.iter().map(|r| r.job_id.as_str()).collect();
        let sql = format!(
            "UPDATE jobs SET replica = $1 WHERE id = ANY($2) AND worker = $3 \
             AND state IN ('assigned', 'running') RETURNING {RETURNING_JOB}"
        );
        let mut tx = self.pool.begin().await?;
        renew_in(&mut tx, &self.replica).await?;
        let rows = sqlx::query(&sql)
            .bind(&*self.replica)
            .bind(&ids)
            .bind(worker)
            .fetch_all(&mut *tx)
            .await?;
        let jobs = decode_jobs(&rows)?;
        if !jobs.is_empty() {
            let event = ClusterEvent::Changed {
                from: self.replica.to_string(),
                job_ids: unfinished_ids(&jobs),
            };
            notify(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(jobs)
    }

    async fn sweep(&self) -> Result<Vec<Job>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(SWEEP_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Vec::new());
        }
        renew_in(&mut tx, &self.replica).await?;
        let dead: Vec<String> = sqlx::query_scalar(SWEEP_DEAD)
            .bind(&*self.replica)
            .fetch_all(&mut *tx)
            .await?;
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE jobs SET replica = $1 WHERE replica = ANY($2) \
             AND state IN ('assigned', 'running') RETURNING {RETURNING_JOB}"
        );
        let rows = sqlx::query(&sql)
            .bind(&*self.replica)
            .bind(&dead)
            .fetch_all(&mut *tx)
            .await?;
        let jobs = decode_jobs(&rows)?;
        tx.commit().await?;
        tracing::warn!(
            replicas = ?dead,
            jobs = jobs.len(),
            "replicas stopped renewing their lease; this replica took over their jobs"
        );
        Ok(jobs)
    }

    async fn request_cancel(&self, job_id: &str, reason: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET cancel_requested = 1, reason = COALESCE(reason, $2) \
             WHERE id = $1 AND state IN ('assigned', 'running') \
             RETURNING replica, {RETURNING_JOB}"
        );
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(&sql)
            .bind(job_id)
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let owner: Option<String> = row.try_get("replica")?;
        let job = job_from_row(&row)?;
        if let Some(owner) = owner {
            let event = ClusterEvent::Cancel {
                owner,
                job_ids: vec![job.id.clone()],
            };
            notify(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(Some(job))
    }

    async fn queued(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(QUEUED_IDS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn listen(&self) -> Result<mpsc::Receiver<ClusterEvent>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                // `try_recv` reconnects by itself and returns `None` once
                // after the connection was lost: what was sent meanwhile is
                // gone, so the receiver resynchronises.
                let event = match listener.try_recv().await {
                    Ok(Some(n)) => match decode(n.payload()) {
                        Some(event) => event,
                        None => continue,
                    },
                    Ok(None) => ClusterEvent::Resync,
                    Err(e) => {
                        tracing::warn!(error = %e, "replica notifications interrupted; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        ClusterEvent::Resync
                    }
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
