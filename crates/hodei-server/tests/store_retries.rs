//! A job's retries (attempts lost and queued again, counted against its
//! `max_retries`) are a column of the job, written in the job's own commit:
//! they round-trip on both backends, change with the job's later writes, a
//! value out of range is a corrupt record, and a database from before the
//! column gives its jobs the old accounting (every attempt after the first
//! was a retry).

mod support;

use std::path::Path;

use hodei_core::engine::Writes;
use hodei_core::{Job, JobSpec, JobState};
use hodei_server::store::{JobFilter, StoreError};
use support::{Backend, TestDb};
use tempfile::TempDir;

fn job(id: &str, seq: u64) -> Job {
    let spec = JobSpec {
        max_retries: 3,
        ..JobSpec::command(["echo", id]).normalized()
    };
    Job::new(id.to_string(), spec, seq, 1_000 + seq as i64)
}

fn jobs_writes(jobs: impl IntoIterator<Item = Job>) -> Writes {
    Writes {
        jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
        ..Writes::default()
    }
}

async fn retries_round_trip_and_change_with_the_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    // Rejected once, then lost once: attempt 3 is queued with one retry used.
    let mut retried = job("retried", 1);
    retried.attempt = 2;
    retried.retries = 1;
    retried.worker = Some("w1".into());
    retried.reason = Some("attempt 2 lost: silent".into());
    let fresh = job("fresh", 2);
    store
        .commit(&jobs_writes([retried.clone(), fresh.clone()]))
        .await
        .expect("commit");
    assert_eq!(
        store.get_job("retried").await.expect("get"),
        Some(retried.clone())
    );
    assert_eq!(store.get_job("fresh").await.expect("get"), Some(fresh));

    // A later write of the job (lost again) stores its new count.
    let mut again = retried.clone();
    again.state = JobState::Running;
    again.attempt = 3;
    again.retries = 2;
    again.worker = Some("w2".into());
    store
        .commit(&jobs_writes([again.clone()]))
        .await
        .expect("commit");
    let ids = ["retried".to_string()];
    assert_eq!(
        store.get_jobs(&ids).await.expect("get"),
        vec![again.clone()]
    );
    let listed = store.list_jobs(&JobFilter::default()).await.expect("list");
    let retries: Vec<_> = listed.iter().map(|j| (j.id.as_str(), j.retries)).collect();
    assert_eq!(retries, [("fresh", 0), ("retried", 2)], "newest first");

    // A reopened store reads it back, and recovers it with the unfinished jobs.
    drop(store);
    let store = db.open().await;
    assert_eq!(store.get_job("retried").await.expect("get"), Some(again));
    let recovered = store.recover().await.expect("recover");
    let retried = recovered.unfinished.iter().find(|j| j.id == "retried");
    assert_eq!(retried.map(|j| j.retries), Some(2));
}

async fn a_negative_retries_value_is_a_corrupt_record(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    store
        .commit(&jobs_writes([job("bad-retries", 1)]))
        .await
        .expect("commit");
    db.raw_sql("UPDATE jobs SET retries = -1 WHERE id = 'bad-retries'")
        .await;
    match store.get_job("bad-retries").await {
        Err(StoreError::Corrupt { job_id, message }) => {
            assert_eq!(job_id, "bad-retries");
            assert!(message.contains("retries"), "{message}");
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
}

/// Copies the migrations of `backend` before `0006_job_retries.sql` into `to`.
fn migrations_before_retries(backend: Backend, to: &Path) {
    let dir = match backend {
        Backend::Sqlite => "migrations",
        Backend::Postgres => "migrations-postgres",
    };
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for entry in std::fs::read_dir(&from).expect("read migrations") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy migration");
        }
    }
}

/// A database written by a server of schema version 5 keeps, once
/// upgraded, the retries its jobs had under the old accounting
/// (`attempt - 1`, none before the first attempt).
async fn an_upgraded_database_counts_the_retries_jobs_had(backend: Backend) {
    use sqlx::Connection;
    let db = TestDb::new(backend).await;
    let old = TempDir::new().expect("temp dir");
    migrations_before_retries(backend, old.path());
    let migrator = sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("old migrations");
    // Jobs at attempt 0, 1 and 3, as a version-5 server wrote them.
    let insert = "INSERT INTO jobs (id, seq, state, attempt, cancel_requested, name, priority, \
         spec, created_at) VALUES \
         ('never', 1, 'queued', 0, 0, '', 0, '{\"command\":[\"true\"]}', 1000), \
         ('first', 2, 'queued', 1, 0, '', 0, '{\"command\":[\"true\"]}', 1000), \
         ('third', 3, 'queued', 3, 0, '', 0, '{\"command\":[\"true\"]}', 1000)";
    match &db.pg_url {
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(db.dir.path().join("hodei.db"))
                .create_if_missing(true);
            let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
                .await
                .expect("connect");
            migrator.run(&mut conn).await.expect("migrate to version 5");
            sqlx::raw_sql(insert)
                .execute(&mut conn)
                .await
                .expect("insert");
            conn.close().await.expect("close");
        }
        Some(url) => {
            let mut conn = sqlx::postgres::PgConnection::connect(url)
                .await
                .expect("connect");
            migrator.run(&mut conn).await.expect("migrate to version 5");
            sqlx::raw_sql(insert)
                .execute(&mut conn)
                .await
                .expect("insert");
            conn.close().await.expect("close");
        }
    }

    let store = db.open().await;
    for (id, attempt, retries) in [("never", 0, 0), ("first", 1, 0), ("third", 3, 2)] {
        let job = store.get_job(id).await.expect("get").expect("job kept");
        assert_eq!((job.attempt, job.retries), (attempt, retries), "{id}");
    }
    // New jobs start with none.
    store
        .commit(&jobs_writes([job("new", 4)]))
        .await
        .expect("commit");
    let new = store.get_job("new").await.expect("get").expect("job");
    assert_eq!(new.retries, 0);
}

on_both_backends!(
    retries_round_trip_and_change_with_the_job,
    a_negative_retries_value_is_a_corrupt_record,
    an_upgraded_database_counts_the_retries_jobs_had
);
