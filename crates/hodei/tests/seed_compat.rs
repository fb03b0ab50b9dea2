//! A client generated from the seed proto alone (`hwp_seed::pb`) calls the
//! four seed RPCs against a real `hodei server`: the seed contract keeps
//! working, and what it does is visible through the HTTP API.

mod common;

use std::time::Duration;

use common::*;
use hodei_core::JobState;
use hwp_seed::pb;
use hwp_seed::pb::worker_service_client::WorkerServiceClient;
use tonic::Code;

async fn seed_client(server: &ServerProc) -> WorkerServiceClient<Authed> {
    seed_client_with(&server.url, admin_token()).await
}

fn assign(job_id: &str, command: &[&str]) -> pb::AssignJobRequest {
    pb::AssignJobRequest {
        job_id: job_id.to_string(),
        name: "seed".to_string(),
        image: String::new(),
        command: command.iter().map(|s| s.to_string()).collect(),
    }
}

fn log_entry(job_id: &str, data: &str) -> pb::LogEntry {
    pb::LogEntry {
        job_id: job_id.to_string(),
        data: data.to_string(),
    }
}

const ECHO_SEED: &[&str] = &["sh", "-c", "echo seed"];

/// Waits until the job reaches `state` (through the HTTP API).
async fn wait_state(client: &Client, id: &str, state: JobState) {
    wait_for(
        Duration::from_secs(20),
        &format!("job {id} to be {state}"),
        || async {
            let job = client.job(id).await.ok()?;
            (job.state == state).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_worker_answers_with_the_worker_status() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let mut seed = seed_client(&server).await;

    let status = seed
        .register_worker(pb::WorkerRegistration {
            worker_id: "seed-worker".into(),
            capabilities: vec!["linux".into(), "seed".into()],
        })
        .await
        .expect("RegisterWorker")
        .into_inner();
    assert_eq!(status.worker_id, "seed-worker");
    assert!(
        ["ready", "busy", "draining", "offline"].contains(&status.state.as_str()),
        "state {:?} is not one of the seed's states",
        status.state
    );
    // A seed registration opens no session: nothing can be pushed to it.
    assert_eq!(status.state, "offline");

    // The registration is recorded and listed with its capabilities.
    let workers = server.client().workers().await.expect("list workers");
    let w = workers
        .iter()
        .find(|w| w.id == "seed-worker")
        .unwrap_or_else(|| panic!("registered worker not listed: {workers:?}"));
    assert_eq!(w.state, "offline");
    assert_eq!(w.labels, vec!["linux".to_string(), "seed".to_string()]);

    // Registering again is fine and answers the same.
    let again = seed
        .register_worker(pb::WorkerRegistration {
            worker_id: "seed-worker".into(),
            capabilities: vec![],
        })
        .await
        .expect("RegisterWorker again")
        .into_inner();
    assert_eq!(again.worker_id, "seed-worker");
    assert_eq!(again.state, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_job_creates_idempotently_and_the_job_runs() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let client = server.client();
    let mut seed = seed_client(&server).await;

    // An explicit id creates the job, visible through the HTTP API.
    let accepted = seed
        .assign_job(assign("seed-1", ECHO_SEED))
        .await
        .expect("AssignJob")
        .into_inner();
    assert_eq!(accepted.job_id, "seed-1");
    let job = client.job("seed-1").await.expect("job through HTTP");
    assert_eq!(job.id, "seed-1");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.spec.command, ECHO_SEED);
    assert_eq!(job.spec.name, "seed");
    assert_eq!(job.spec.image, None, "an empty seed image means no image");

    // Same id and spec: the same job, not a second one.
    let again = seed
        .assign_job(assign("seed-1", ECHO_SEED))
        .await
        .expect("AssignJob again")
        .into_inner();
    assert_eq!(again.job_id, "seed-1");
    let list = client.jobs(None, 100, None).await.expect("list jobs");
    assert_eq!(list.jobs.len(), 1, "a repeated AssignJob made a second job");
    assert_eq!(client.job("seed-1").await.expect("job"), job);

    // Same id, different command: refused, the job unchanged.
    let err = seed
        .assign_job(assign("seed-1", &["sh", "-c", "echo other"]))
        .await
        .expect_err("a different spec under the same id must be refused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("seed-1"), "{err:?}");
    assert_eq!(client.job("seed-1").await.expect("job"), job);

    // No id: the server makes one.
    let generated = seed
        .assign_job(assign("", ECHO_SEED))
        .await
        .expect("AssignJob without an id")
        .into_inner();
    assert!(!generated.job_id.is_empty());
    assert_ne!(generated.job_id, "seed-1");
    let gen_job = client.job(&generated.job_id).await.expect("generated job");
    assert_eq!(gen_job.spec.command, ECHO_SEED);
    let list = client.jobs(None, 100, None).await.expect("list jobs");
    assert_eq!(list.jobs.len(), 2);

    // With an agent attached, the seed-submitted jobs run.
    let _agent = AgentProc::start(&server.url, "seed-agent", &dir.path().join("work"), &[]);
    for id in ["seed-1", generated.job_id.as_str()] {
        wait_state(&client, id, JobState::Succeeded).await;
        let job = client.job(id).await.expect("job");
        assert_eq!(job.exit_code, Some(0));
        let logs = client.logs(id, None).await.expect("logs");
        assert_eq!(&logs[..], b"seed\n", "log of {id}");
    }

    // A finished job stays idempotent under the seed RPC too.
    let after = seed
        .assign_job(assign("seed-1", ECHO_SEED))
        .await
        .expect("AssignJob of a finished job")
        .into_inner();
    assert_eq!(after.job_id, "seed-1");
    assert_eq!(
        client.jobs(None, 100, None).await.expect("list").jobs.len(),
        2
    );
    assert_eq!(
        client.job("seed-1").await.expect("job").state,
        JobState::Succeeded
    );

    // A finished job's log is closed, and cancelling it is a no-op.
    let err = seed
        .stream_logs(tokio_stream::iter(vec![log_entry("seed-1", "late\n")]))
        .await
        .expect_err("logs for a finished job must be refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    seed.cancel_job(pb::CancelJobRequest {
        job_id: "seed-1".into(),
    })
    .await
    .expect("CancelJob of a finished job");
    let job = client.job("seed-1").await.expect("job");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        &client.logs("seed-1", None).await.expect("logs")[..],
        b"seed\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_logs_appends_and_cancel_job_cancels_a_queued_job() {
    let dir = tempdir();
    // No agent: the jobs stay queued.
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let client = server.client();
    let mut seed = seed_client(&server).await;

    seed.assign_job(assign("logs-1", ECHO_SEED))
        .await
        .expect("AssignJob");

    // Client streaming: every entry is appended in order.
    seed.stream_logs(tokio_stream::iter(vec![
        log_entry("logs-1", "hello "),
        log_entry("logs-1", "seed "),
        log_entry("logs-1", "world\n"),
    ]))
    .await
    .expect("StreamLogs");
    let logs = client.logs("logs-1", None).await.expect("logs");
    assert_eq!(&logs[..], b"hello seed world\n");

    // A second stream appends after the first.
    seed.stream_logs(tokio_stream::iter(vec![log_entry("logs-1", "more\n")]))
        .await
        .expect("StreamLogs again");
    let logs = client.logs("logs-1", None).await.expect("logs");
    assert_eq!(&logs[..], b"hello seed world\nmore\n");
    assert_eq!(
        client.job("logs-1").await.expect("job").state,
        JobState::Queued
    );

    // Unknown job: NOT_FOUND, naming it.
    let err = seed
        .stream_logs(tokio_stream::iter(vec![log_entry("no-such-job", "x")]))
        .await
        .expect_err("logs for an unknown job must be refused");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-job"), "{err:?}");

    // CancelJob cancels a queued job.
    seed.assign_job(assign("cancel-1", ECHO_SEED))
        .await
        .expect("AssignJob");
    seed.cancel_job(pb::CancelJobRequest {
        job_id: "cancel-1".into(),
    })
    .await
    .expect("CancelJob");
    wait_state(&client, "cancel-1", JobState::Cancelled).await;

    // Unknown job: NOT_FOUND.
    let err = seed
        .cancel_job(pb::CancelJobRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .expect_err("cancelling an unknown job must be refused");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-job"), "{err:?}");

    // The other job is untouched.
    let job = client.job("logs-1").await.expect("job");
    assert_eq!(job.state, JobState::Queued);
    let logs = client.logs("logs-1", None).await.expect("logs");
    assert_eq!(&logs[..], b"hello seed world\nmore\n");
}
