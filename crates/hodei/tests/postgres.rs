//! The orchestrator on PostgreSQL (`--database postgres://…`), against a
//! private PostgreSQL server per test started by `pg-harness`: jobs run and
//! keep their logs, state survives a server SIGKILL, and a PostgreSQL restart
//! in the middle of a run loses nothing acknowledged.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use hodei_core::JobState;

/// A job printing `n` numbered lines, one every `pause` seconds.
fn counting_job(name: &str, n: u32, pause: &str) -> hodei_core::api::SubmitRequest {
    sh_job(
        name,
        &format!("for i in $(seq 1 {n}); do echo {name}-$i; sleep {pause}; done"),
    )
}

/// Checks the stored stdout of job `id` is exactly lines `name-1..=n`.
async fn assert_full_log(client: &Client, id: &str, name: &str, n: u32) {
    let log = client
        .logs(id, Some(hodei_core::LogStream::Stdout))
        .await
        .expect("logs");
    let text = String::from_utf8_lossy(&log);
    let expected: String = (1..=n).map(|i| format!("{name}-{i}\n")).collect();
    assert_eq!(text, expected, "log of {name} ({id})");
}

#[tokio::test]
async fn jobs_run_and_survive_a_server_kill_on_postgres() {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let work = tempdir();
    let mut server = ServerProc::start(&dir.path().join("a"), &["--database", &url]);
    let _agent = AgentProc::start(&server.url, "pg-w1", work.path(), &["--slots", "4"]);
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let mut ids = HashMap::new();
    for i in 0..12 {
        let name = format!("pg{i}");
        let job = client
            .submit(&counting_job(&name, 20, "0"))
            .await
            .expect("submit")
            .job;
        ids.insert(job.id.clone(), name);
    }
    for (id, name) in &ids {
        let job = client.wait(id).await.expect("wait");
        assert_eq!(job.state, JobState::Succeeded, "{name}: {:?}", job.reason);
        assert_full_log(&client, id, name, 20).await;
    }

    // A job queued with no worker, then the server is killed: a new server
    // with another data directory finds everything in PostgreSQL.
    let pending = client
        .submit(&hodei_core::api::SubmitRequest {
            labels: vec!["nowhere".into()],
            ..sh_job("pending", "echo later")
        })
        .await
        .expect("submit")
        .job;
    server.kill();
    let server = ServerProc::start(&dir.path().join("b"), &["--database", &url]);
    let client = server.client();
    for (id, name) in &ids {
        let job = client.job(id).await.expect("job after restart");
        assert_eq!(job.state, JobState::Succeeded, "{name}");
        assert_full_log(&client, id, name, 20).await;
    }
    let job = client.job(&pending.id).await.expect("pending job");
    assert_eq!(job.state, JobState::Queued);
    let work2 = tempdir();
    let _agent2 = AgentProc::start(&server.url, "pg-w2", work2.path(), &["--labels", "nowhere"]);
    let done = client.wait(&pending.id).await.expect("wait pending");
    assert_eq!(done.state, JobState::Succeeded);
}

#[tokio::test]
async fn a_postgres_restart_mid_run_loses_nothing_acknowledged() {
    // A server of its own, since this test restarts it.
    let pg: &'static pg_harness::PgServer = Box::leak(Box::new(start_pg().await));
    let url = create_db(pg).await;
    let dir = tempdir();
    let work = tempdir();
    let server = ServerProc::start(dir.path(), &["--database", &url]);
    let _agent = AgentProc::start(&server.url, "pg-r1", work.path(), &["--slots", "8"]);
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    // 8 jobs of 30 lines over ~3 s each; each also counts its runs in a file.
    let runs = work.path().join("runs");
    std::fs::create_dir_all(&runs).expect("runs dir");
    let mut ids = HashMap::new();
    for i in 0..8 {
        let name = format!("r{i}");
        let script = format!(
            "echo x >> {}/{name}; for i in $(seq 1 30); do echo {name}-$i; sleep 0.1; done",
            runs.display()
        );
        let job = client
            .submit(&sh_job(&name, &script))
            .await
            .expect("submit")
            .job;
        ids.insert(job.id.clone(), name);
    }
    wait_for(Duration::from_secs(20), "jobs to run", || async {
        let running = client
            .list_jobs(&hodei_core::api::JobQuery {
                state: Some(JobState::Running),
                ..Default::default()
            })
            .await
            .ok()?;
        (running.jobs.len() == 8).then_some(())
    })
    .await;

    // Restart PostgreSQL while every job is printing.
    let restarted = Instant::now();
    tokio::task::spawn_blocking(move || pg.restart())
        .await
        .expect("join")
        .expect("restart PostgreSQL");
    println!("PostgreSQL restarted in {:?}", restarted.elapsed());

    // The server recovers by itself (same process) and every job completes
    // once, with its whole log.
    for (id, name) in &ids {
        let job = wait_for(Duration::from_secs(60), "job to finish", || async {
            let job = client.job(id).await.ok()?;
            job.state.is_terminal().then_some(job)
        })
        .await;
        assert_eq!(job.state, JobState::Succeeded, "{name}: {:?}", job.reason);
        assert_full_log(&client, id, name, 30).await;
        let count = std::fs::read_to_string(runs.join(name)).expect("run count");
        assert_eq!(count.lines().count(), 1, "{name} ran more than once");
    }
    assert!(alive(server.pid()), "the server survived the restart");
    println!("all jobs done {:?} after the restart", restarted.elapsed());
    let after = client
        .submit(&sh_job("after", "echo after"))
        .await
        .expect("submit after the restart")
        .job;
    let after = client.wait(&after.id).await.expect("wait");
    assert_eq!(after.state, JobState::Succeeded);
}
