//! A job's submitter (the token id that submitted it) is a column of the
//! job, written in the job's own commit: it round-trips on both backends,
//! survives the job's later writes, and an SQLite database from before the
//! column keeps the owners it recorded in `job_owners`.

mod support;

use std::path::Path;

use hodei_core::engine::Writes;
use hodei_core::{Job, JobSpec, JobState};
use hodei_server::store::{JobFilter, SqliteStore, Store};
use support::{Backend, TestDb};
use tempfile::TempDir;

fn job(id: &str, seq: u64, submitter: Option<&str>) -> Job {
    Job {
        submitter: submitter.map(str::to_string),
        ..Job::new(
            id.to_string(),
            JobSpec::command(["echo", id]).normalized(),
            seq,
            1_000 + seq as i64,
        )
    }
}

fn jobs_writes(jobs: impl IntoIterator<Item = Job>) -> Writes {
    Writes {
        jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
        ..Writes::default()
    }
}

async fn the_submitter_round_trips(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mine = job("mine", 1, Some("tok-alice"));
    let anonymous = job("anon", 2, None);
    store
        .commit(&jobs_writes([mine.clone(), anonymous.clone()]))
        .await
        .expect("commit");
    assert_eq!(
        store.get_job("mine").await.expect("get"),
        Some(mine.clone())
    );
    assert_eq!(store.get_job("anon").await.expect("get"), Some(anonymous));

    // A later write of the job (here: it starts) keeps its submitter.
    let mut running = mine.clone();
    running.state = JobState::Running;
    running.attempt = 1;
    running.worker = Some("w1".into());
    store
        .commit(&jobs_writes([running.clone()]))
        .await
        .expect("commit");
    let ids = ["mine".to_string()];
    assert_eq!(store.get_jobs(&ids).await.expect("get"), vec![running]);
    let listed = store.list_jobs(&JobFilter::default()).await.expect("list");
    let submitters: Vec<_> = listed.iter().map(|j| j.submitter.as_deref()).collect();
    assert_eq!(submitters, [None, Some("tok-alice")], "newest first");

    // And a reopened store reads it back.
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store
            .get_job("mine")
            .await
            .expect("get")
            .and_then(|j| j.submitter),
        Some("tok-alice".into())
    );
}

on_both_backends!(the_submitter_round_trips);

/// Copies the SQLite migrations before `0005_job_submitter.sql` into `to`.
fn migrations_before_submitter(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&from).expect("read migrations") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0005" {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy migration");
        }
    }
}

/// A database written by a server of schema version 4 (owners in
/// `job_owners`) keeps each job's owner once upgraded.
#[tokio::test]
async fn an_upgraded_sqlite_database_keeps_its_job_owners() {
    use sqlx::Connection;
    let data = TempDir::new().expect("temp dir");
    let old = TempDir::new().expect("temp dir");
    migrations_before_submitter(old.path());
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data.path().join("hodei.db"))
        .create_if_missing(true);
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .expect("connect");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("old migrations")
        .run(&mut conn)
        .await
        .expect("migrate to version 4");
    for (id, seq) in [("owned", 1), ("orphan", 2)] {
        sqlx::query(
            "INSERT INTO jobs (id, seq, state, attempt, cancel_requested, name, priority, spec, \
             created_at) VALUES (?1, ?2, 'queued', 0, 0, '', 0, ?3, 1000)",
        )
        .bind(id)
        .bind(seq)
        .bind(r#"{"command":["true"]}"#)
        .execute(&mut conn)
        .await
        .expect("insert job");
    }
    sqlx::query("INSERT INTO job_owners (job_id, token_id) VALUES ('owned', 'tok-old')")
        .execute(&mut conn)
        .await
        .expect("insert owner");
    conn.close().await.expect("close");

    let store = SqliteStore::open(data.path()).await.expect("upgrade");
    let owner = |job: Option<Job>| job.expect("job kept").submitter;
    assert_eq!(
        owner(store.get_job("owned").await.expect("get")),
        Some("tok-old".into())
    );
    assert_eq!(owner(store.get_job("orphan").await.expect("get")), None);
    store.close().await;

    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .expect("connect");
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'job_owners'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("query");
    assert_eq!(left, 0, "job_owners is dropped");
    conn.close().await.expect("close");
}
