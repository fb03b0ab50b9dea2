//! An agent given several orchestrators (`hodei agent --server URL1,URL2`)
//! fails over: when the server it is attached to is killed, it attaches to
//! the next one and runs that one's jobs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hodei_core::{Job, JobState, LogStream};

/// Submits `echo <word>` to `client` and waits for the job to end; checks
/// it succeeded on `worker` with its output.
async fn run_on(client: &Client, worker: &str, word: &str) -> Job {
    let id = client
        .submit(&sh_job(word, &format!("echo {word}")))
        .await
        .expect("submit")
        .job
        .id;
    let job = wait_for(Duration::from_secs(30), "the job to finish", || async {
        let job = client.job(&id).await.ok()?;
        job.state.is_terminal().then_some(job)
    })
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.worker.as_deref(), Some(worker), "{job:?}");
    let log = client
        .logs(&id, Some(LogStream::Stdout))
        .await
        .expect("log");
    assert_eq!(String::from_utf8_lossy(&log), format!("{word}\n"));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_next_server_when_one_dies() {
    let dir = tempdir();
    // Two independent servers (own data directory, own database, own port),
    // provisioned by the harness with the same tokens: one join token
    // admits the agent to both.
    let mut first = ServerProc::start(&dir.path().join("data-1"), &[]);
    let second = ServerProc::start(&dir.path().join("data-2"), &[]);
    let servers = format!("{},{}", first.url, second.url);
    let name = "failover-agent";
    let _agent = AgentProc::start(&servers, name, &dir.path().join("work"), &["--slots", "1"]);
    let (c1, c2) = (first.client(), second.client());

    // It attaches to the first URL, and only there.
    wait_workers_ready(&c1, 1).await;
    let on_second = c2.workers().await.expect("workers of the second server");
    assert!(on_second.is_empty(), "{on_second:?}");
    run_on(&c1, name, "first").await;

    // The first server crashes: the agent attaches to the second one.
    first.kill();
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "the agent to attach to the second server",
        || async {
            let workers = c2.workers().await.ok()?;
            workers
                .iter()
                .any(|w| w.id == name && w.state == "ready")
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "failover: agent attached to the second server {:?} after the first was killed",
        killed.elapsed()
    );
    run_on(&c2, name, "second").await;
}
