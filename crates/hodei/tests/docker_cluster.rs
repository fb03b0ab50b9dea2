//! Multi-host end to end: the orchestrator and three agents, each in its own
//! container (the image holds the `hodei` binary under test) on a private
//! Docker network this test creates. The test talks to the orchestrator
//! through a port published on 127.0.0.1; agents reach it by its container
//! name. Jobs are process jobs run inside the agents' containers.
//!
//! - 100 jobs across the three agents.
//! - An agent container killed mid-job (the host is gone): after the lease
//!   grace its job without retries is `lost`, its job with a retry runs
//!   again on another agent; the container started again rejoins.
//! - An agent disconnected from the network (`docker network disconnect`)
//!   and connected again: after a short cut its job simply continues; after
//!   one longer than the grace its jobs are declared lost (or moved), and
//!   its stale attempts are fenced off and killed when it is back.
//!
//! Every name is unique per run; networks and containers are removed when
//! the test ends, failing or not. The tests take the machine one at a time.

mod common;
mod docker_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Client, admin_token, http, join_token, wait_for};
use docker_support::*;
use futures::future::join_all;
use hodei_core::api::SubmitRequest;
use hodei_core::{Job, JobState, LogStream};
use tokio::sync::Mutex;

/// The lease grace of the clustered orchestrator.
const GRACE: Duration = Duration::from_secs(3);
/// The lease grace in the partition test: a 1 s cut plus TCP's
/// retransmission backoff must stay well below it.
const NET_GRACE: Duration = Duration::from_secs(5);
/// The bound on anything a test waits for, unless it says otherwise.
const DEADLINE: Duration = Duration::from_secs(60);

/// One cluster at a time: the machine has two cores.
static MACHINE: Mutex<()> = Mutex::const_new(());

/// An orchestrator and agents, each in a container, on a network of their own.
struct DockerCluster {
    net: String,
    server: String,
    agents: Vec<String>,
    client: Client,
    /// Drops last: removes the containers, then the network.
    _cleanup: DockerCleanup,
}

impl DockerCluster {
    async fn start(prefix: &str, agents: usize, grace: Duration) -> DockerCluster {
        let image = tokio::task::spawn_blocking(hodei_image)
            .await
            .expect("build the hodei image");
        let cleanup = DockerCleanup::default();
        let net = unique(&format!("{prefix}-net"));
        cleanup.network(&net);
        docker_async_ok(&["network", "create", &net]).await;
        let server = unique(&format!("{prefix}-srv"));
        cleanup.container(&server);
        let grace = format!("{}ms", grace.as_millis());
        docker_async_ok(&[
            "run",
            "-d",
            "--name",
            &server,
            "--hostname",
            &server,
            "--network",
            &net,
            "-p",
            "127.0.0.1::50051",
            "-e",
            "HODEI_LOG=warn",
            "-e",
            &format!("HODEI_BOOTSTRAP_ADMIN_TOKEN={}", admin_token()),
            "-e",
            &format!("HODEI_BOOTSTRAP_JOIN_TOKEN={}", join_token()),
            image,
            "hodei",
            "server",
            "--listen",
            "0.0.0.0:50051",
            "--data-dir",
            "/data",
            "--lease-grace",
            &grace,
            "--heartbeat-interval",
            "500ms",
        ])
        .await;
        let port = docker_async_ok(&["port", &server, "50051/tcp"]).await;
        let addr = port
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no loopback port published: {port:?}"))
            .to_string();
        let url = format!("http://{addr}");
        let client = Client::new(&url)
            .expect("client")
            .with_token(Some(admin_token().to_string()));
        let server_url = format!("http://{server}:50051");
        let mut names = Vec::new();
        for i in 1..=agents {
            let name = unique(&format!("{prefix}-a{i}"));
            cleanup.container(&name);
            let labels = format!("cluster,{name}");
            docker_async_ok(&[
                "run",
                "-d",
                "--name",
                &name,
                "--hostname",
                &name,
                "--network",
                &net,
                "-e",
                "HODEI_LOG=warn",
                "-e",
                &format!("HODEI_JOIN_TOKEN={}", join_token()),
                image,
                "hodei",
                "agent",
                "--server",
                &server_url,
                "--name",
                &name,
                "--labels",
                &labels,
                "--slots",
                "4",
                "--work-dir",
                "/work",
                "--no-docker",
            ])
            .await;
            names.push(name);
        }
        let cluster = DockerCluster {
            net,
            server,
            agents: names,
            client,
            _cleanup: cleanup,
        };
        cluster.wait_ready(agents, DEADLINE).await;
        cluster
    }

    /// Waits until `n` agents are `ready`.
    async fn wait_ready(&self, n: usize, timeout: Duration) {
        wait_for(timeout, &format!("{n} agents ready"), || async {
            let workers = self.client.workers().await.ok()?;
            (workers.iter().filter(|w| w.state == "ready").count() >= n).then_some(())
        })
        .await
    }

    async fn worker_state(&self, name: &str) -> Option<String> {
        let workers = self.client.workers().await.ok()?;
        workers.into_iter().find(|w| w.id == name).map(|w| w.state)
    }

    /// The job's command lines still running in agent `name`'s container.
    async fn job_processes(&self, name: &str, marker: &str) -> usize {
        let out = docker_async(&["exec", name, "ps", "-o", "args"]).await;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(marker))
            .count()
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in std::iter::once(&self.server).chain(&self.agents) {
                let out = docker(&["logs", "--tail", "30", name]);
                eprintln!(
                    "--- {name} (last lines) ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // `cleanup` drops next and removes the containers and the network.
    }
}

fn sh_job(id: &str, script: &str, retries: u32, labels: &[&str]) -> SubmitRequest {
    SubmitRequest {
        id: Some(id.to_string()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        max_retries: retries,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        ..SubmitRequest::default()
    }
}

async fn finished(client: &Client, id: &str, timeout: Duration) -> Job {
    wait_for(timeout, &format!("job {id} to finish"), || async move {
        client.job(id).await.ok().filter(|j| j.state.is_terminal())
    })
    .await
}

async fn running(client: &Client, id: &str) -> Job {
    wait_for(DEADLINE, &format!("job {id} to run"), || async move {
        client
            .job(id)
            .await
            .ok()
            .filter(|j| j.state == JobState::Running)
    })
    .await
}

async fn stdout_of(client: &Client, id: &str) -> String {
    let log = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
    String::from_utf8_lossy(&log).into_owned()
}

/// The stored stdout of one attempt (the client reads only the current one).
async fn attempt_stdout(client: &Client, id: &str, attempt: u32) -> String {
    let url = format!(
        "{}/api/v1/jobs/{id}/logs?stream=stdout&attempt={attempt}",
        client.base_url()
    );
    let resp = http().get(&url).send().await.expect("GET attempt log");
    String::from_utf8_lossy(&resp.bytes().await.expect("body")).into_owned()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_run_across_three_agent_containers() {
    if !docker_tests_enabled() {
        return;
    }
    let _machine = MACHINE.lock().await;
    let setup = Instant::now();
    let cluster = DockerCluster::start("hc100", 3, GRACE).await;
    let setup = setup.elapsed();
    let client = &cluster.client;

    let ids: Vec<String> = (0..100).map(|i| unique(&format!("j{i:03}"))).collect();
    let started = Instant::now();
    let script = "echo \"$HODEI_JOB_ID on $(hostname)\"; i=1; \
                  while [ $i -le 20 ]; do echo line-$i; i=$((i+1)); done; echo done >&2";
    let requests: Vec<SubmitRequest> = ids.iter().map(|id| sh_job(id, script, 0, &[])).collect();
    let submitted = join_all(requests.iter().map(|r| client.submit(r))).await;
    for s in submitted {
        s.expect("submit");
    }
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let job = finished(client, id, DEADLINE).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        let worker = job.worker.clone().unwrap_or_default();
        let want: String = std::iter::once(format!("{id} on {worker}\n"))
            .chain((1..=20).map(|i| format!("line-{i}\n")))
            .collect();
        assert_eq!(stdout_of(client, id).await, want, "job {id}");
        *per_agent.entry(worker).or_default() += 1;
    }
    let took = started.elapsed();
    assert_eq!(per_agent.len(), 3, "every agent ran jobs: {per_agent:?}");
    for name in &cluster.agents {
        assert!(
            per_agent.contains_key(name),
            "{name} ran none: {per_agent:?}"
        );
    }
    println!(
        "[cluster] 3 agent containers + orchestrator up in {}; 100 jobs done in {} ({:.0} jobs/s), per agent {:?}",
        secs(setup),
        secs(took),
        100.0 / took.as_secs_f64(),
        per_agent.values().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_container_loses_its_job_or_hands_it_to_another() {
    if !docker_tests_enabled() {
        return;
    }
    let _machine = MACHINE.lock().await;
    let cluster = DockerCluster::start("hckill", 3, GRACE).await;
    let client = &cluster.client;

    // A job with a retry; then one without, pinned to the same agent.
    let moved = unique("moved");
    let script = "echo \"a$HODEI_ATTEMPT start\"; [ \"$HODEI_ATTEMPT\" = 1 ] && sleep 600; \
                  echo \"a$HODEI_ATTEMPT done\"";
    client
        .submit(&sh_job(&moved, script, 1, &[]))
        .await
        .expect("submit");
    let victim = running(client, &moved).await.worker.expect("worker");
    let lost = unique("lost");
    client
        .submit(&sh_job(&lost, "echo start; sleep 600", 0, &[&victim]))
        .await
        .expect("submit");
    running(client, &lost).await;
    wait_for(DEADLINE, "the first output", || async {
        (stdout_of(client, &lost).await == "start\n").then_some(())
    })
    .await;

    docker_async_ok(&["kill", &victim]).await;
    let killed = Instant::now();
    let job = finished(client, &lost, DEADLINE).await;
    let detection = killed.elapsed();
    assert_eq!((job.state, job.attempt), (JobState::Lost, 1), "{job:?}");
    assert!(
        detection >= GRACE - Duration::from_millis(300),
        "lost after {detection:?}, before the grace {GRACE:?}"
    );
    assert_eq!(stdout_of(client, &lost).await, "start\n", "its log is kept");

    let job = finished(client, &moved, DEADLINE).await;
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Succeeded, 2),
        "{job:?}"
    );
    assert_ne!(job.worker.as_deref(), Some(victim.as_str()));
    assert_eq!(stdout_of(client, &moved).await, "a2 start\na2 done\n");
    assert_eq!(attempt_stdout(client, &moved, 1).await, "a1 start\n");
    let moved_after = killed.elapsed();

    // The container starts again: the agent recovers its spool, drops the
    // attempts it was running, and rejoins.
    docker_async_ok(&["start", &victim]).await;
    let restarted = Instant::now();
    wait_for(DEADLINE, "the restarted agent to be ready", || async {
        (cluster.worker_state(&victim).await.as_deref() == Some("ready")).then_some(())
    })
    .await;
    let rejoined = restarted.elapsed();
    let job = client.job(&lost).await.expect("job");
    assert_eq!(job.state, JobState::Lost, "{job:?}");
    println!(
        "[cluster] agent container killed: its job lost after {} (grace {}), \
         the job with a retry done on another agent {} after the kill; \
         the restarted container rejoined in {}",
        secs(detection),
        secs(GRACE),
        secs(moved_after),
        secs(rejoined)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_continues_after_a_short_cut_and_is_fenced_after_a_long_one() {
    if !docker_tests_enabled() {
        return;
    }
    let _machine = MACHINE.lock().await;
    let cluster = DockerCluster::start("hcnet", 3, NET_GRACE).await;
    let client = &cluster.client;
    let agent = cluster.agents[0].clone();
    let net = cluster.net.clone();

    // Short: a job printing for 4 s; its agent is cut off for 1 s.
    let short = unique("short");
    let script = "i=1; while [ $i -le 40 ]; do echo line-$i; i=$((i+1)); sleep 0.1; done";
    client
        .submit(&sh_job(&short, script, 0, &[&agent]))
        .await
        .expect("submit");
    wait_for(DEADLINE, "some output", || async {
        (stdout_of(client, &short).await.lines().count() >= 5).then_some(())
    })
    .await;
    docker_async_ok(&["network", "disconnect", &net, &agent]).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the partition itself
    docker_async_ok(&["network", "connect", &net, &agent]).await;
    let job = finished(client, &short, DEADLINE).await;
    assert_eq!(
        (job.state, job.attempt, job.worker.as_deref()),
        (JobState::Succeeded, 1, Some(agent.as_str())),
        "{job:?}"
    );
    let want: String = (1..=40).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(
        stdout_of(client, &short).await,
        want,
        "complete, in order, once"
    );

    // Long: two jobs on the agent, one with a retry; the cut outlasts the grace.
    let moved = unique("moved");
    let script = "echo \"a$HODEI_ATTEMPT\"; [ \"$HODEI_ATTEMPT\" = 1 ] && sleep 601; echo done";
    let lost = unique("lost");
    client
        .submit(&sh_job(&moved, script, 1, &[]))
        .await
        .expect("submit");
    client
        .submit(&sh_job(&lost, "echo start; sleep 602", 0, &[&agent]))
        .await
        .expect("submit");
    // `moved` may land on any agent; the test needs it on the cut one.
    let first = running(client, &moved).await;
    let cut_agent = first.worker.clone().expect("worker");
    running(client, &lost).await;
    let hold = NET_GRACE + Duration::from_secs(3);
    let mut cut = vec![agent.clone()];
    if cut_agent != agent {
        cut.push(cut_agent.clone());
    }
    for name in &cut {
        docker_async_ok(&["network", "disconnect", &net, name]).await;
    }
    let cut_at = Instant::now();
    let job = finished(client, &lost, NET_GRACE + DEADLINE).await;
    let detection = cut_at.elapsed();
    assert_eq!((job.state, job.attempt), (JobState::Lost, 1), "{job:?}");
    assert!(
        detection >= NET_GRACE - Duration::from_millis(300),
        "{detection:?}"
    );
    let job = finished(client, &moved, DEADLINE).await;
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Succeeded, 2),
        "{job:?}"
    );
    assert!(
        !cut.contains(&job.worker.clone().unwrap_or_default()),
        "{job:?}"
    );
    assert_eq!(stdout_of(client, &moved).await, "a2\ndone\n");
    let first_log = attempt_stdout(client, &moved, 1).await;
    let remaining = hold.saturating_sub(cut_at.elapsed());
    tokio::time::sleep(remaining).await; // the partition lasts `hold`
    for name in &cut {
        docker_async_ok(&["network", "connect", &net, name]).await;
    }
    let healed = Instant::now();

    // Back: the stale attempts are fenced off and killed; the agents rejoin.
    for name in &cut {
        wait_for(DEADLINE, "the stale attempts to be killed", || async {
            (cluster.job_processes(name, "sleep 60").await == 0).then_some(())
        })
        .await;
    }
    let fenced = healed.elapsed();
    cluster.wait_ready(3, DEADLINE).await;
    let job = client.job(&lost).await.expect("job");
    assert_eq!(job.state, JobState::Lost, "stays lost: {job:?}");
    let job = client.job(&moved).await.expect("job");
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Succeeded, 2),
        "{job:?}"
    );
    assert_eq!(
        attempt_stdout(client, &moved, 1).await,
        first_log,
        "nothing of the stale attempt was stored after the loss"
    );
    println!(
        "[cluster] 1 s cut: the job continued on its agent (40/40 lines once); \
         {} cut (grace {}): jobs lost/moved after {}, stale attempts killed {} after reconnecting",
        secs(hold),
        secs(NET_GRACE),
        secs(detection),
        secs(fenced)
    );
}
