//! The PostgreSQL store shared by several replicas: fenced claims, the
//! sweep of a dead replica, take-over by an agent's new replica, cancels
//! through another replica, notifications. Real PostgreSQL (pg-harness).

mod support;

use std::time::Duration;

use hodei_core::engine::{AttemptRef, Writes};
use hodei_core::{Job, JobSpec, JobState};
use hodei_server::store::{Cluster, ClusterEvent, PgStore, Store, StoreError};
use support::{Backend, TestDb};

fn job(id: &str, seq: u64, state: JobState, worker: Option<&str>) -> Job {
    let mut job = Job::new(
        id.to_string(),
        JobSpec::command(["echo", id]).normalized(),
        seq,
        1_000,
    );
    job.state = state;
    if state != JobState::Queued {
        job.attempt = 1;
        job.worker = worker.map(str::to_string);
    }
    job
}

fn writes(jobs: impl IntoIterator<Item = Job>) -> Writes {
    Writes {
        jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
        ..Writes::default()
    }
}

async fn two_replicas() -> (TestDb, PgStore, PgStore) {
    let db = TestDb::new(Backend::Postgres).await;
    let url = db.pg_url.clone().expect("postgres url");
    let a = PgStore::connect(&url, "replica-a").await.expect("a");
    let b = PgStore::connect(&url, "replica-b").await.expect("b");
    (db, a, b)
}

async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<ClusterEvent>) -> ClusterEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .expect("listener alive")
}

#[tokio::test]
async fn two_replicas_never_both_claim_a_job() {
    let (_db, a, b) = two_replicas().await;
    assert_ne!(
        a.seq_slot(),
        b.seq_slot(),
        "slots keep sequence numbers apart"
    );
    let mut events = b.listen().await.expect("listen");

    a.commit_fenced(&writes([job("j", 1, JobState::Queued, None)]))
        .await
        .expect("submit");
    // b hears of the queued job.
    loop {
        match next_event(&mut events).await {
            ClusterEvent::Queued { from, job_ids } => {
                assert_eq!(from, "replica-a");
                assert_eq!(job_ids, ["j"]);
                break;
            }
            ClusterEvent::Changed { .. } | ClusterEvent::Resync => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Both place it; the first write wins, the second is fenced.
    let lost_b = b
        .commit_fenced(&writes([job("j", 1, JobState::Assigned, Some("wb"))]))
        .await
        .expect("b claims");
    assert!(lost_b.is_empty());
    let lost_a = a
        .commit_fenced(&writes([job("j", 1, JobState::Assigned, Some("wa"))]))
        .await
        .expect("a commits");
    assert_eq!(lost_a, ["j"]);
    let stored = a.get_job("j").await.expect("read").expect("job");
    assert_eq!(stored.worker.as_deref(), Some("wb"));
    // a can't finish it either.
    let mut done = job("j", 1, JobState::Succeeded, Some("wa"));
    done.exit_code = Some(0);
    assert_eq!(
        a.commit_fenced(&writes([done])).await.expect("commit"),
        ["j"]
    );
    assert_eq!(
        a.get_job("j").await.expect("read").expect("job").state,
        JobState::Assigned
    );
}

#[tokio::test]
async fn a_dead_replica_is_swept_and_fenced() {
    let (db, a, b) = two_replicas().await;
    a.commit_fenced(&writes([
        job("r1", 1, JobState::Running, Some("w1")),
        job("q1", 2, JobState::Queued, None),
    ]))
    .await
    .expect("a runs r1");
    // Nothing is swept while a renews its lease.
    assert!(b.sweep().await.expect("sweep").is_empty());
    // a stops renewing (as if killed): its lease runs out.
    db.raw_sql(
        "UPDATE replicas SET expires_at = now() - interval '1 second' WHERE id = 'replica-a'",
    )
    .await;
    let taken = b.sweep().await.expect("sweep");
    let ids: Vec<&str> = taken.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["r1"], "only unfinished attempts; the queue is shared");
    // a comes back: fenced, whatever it writes.
    match a
        .commit_fenced(&writes([job("r1", 1, JobState::Succeeded, Some("w1"))]))
        .await
    {
        Err(StoreError::LeaseLost) => {}
        other => panic!("a swept replica committed: {other:?}"),
    }
    // Its recovery rejoins with nothing of its own.
    let recovery = a.recover().await.expect("rejoin");
    let ids: Vec<&str> = recovery.unfinished.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["q1"]);
    assert!(
        a.commit_fenced(&writes([job("r1", 1, JobState::Succeeded, Some("w1"))]))
            .await
            .expect("commit after rejoining")
            == ["r1"],
        "the job is b's now"
    );
}

#[tokio::test]
async fn an_agent_attaching_elsewhere_hands_over_its_attempts_and_cancels_travel() {
    let (_db, a, b) = two_replicas().await;
    a.commit_fenced(&writes([job("r", 1, JobState::Running, Some("w"))]))
        .await
        .expect("a runs r");
    let mut a_events = a.listen().await.expect("listen");
    // A cancel asked of b reaches a, the owner.
    let marked = b
        .request_cancel("r", "stop it")
        .await
        .expect("cancel")
        .expect("unfinished");
    assert!(marked.cancel_requested);
    loop {
        match next_event(&mut a_events).await {
            ClusterEvent::Cancel { owner, job_ids } => {
                assert_eq!(owner, "replica-a");
                assert_eq!(job_ids, ["r"]);
                break;
            }
            ClusterEvent::Resync | ClusterEvent::Changed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Its agent attaches to b: b owns the attempt; a's writes are fenced.
    let running = [AttemptRef {
        job_id: "r".into(),
        attempt: 1,
    }];
    assert!(
        b.take_over("someone-else", &running)
            .await
            .expect("take")
            .is_empty(),
        "only the attempt's own worker hands it over"
    );
    let taken = b.take_over("w", &running).await.expect("take");
    assert_eq!(taken.len(), 1);
    assert!(taken[0].cancel_requested);
    assert_eq!(
        a.commit_fenced(&writes([job("r", 1, JobState::Succeeded, Some("w"))]))
            .await
            .expect("commit"),
        ["r"]
    );
    let mut done = job("r", 1, JobState::Cancelled, Some("w"));
    done.cancel_requested = true;
    assert!(
        b.commit_fenced(&writes([done]))
            .await
            .expect("b")
            .is_empty()
    );
    // A finished job can't be cancelled through anyone.
    assert!(
        b.request_cancel("r", "again")
            .await
            .expect("cancel")
            .is_none()
    );
}

#[tokio::test]
async fn the_same_new_id_submitted_on_two_replicas_is_created_once() {
    let (_db, a, b) = two_replicas().await;
    let first = job("same", 11, JobState::Queued, None);
    let mut second = job("same", 22, JobState::Queued, None);
    second.spec = JobSpec::command(["echo", "other"]).normalized();
    assert!(
        a.commit_fenced(&writes([first.clone()]))
            .await
            .expect("a")
            .is_empty()
    );
    assert_eq!(
        b.commit_fenced(&writes([second])).await.expect("b"),
        ["same"],
        "b's submission lost: it must look the job up and answer from it"
    );
    // Nor when b placed its version at once (same batch as the submit).
    let mut placed = job("same", 22, JobState::Assigned, Some("wb"));
    placed.spec = JobSpec::command(["echo", "other"]).normalized();
    assert_eq!(
        b.commit_fenced(&writes([placed])).await.expect("b"),
        ["same"]
    );
    let stored = b.get_job("same").await.expect("read").expect("job");
    assert_eq!(stored.spec, first.spec);
    assert_eq!(stored.seq, 11);
    // The creator itself may write its job again (the same creation).
    assert!(
        a.commit_fenced(&writes([first]))
            .await
            .expect("a again")
            .is_empty()
    );
}
