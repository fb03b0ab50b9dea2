//! The operator API against a real `hodei server` (and agent where jobs
//! must run): list filters and cursor paging, the event stream, statistics;
//! each with its bad input answered by the right status and JSON error.
//! Logs are in `api_logs.rs`; health, metrics, gRPC health and reflection,
//! OpenAPI and JSON logs in `api_ops.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use hodei_client::ApiEvent;
use hodei_core::api::{JobQuery, SubmitRequest};
use hodei_core::{Job, JobState};
use reqwest::StatusCode;

async fn ids(client: &Client, query: JobQuery) -> Vec<String> {
    let page = client.list_jobs(&query).await.expect("list");
    page.jobs.into_iter().map(|j| j.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_lists_filter_and_page() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(
        &server.url,
        "filter-agent",
        &dir.path().join("w"),
        &["--labels", "linux"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;
    let submit = |id: &str, name: &str, labels: &[&str]| SubmitRequest {
        id: Some(id.into()),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        ..sh_job(name, "true")
    };
    // Run on the agent: build-1, build-2, test-1. Stay queued: gpu-1 (no
    // worker has gpu) and "odd*name" (a GLOB wildcard in the name).
    for req in [
        submit("build-1", "build-web", &["linux"]),
        submit("build-2", "build-api", &[]),
        submit("test-1", "test-unit", &["linux"]),
    ] {
        let job = client.submit(&req).await.expect("submit");
        client.wait(&job.job.id).await.expect("wait");
    }
    client
        .submit(&submit("gpu-1", "train", &["gpu", "linux"]))
        .await
        .expect("submit");
    client
        .submit(&submit("odd-1", "odd*name", &["gpu"]))
        .await
        .expect("submit");

    let q = JobQuery::default;
    assert_eq!(
        ids(&client, q()).await,
        ["odd-1", "gpu-1", "test-1", "build-2", "build-1"]
    );
    let by = |state| JobQuery {
        state: Some(state),
        ..q()
    };
    assert_eq!(ids(&client, by(JobState::Queued)).await, ["odd-1", "gpu-1"]);
    assert_eq!(
        ids(&client, by(JobState::Succeeded)).await,
        ["test-1", "build-2", "build-1"]
    );
    let label = |l: &str| JobQuery {
        label: Some(l.into()),
        ..q()
    };
    assert_eq!(
        ids(&client, label("linux")).await,
        ["gpu-1", "test-1", "build-1"]
    );
    assert_eq!(ids(&client, label("gpu")).await, ["odd-1", "gpu-1"]);
    assert!(ids(&client, label("arm64")).await.is_empty());
    let worker = |w: &str| JobQuery {
        worker: Some(w.into()),
        ..q()
    };
    assert_eq!(
        ids(&client, worker("filter-agent")).await,
        ["test-1", "build-2", "build-1"]
    );
    assert!(ids(&client, worker("elsewhere")).await.is_empty());
    let prefix = |p: &str| JobQuery {
        name_prefix: Some(p.into()),
        ..q()
    };
    assert_eq!(ids(&client, prefix("build-")).await, ["build-2", "build-1"]);
    assert_eq!(ids(&client, prefix("odd*")).await, ["odd-1"]);
    assert!(
        ids(&client, prefix("odd?")).await.is_empty(),
        "wildcards are literal"
    );
    assert!(
        ids(&client, prefix("BUILD")).await.is_empty(),
        "case-sensitive"
    );
    let combined = JobQuery {
        state: Some(JobState::Succeeded),
        label: Some("linux".into()),
        name_prefix: Some("build".into()),
        ..q()
    };
    assert_eq!(ids(&client, combined).await, ["build-1"]);

    // Paging: every job exactly once, newest first, no cursor on the last page.
    for (query, expected) in [(q(), 5), (label("linux"), 3), (by(JobState::Succeeded), 3)] {
        let mut seen = Vec::new();
        let mut query = JobQuery {
            limit: Some(2),
            ..query
        };
        loop {
            let page = client.list_jobs(&query).await.expect("page");
            assert!(page.jobs.len() <= 2);
            seen.extend(page.jobs.iter().map(|j| j.seq));
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), expected, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
    }
    let exact = client
        .list_jobs(&JobQuery {
            limit: Some(5),
            ..q()
        })
        .await
        .expect("list");
    assert_eq!(
        (exact.jobs.len(), exact.next_cursor),
        (5, None),
        "a full last page has no cursor"
    );

    // Empty values are no filter (an empty form field).
    assert_eq!(
        ids(&client, q()).await.len(),
        client
            .list_jobs(&JobQuery {
                label: Some(String::new()),
                ..q()
            })
            .await
            .expect("list")
            .jobs
            .len()
    );

    let base = &server.url;
    let bad = StatusCode::BAD_REQUEST;
    let inv = "invalid_argument";
    expect_error(base, "/api/v1/jobs?state=paused", bad, inv, Some("state")).await;
    expect_error(
        base,
        "/api/v1/jobs?label=has%20space",
        bad,
        inv,
        Some("label"),
    )
    .await;
    expect_error(base, "/api/v1/jobs?worker=a/b", bad, inv, Some("worker")).await;
    let long = "n".repeat(300);
    expect_error(
        base,
        &format!("/api/v1/jobs?name_prefix={long}"),
        bad,
        inv,
        Some("name_prefix"),
    )
    .await;
    expect_error(base, "/api/v1/jobs?limit=0", bad, inv, Some("limit")).await;
    expect_error(base, "/api/v1/jobs?limit=-1", bad, inv, None).await;
    expect_error(base, "/api/v1/jobs?cursor=next", bad, inv, Some("cursor")).await;
    expect_error(base, "/api/v1/jobs?tag=x", bad, inv, None).await;
}

/// Waits on `events` for a job event matching `want`, returning the job.
async fn next_job(events: &mut hodei_client::Events, want: impl Fn(&Job) -> bool) -> Job {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream is open")
            .expect("a valid event");
        if let ApiEvent::Job(job) = ev
            && want(&job)
        {
            return *job;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_reports_job_and_worker_changes() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let client = server.client();
    let mut all = client.events(None).await.expect("subscribe");
    let first = all.next().await.expect("an event").expect("valid");
    assert_eq!(first, ApiEvent::Ready);

    // A worker attaching is announced.
    let mut agent = AgentProc::start(
        &server.url,
        "event-agent",
        &dir.path().join("w"),
        &["--slots", "2"],
    );
    let worker = loop {
        match tokio::time::timeout(Duration::from_secs(20), all.next()).await {
            Ok(Some(Ok(ApiEvent::Worker(w)))) if w.id == "event-agent" => break w,
            Ok(Some(Ok(_))) => {}
            other => panic!("no worker event: {other:?}"),
        }
    };
    assert_eq!((worker.state.as_str(), worker.slots), ("ready", 2));

    // A job: its events end with its final record; one job's stream sees only it.
    let job = client
        .submit(&sh_job("evented", "sleep 0.3; echo hi"))
        .await
        .expect("submit")
        .job;
    let mut one = client
        .events(Some(&job.id))
        .await
        .expect("subscribe to one job");
    let other = client
        .submit(&sh_job("other", "true"))
        .await
        .expect("submit")
        .job;
    let done = next_job(&mut all, |j| j.id == job.id && j.state.is_terminal()).await;
    assert_eq!((done.state, done.exit_code), (JobState::Succeeded, Some(0)));
    assert_eq!(done.worker.as_deref(), Some("event-agent"));
    let seen = next_job(&mut one, |j| j.state.is_terminal()).await;
    assert_eq!(seen.id, job.id, "the filtered stream carried another job");
    client.wait(&other.id).await.expect("other job");

    // A draining worker is announced.
    let drained = agent.drain(Duration::from_secs(20));
    assert!(drained.is_some(), "the agent did not drain");
    let mut states = BTreeSet::new();
    while !states.contains("offline") {
        match tokio::time::timeout(Duration::from_secs(20), all.next()).await {
            Ok(Some(Ok(ApiEvent::Worker(w)))) => {
                states.insert(w.state);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no offline worker event (saw {states:?}): {other:?}"),
        }
    }

    let base = &server.url;
    let bad = StatusCode::BAD_REQUEST;
    expect_error(
        base,
        "/api/v1/events?job=a%20b",
        bad,
        "invalid_argument",
        Some("job_id"),
    )
    .await;
    expect_error(
        base,
        "/api/v1/events?since=3",
        bad,
        "invalid_argument",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_jobs_by_state_and_minute() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(&server.url, "stats-agent", &dir.path().join("w"), &[]);
    let client = server.client();
    wait_workers_ready(&client, 1).await;
    for script in ["true", "exit 3", "true"] {
        let job = client
            .submit(&sh_job("s", script))
            .await
            .expect("submit")
            .job;
        client.wait(&job.id).await.expect("wait");
    }
    let queued = SubmitRequest {
        labels: vec!["gpu".into()],
        ..sh_job("stuck", "true")
    };
    client.submit(&queued).await.expect("submit");
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.jobs.len(), JobState::ALL.len(), "{:?}", stats.jobs);
    assert_eq!(stats.jobs["succeeded"], 2);
    assert_eq!(stats.jobs["failed"], 1);
    assert_eq!((stats.queue_depth, stats.running), (1, 0));
    assert_eq!(
        (
            stats.last_hour.succeeded,
            stats.last_hour.failed,
            stats.last_hour.cancelled
        ),
        (2, 1, 0)
    );
    assert_eq!(stats.per_minute.len(), 60);
    assert!(
        stats
            .per_minute
            .windows(2)
            .all(|w| w[1].start_ms - w[0].start_ms == 60_000)
    );
    let charted: u64 = stats
        .per_minute
        .iter()
        .map(|m| m.succeeded + m.failed + m.cancelled)
        .sum();
    assert_eq!(charted, 3);
    assert_eq!((stats.workers.ready, stats.workers.offline), (1, 0));
}
