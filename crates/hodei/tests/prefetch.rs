//! Prefetch with real `hodei server` and `hodei agent` processes: a job
//! that waits in one agent's prefetch queue behind a long job is taken
//! back and run by another agent as soon as that one has a free slot.

mod common;

use std::time::Duration;

use common::*;
use hodei_core::JobState;

const DEADLINE: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_behind_a_long_one_moves_to_an_agent_with_a_free_slot() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let client = server.client();
    let work = |name: &str| dir.path().join(format!("work-{name}"));
    let _busy = AgentProc::start(
        &server.url,
        "busy",
        &work("busy"),
        &["--slots", "1", "--prefetch", "2"],
    );
    wait_workers_ready(&client, 1).await;

    // The long job takes busy's slot; the short one waits in its queue.
    let long = client
        .submit(&sh_job("long", "sleep 60"))
        .await
        .expect("submit")
        .job
        .id;
    wait_for(DEADLINE, "the long job to run", || async {
        let job = client.job(&long).await.ok()?;
        (job.state == JobState::Running).then_some(())
    })
    .await;
    let short = client
        .submit(&sh_job("short", "echo moved"))
        .await
        .expect("submit")
        .job
        .id;
    wait_for(DEADLINE, "the short job to wait on busy", || async {
        let workers = client.workers().await.ok()?;
        let busy = workers.iter().find(|w| w.id == "busy")?;
        (busy.running.contains(&short) && busy.slots_in_use() == (1, 1)).then_some(())
    })
    .await;
    let job = client.job(&short).await.expect("job");
    assert_eq!(job.state, JobState::Assigned, "waiting for busy's slot");

    // An agent with a free slot comes: the short job is taken back from
    // busy and runs there, while the long job still runs.
    let _free = AgentProc::start(&server.url, "free", &work("free"), &["--slots", "1"]);
    let job = wait_for(DEADLINE, "the short job to finish", || async {
        client
            .job(&short)
            .await
            .ok()
            .filter(|j| j.state.is_terminal())
    })
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.worker.as_deref(), Some("free"), "{job:?}");
    assert_eq!((job.attempt, job.retries), (2, 0), "{job:?}");
    let logs = client.logs(&short, None).await.expect("logs");
    assert_eq!(&logs[..], b"moved\n");
    let long_job = client.job(&long).await.expect("job");
    assert_eq!(long_job.state, JobState::Running);
    assert_eq!(long_job.worker.as_deref(), Some("busy"));
    client.cancel(&long).await.expect("cancel");
    wait_for(DEADLINE, "the long job to end", || async {
        client
            .job(&long)
            .await
            .ok()
            .filter(|j| j.state.is_terminal())
    })
    .await;
}
