//! Sessions that break and agents that leave: a job survives an orchestrator
//! restart within the lease grace with its log complete and run once, and a
//! draining agent finishes its job but takes no new one.

mod common;

use std::time::Duration;

use common::*;
use hodei_core::api::SubmitRequest;
use hodei_core::{JobState, LogStream};

/// A job that prints `n` numbered lines, one every `every` seconds, and
/// appends one line to `runs` each time it starts (to count executions).
fn counting_job(n: u32, every: &str, runs: &std::path::Path) -> SubmitRequest {
    let script = format!(
        "echo run >> {runs}; i=1; while [ $i -le {n} ]; do echo line-$i; i=$((i+1)); sleep {every}; done",
        runs = runs.display()
    );
    SubmitRequest {
        command: vec!["sh".into(), "-c".into(), script],
        ..SubmitRequest::default()
    }
}

fn expected_lines(n: u32) -> String {
    (1..=n).map(|i| format!("line-{i}\n")).collect()
}

/// Runs a counting job, stops the orchestrator in the middle of it (SIGKILL,
/// or SIGTERM when `graceful`), restarts it on the same address and data
/// directory, and checks that the job finished once, as attempt 1, with every
/// line of its log exactly once. Returns how long the stop took.
async fn job_survives_a_restart(lines: u32, graceful: bool) -> Duration {
    let dir = tempdir();
    let data = dir.path().join("data");
    let flags = ["--lease-grace", "20s", "--heartbeat-interval", "1s"];
    let mut server = ServerProc::start(&data, &flags);
    let addr = server.addr().to_string();
    let _agent = AgentProc::start(
        &server.url,
        "survivor",
        &dir.path().join("work"),
        &["--slots", "1"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let runs = dir.path().join("runs");
    let id = client
        .submit(&counting_job(lines, "0.1", &runs))
        .await
        .expect("submit")
        .job
        .id;
    // Wait until part of the output is stored, then stop the orchestrator.
    wait_for(Duration::from_secs(10), "some output", || async {
        let log = client.logs(&id, Some(LogStream::Stdout)).await.ok()?;
        (log.len() > 20).then_some(())
    })
    .await;
    let stopping = std::time::Instant::now();
    if graceful {
        server.stop();
    } else {
        server.kill();
    }
    let stop_time = stopping.elapsed();

    // Restart on the same port and data directory: the agent redials.
    let server = ServerProc::start_on(&data, &addr, &flags);
    let client = server.client();
    let job = wait_for(Duration::from_secs(30), "the job to finish", || async {
        let job = client.job(&id).await.ok()?;
        job.state.is_terminal().then_some(job)
    })
    .await;
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Succeeded, 1),
        "ran once, to the end: {job:?}"
    );
    let log = client
        .logs(&id, Some(LogStream::Stdout))
        .await
        .expect("log");
    assert_eq!(
        String::from_utf8_lossy(&log),
        expected_lines(lines),
        "every line exactly once, in order"
    );
    let started = std::fs::read_to_string(&runs).expect("runs file");
    assert_eq!(started.lines().count(), 1, "the process ran once");
    stop_time
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_survives_an_orchestrator_crash_and_restart_within_the_grace() {
    job_survives_a_restart(40, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_orchestrator_loses_nothing() {
    // SIGTERM: the server tells the agent to come back later and exits.
    let stop_time = job_survives_a_restart(30, true).await;
    assert!(
        stop_time < Duration::from_secs(8),
        "graceful stop took {stop_time:?}"
    );
    eprintln!("graceful stop took {stop_time:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_finishes_its_job_and_takes_no_new_one() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let mut agent = AgentProc::start(
        &server.url,
        "drainer",
        &dir.path().join("work"),
        &["--slots", "2"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let runs = dir.path().join("runs");
    let id = client
        .submit(&counting_job(10, "0.1", &runs))
        .await
        .expect("submit")
        .job
        .id;
    wait_for(Duration::from_secs(10), "the job to run", || async {
        (client.job(&id).await.ok()?.state == JobState::Running).then_some(())
    })
    .await;
    signal(agent.pid(), 15);
    wait_for(Duration::from_secs(10), "the worker to drain", || async {
        let workers = client.workers().await.ok()?;
        workers.iter().any(|w| w.state == "draining").then_some(())
    })
    .await;
    let later = client
        .submit(&SubmitRequest {
            command: vec!["true".into()],
            ..SubmitRequest::default()
        })
        .await
        .expect("submit")
        .job
        .id;
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .expect("agent exits after draining");
    assert!(status.success(), "agent exit status {status:?}");
    let job = client.job(&id).await.expect("job");
    assert_eq!(job.state, JobState::Succeeded);
    let log = client
        .logs(&id, Some(LogStream::Stdout))
        .await
        .expect("log");
    assert_eq!(String::from_utf8_lossy(&log), expected_lines(10));
    assert_eq!(
        client.job(&later).await.expect("job").state,
        JobState::Queued
    );
}

/// Agents are told to heartbeat at a third of the lease grace unless the
/// interval is set, and an interval that could not renew a lease (not
/// shorter than the grace, or zero) stops the server at start.
#[tokio::test]
async fn heartbeats_follow_the_lease_grace() {
    use hwp_proto::pb;
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &["--lease-grace", "3s"]);
    let mut client = hwp_client_with(&server.url, join_token()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::Hello {
        registration: Some(pb::WorkerRegistration {
            worker_id: "pacer".into(),
            slots: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(hello)),
    })
    .await
    .expect("send Hello");
    let mut inbound = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::ServerMessage {
            body: Some(pb::server_message::Body::Welcome(w)),
        })) => assert_eq!((w.heartbeat_interval_ms, w.lease_grace_ms), (1_000, 3_000)),
        other => panic!("expected Welcome, got {other:?}"),
    }
    drop(tx);

    for flags in [
        &["--heartbeat-interval", "30s"][..],
        &["--heartbeat-interval", "5s", "--lease-grace", "5s"],
        &["--heartbeat-interval", "0s"],
    ] {
        let stderr = refused_start(&dir.path().join("refused"), flags);
        assert!(stderr.contains("heartbeat interval"), "{flags:?}: {stderr}");
    }
}
