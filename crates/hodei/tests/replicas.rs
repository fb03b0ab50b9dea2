//! Several `hodei server` replicas on one PostgreSQL database (private
//! PostgreSQL servers from `pg-harness`, real processes, real agents):
//! every job runs exactly once with its whole log, through the SIGKILL of
//! a replica and a PostgreSQL restart; a job submitted on one replica runs
//! on an agent attached to another; cancels and live logs work through
//! any replica.
//!
//! Each job appends a line to its own file before printing, so a job that
//! ran twice is seen even if the store recorded one result.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hodei_core::JobState;

/// Starts `n` replicas on `url`, each with its own data directory.
fn replicas(n: usize, url: &str, dir: &Path) -> Vec<ServerProc> {
    replicas_with_grace(n, url, dir, "20s")
}

fn replicas_with_grace(n: usize, url: &str, dir: &Path, grace: &str) -> Vec<ServerProc> {
    (0..n)
        .map(|i| {
            ServerProc::start(
                &dir.join(format!("replica-{i}")),
                &[
                    "--database",
                    url,
                    "--heartbeat-interval",
                    "1s",
                    "--lease-grace",
                    grace,
                ],
            )
        })
        .collect()
}

/// Agent `i` lists the replicas starting from replica `i % n`, so agents
/// spread over them.
fn agent_servers(servers: &[ServerProc], i: usize) -> String {
    let n = servers.len();
    (0..n)
        .map(|k| servers[(i + k) % n].url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Workers attached to any of `servers` (each lists those attached to it)
/// whose state is one of `states`, read in one pass.
async fn workers_in(servers: &[&ServerProc], states: &[&str]) -> usize {
    let mut n = 0;
    for s in servers {
        if let Ok(workers) = s.client().workers().await {
            n += workers
                .iter()
                .filter(|w| states.contains(&w.state.as_str()))
                .count();
        }
    }
    n
}

/// A job that counts its run in `runs/<name>` and prints `lines` lines.
fn counted_job(runs: &Path, name: &str, lines: u32, pause: &str) -> hodei_core::api::SubmitRequest {
    sh_job(
        name,
        &format!(
            "echo x >> {}/{name}; for i in $(seq 1 {lines}); do echo {name}-$i; sleep {pause}; done",
            runs.display()
        ),
    )
}

/// Checks that every job succeeded, ran once and has its whole log.
async fn assert_each_ran_once(
    client: &hodei_client::Client,
    runs: &Path,
    ids: &HashMap<String, String>,
    lines: u32,
) {
    for (id, name) in ids {
        let job = client.job(id).await.expect("job");
        assert_eq!(job.state, JobState::Succeeded, "{name}: {:?}", job.reason);
        let count = std::fs::read_to_string(runs.join(name)).unwrap_or_default();
        assert_eq!(
            count.lines().count(),
            1,
            "{name} ran {} times",
            count.lines().count()
        );
        let log = client
            .logs(id, Some(hodei_core::LogStream::Stdout))
            .await
            .expect("logs");
        let expected: String = (1..=lines).map(|i| format!("{name}-{i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&log), expected, "log of {name}");
    }
}

/// Waits until `n` of `ids` are finished, reading through `client`.
async fn wait_finished(client: &hodei_client::Client, n: usize, timeout: Duration) {
    wait_for(timeout, "jobs to finish", || async {
        let stats = client.stats().await.ok()?;
        let done: u64 = stats
            .jobs
            .iter()
            .filter(|(state, _)| JobState::parse(state).is_some_and(|s| s.is_terminal()))
            .map(|(_, count)| *count)
            .sum();
        (done as usize >= n).then_some(())
    })
    .await
}

#[tokio::test]
async fn three_replicas_run_every_job_once_through_a_replica_kill() {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let mut servers = replicas(3, &url, dir.path());
    let work = tempdir();
    let runs = work.path().join("runs");
    std::fs::create_dir_all(&runs).expect("runs dir");
    let _agents: Vec<AgentProc> = (0..6)
        .map(|i| {
            AgentProc::start(
                &agent_servers(&servers, i),
                &format!("rep-w{i}"),
                &work.path().join(format!("w{i}")),
                &["--slots", "3"],
            )
        })
        .collect();
    wait_for(Duration::from_secs(30), "6 agents attached", || async {
        let all: Vec<&ServerProc> = servers.iter().collect();
        (workers_in(&all, &["ready"]).await == 6).then_some(())
    })
    .await;

    // 1,000 jobs, submitted round robin to the three replicas in batches
    // of 50, so that most are still queued or running at the kill.
    const JOBS: usize = 1000;
    let clients: Vec<_> = servers.iter().map(|s| s.client()).collect();
    let started = Instant::now();
    let mut ids = HashMap::new();
    for (b, batch) in (0..JOBS).collect::<Vec<_>>().chunks(50).enumerate() {
        let jobs: Vec<_> = batch
            .iter()
            .map(|i| counted_job(&runs, &format!("j{i:04}"), 3, "0.05"))
            .collect();
        let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
        let reply = clients[b % 3].submit_batch(jobs).await.expect("submit");
        ids.extend(reply.ids.into_iter().zip(names));
    }
    println!("submitted {JOBS} jobs in {:?}", started.elapsed());

    // Kill replica 0 with jobs in flight.
    wait_finished(&clients[1], JOBS * 3 / 10, Duration::from_secs(120)).await;
    let killed = Instant::now();
    servers[0].kill();
    let in_flight = clients[1].stats().await.expect("stats");
    println!(
        "killed replica 0 with {} jobs queued and {} on workers",
        in_flight.queue_depth, in_flight.running
    );
    assert!(
        in_flight.queue_depth + in_flight.running > 100,
        "{in_flight:?}"
    );
    let rest: Vec<&ServerProc> = servers[1..].iter().collect();
    wait_for(Duration::from_secs(60), "agents to fail over", || async {
        (workers_in(&rest, &["ready", "busy"]).await == 6).then_some(())
    })
    .await;
    println!(
        "all 6 agents attached to the other replicas {:?} after the kill",
        killed.elapsed()
    );

    wait_finished(&clients[1], JOBS, Duration::from_secs(300)).await;
    let elapsed = started.elapsed();
    println!(
        "{JOBS} jobs on 3 replicas (one killed mid-run) in {elapsed:?}: {:.0} jobs/s",
        JOBS as f64 / elapsed.as_secs_f64()
    );
    assert_each_ran_once(&clients[2], &runs, &ids, 3).await;
}

#[tokio::test]
async fn a_job_submitted_on_one_replica_runs_on_another_and_is_followed_and_cancelled_through_a_third()
 {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let servers = replicas(3, &url, dir.path());
    let work = tempdir();
    // The only agent able to run `pinned` jobs attaches to replica 1.
    let _agent = AgentProc::start(
        &servers[1].url,
        "pinned-w",
        work.path(),
        &["--labels", "pinned"],
    );
    wait_workers_ready(&servers[1].client(), 1).await;

    // Submitted on replica 0, which has no worker: replica 1 runs it.
    let submitted = Instant::now();
    let quick = servers[0]
        .client()
        .submit(&hodei_core::api::SubmitRequest {
            labels: vec!["pinned".into()],
            ..sh_job("quick", "echo hello from elsewhere")
        })
        .await
        .expect("submit")
        .job;
    let done = servers[2].client().wait(&quick.id).await.expect("wait");
    println!(
        "submit on replica 0 → result seen on replica 2: {:?}",
        submitted.elapsed()
    );
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.reason);
    assert_eq!(done.worker.as_deref(), Some("pinned-w"));

    // A long job, followed live through replica 2 and cancelled there.
    let pidfile = work.path().join("long.pid");
    let long = servers[0]
        .client()
        .submit(&hodei_core::api::SubmitRequest {
            labels: vec!["pinned".into()],
            ..sh_job(
                "long",
                &format!(
                    "echo $$ > {}; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done",
                    pidfile.display()
                ),
            )
        })
        .await
        .expect("submit")
        .job;
    let follower = servers[2].client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let long_id = long.id.clone();
    let follow = tokio::spawn(async move {
        follower
            .follow(&long_id, Duration::from_secs(10), |ev| {
                if let hodei_client::FollowEvent::Log { data, .. } = ev {
                    let _ = tx.send(data);
                }
            })
            .await
    });
    // Lines arrive live, in order, through a replica that neither took
    // the submission nor runs the job.
    let mut text = String::new();
    wait_for(Duration::from_secs(30), "20 ticks followed live", || {
        while let Ok(data) = rx.try_recv() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        let n = text.lines().count();
        async move { (n >= 20).then_some(()) }
    })
    .await;
    let expected: String = (1..=20).map(|i| format!("tick-{i}\n")).collect();
    assert!(text.starts_with(&expected), "followed: {text:?}");

    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let cancelled = servers[2].client().cancel(&long.id).await.expect("cancel");
    assert!(cancelled.cancel_requested);
    let end = tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .expect("follow ends")
        .expect("join")
        .expect("follow");
    println!("follow ended: {end:?}");
    let job = servers[0].client().job(&long.id).await.expect("job");
    assert_eq!(job.state, JobState::Cancelled, "{:?}", job.reason);
    wait_for(
        Duration::from_secs(10),
        "the job's process to be gone",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn replicas_recover_from_a_postgres_restart_without_losing_anything() {
    let pg: &'static pg_harness::PgServer = Box::leak(Box::new(start_pg().await));
    let url = create_db(pg).await;
    let dir = tempdir();
    let servers = replicas(2, &url, dir.path());
    let work = tempdir();
    let runs = work.path().join("runs");
    std::fs::create_dir_all(&runs).expect("runs dir");
    let _agents: Vec<AgentProc> = (0..2)
        .map(|i| {
            AgentProc::start(
                &agent_servers(&servers, i),
                &format!("pgr-w{i}"),
                &work.path().join(format!("w{i}")),
                &["--slots", "4"],
            )
        })
        .collect();
    wait_for(Duration::from_secs(30), "2 agents attached", || async {
        let all: Vec<&ServerProc> = servers.iter().collect();
        (workers_in(&all, &["ready"]).await == 2).then_some(())
    })
    .await;

    let mut ids = HashMap::new();
    for i in 0..8 {
        let name = format!("p{i}");
        let job = servers[i % 2]
            .client()
            .submit(&counted_job(&runs, &name, 30, "0.1"))
            .await
            .expect("submit")
            .job;
        ids.insert(job.id, name);
    }
    let client = servers[0].client();
    wait_for(Duration::from_secs(30), "8 jobs running", || async {
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

    let restarted = Instant::now();
    tokio::task::spawn_blocking(move || pg.restart())
        .await
        .expect("join")
        .expect("restart PostgreSQL");
    println!("PostgreSQL restarted in {:?}", restarted.elapsed());

    for id in ids.keys() {
        wait_for(Duration::from_secs(90), "job to finish", || async {
            let job = client.job(id).await.ok()?;
            job.state.is_terminal().then_some(())
        })
        .await;
    }
    println!("all jobs done {:?} after the restart", restarted.elapsed());
    assert_each_ran_once(&servers[1].client(), &runs, &ids, 30).await;
    for s in &servers {
        assert!(alive(s.pid()), "replicas survive the restart");
    }
}

#[tokio::test]
async fn the_jobs_of_a_dead_replica_whose_agent_is_gone_are_swept_and_retried() {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let mut servers = replicas_with_grace(2, &url, dir.path(), "3s");
    let work = tempdir();
    let runs = work.path().join("runs");
    std::fs::create_dir_all(&runs).expect("runs dir");
    // Agent A knows only replica 0 and is the only one with label `a`.
    let mut agent_a = AgentProc::start(
        &servers[0].url,
        "sweep-a",
        &work.path().join("a"),
        &["--labels", "a"],
    );
    wait_workers_ready(&servers[0].client(), 1).await;
    let mut request = counted_job(&runs, "swept", 10, "0.2");
    request.labels = vec!["a".into()];
    request.max_retries = 1;
    let job = servers[1]
        .client()
        .submit(&request)
        .await
        .expect("submit")
        .job;
    let client = servers[1].client();
    wait_for(
        Duration::from_secs(30),
        "two lines from agent A",
        || async {
            let log = client
                .logs(&job.id, Some(hodei_core::LogStream::Stdout))
                .await
                .ok()?;
            log.starts_with(b"swept-1\nswept-2\n").then_some(())
        },
    )
    .await;

    // Replica 0 and agent A die together.
    let killed = Instant::now();
    servers[0].kill();
    agent_a.kill();
    // Agent B, which may run it, attaches to replica 1.
    let _agent_b = AgentProc::start(
        &servers[1].url,
        "sweep-b",
        &work.path().join("b"),
        &["--labels", "a"],
    );
    // Replica 1 sweeps replica 0 once its lease expired (10 s), waits out
    // the worker's grace (3 s), and retries the attempt on agent B.
    let done = wait_for(Duration::from_secs(90), "the job to finish", || async {
        let j = client.job(&job.id).await.ok()?;
        j.state.is_terminal().then_some(j)
    })
    .await;
    println!("retried and finished {:?} after the kill", killed.elapsed());
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.reason);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.worker.as_deref(), Some("sweep-b"));
    let lost = client
        .attempt_logs(&job.id, Some(hodei_core::LogStream::Stdout), Some(1))
        .await
        .expect("attempt 1 log");
    assert!(
        lost.starts_with(b"swept-1\nswept-2\n"),
        "the first attempt's log is kept: {:?}",
        String::from_utf8_lossy(&lost)
    );
}
