//! The operator queries of the store, on both backends: list filters (label, worker,
//! name prefix, combined with state and the cursor), counts by state, jobs
//! finished per minute, and the ping.

use hodei_core::engine::Writes;
use hodei_core::{Job, JobSpec, JobState};
mod support;

use hodei_server::store::{JobFilter, Store};
use support::{Backend, TestDb};

fn job(seq: u64, name: &str, labels: &[&str], worker: Option<&str>, state: JobState) -> Job {
    let spec = JobSpec {
        name: name.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        ..JobSpec::command(["true"])
    }
    .normalized();
    let mut job = Job::new(format!("j{seq}"), spec, seq, 1_000 * seq as i64);
    job.state = state;
    job.worker = worker.map(str::to_string);
    if state.is_terminal() {
        job.finished_at = Some(1_000_000 + 30_000 * seq as i64);
    }
    job
}

async fn store_with(backend: Backend, jobs: Vec<Job>) -> (TestDb, std::sync::Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let writes = Writes {
        jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
        ..Writes::default()
    };
    store.commit(&writes).await.unwrap();
    (db, store)
}

async fn seqs(store: &dyn Store, filter: JobFilter) -> Vec<u64> {
    let jobs = store.list_jobs(&filter).await.unwrap();
    jobs.iter().map(|j| j.seq).collect()
}

async fn filters_combine_and_page(backend: Backend) {
    use JobState::*;
    let (_dir, store) = store_with(
        backend,
        vec![
            job(1, "build-web", &["linux"], Some("w1"), Succeeded),
            job(2, "build-api", &["linux", "gpu"], Some("w2"), Failed),
            job(3, "test", &[], Some("w1"), Running),
            job(4, "build_x", &["gpu"], None, Queued),
            job(5, "build[1]", &[], Some("w1"), Succeeded),
            job(6, "Build-caps", &["linux"], Some("w2"), Succeeded),
        ],
    )
    .await;
    let f = JobFilter::default;
    let label = |l: &str| JobFilter {
        label: Some(l.into()),
        ..f()
    };
    let worker = |w: &str| JobFilter {
        worker: Some(w.into()),
        ..f()
    };
    let prefix = |p: &str| JobFilter {
        name_prefix: Some(p.into()),
        ..f()
    };
    assert_eq!(seqs(store.as_ref(), label("linux")).await, [6, 2, 1]);
    assert_eq!(seqs(store.as_ref(), label("gpu")).await, [4, 2]);
    assert_eq!(
        seqs(store.as_ref(), label("lin")).await,
        [0u64; 0],
        "whole labels only"
    );
    assert_eq!(seqs(store.as_ref(), worker("w1")).await, [5, 3, 1]);
    assert_eq!(seqs(store.as_ref(), prefix("build")).await, [5, 4, 2, 1]);
    assert_eq!(seqs(store.as_ref(), prefix("build-")).await, [2, 1]);
    assert_eq!(
        seqs(store.as_ref(), prefix("build[")).await,
        [5],
        "[ is literal"
    );
    assert_eq!(
        seqs(store.as_ref(), prefix("Build")).await,
        [6],
        "case-sensitive"
    );
    assert_eq!(seqs(store.as_ref(), prefix("")).await.len(), 6);
    let all = JobFilter {
        state: Some(Succeeded),
        worker: Some("w1".into()),
        name_prefix: Some("build".into()),
        label: None,
        before_seq: Some(5),
        limit: 10,
    };
    assert_eq!(seqs(store.as_ref(), all).await, [1]);
    let page = JobFilter {
        label: Some("linux".into()),
        limit: 2,
        ..f()
    };
    assert_eq!(seqs(store.as_ref(), page.clone()).await, [6, 2]);
    let next = JobFilter {
        before_seq: Some(2),
        ..page
    };
    assert_eq!(seqs(store.as_ref(), next).await, [1]);
}

async fn counts_by_state_and_minute(backend: Backend) {
    use JobState::*;
    // finished_at = 1_000_000 + 30 s × seq.
    let (_dir, store) = store_with(
        backend,
        vec![
            job(1, "a", &[], None, Succeeded),
            job(2, "a", &[], None, Failed),
            job(3, "a", &[], None, Succeeded),
            job(4, "a", &[], None, Cancelled),
            job(5, "a", &[], None, Queued),
            job(6, "a", &[], None, Running),
        ],
    )
    .await;
    let mut counts = store.count_by_state().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        [
            (Cancelled, 1),
            (Failed, 1),
            (Queued, 1),
            (Running, 1),
            (Succeeded, 2)
        ]
    );
    // Since 1_060_000: jobs 2 (1_060_000, minute 0), 3 (1_090_000, minute
    // 0) and 4 (1_120_000, minute 1).
    let mut finished: Vec<(u32, JobState, u64)> = store
        .finished_since(1_060_000)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.minute, c.state, c.count))
        .collect();
    finished.sort_by_key(|(m, s, _)| (*m, s.as_str()));
    assert_eq!(
        finished,
        [(0, Failed, 1), (0, Succeeded, 1), (1, Cancelled, 1)]
    );
    assert!(store.finished_since(i64::MAX).await.unwrap().is_empty());
    store.ping().await.unwrap();
}

on_both_backends!(filters_combine_and_page, counts_by_state_and_minute);
