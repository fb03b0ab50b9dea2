//! Image jobs end to end: real `hodei server` and `hodei agent` processes on
//! this machine, the agents running containers on the real Docker engine.
//!
//! - Only agents that reach the engine get image jobs; `hodei run` flags
//!   for limits and the pull policy; an OOM kill as the API and the CLI
//!   report it.
//! - An agent killed while its containers run removes them when it starts
//!   again, and their jobs end per the fault-tolerance rules.

mod common;
mod docker_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use docker_support::*;
use hodei_core::api::SubmitRequest;
use hodei_core::{Job, JobState, LogStream};

/// Server flags: lease grace 3 s, heartbeats every 500 ms.
const FAST: [&str; 4] = ["--lease-grace", "3s", "--heartbeat-interval", "500ms"];
/// The bound on anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

fn image_job(id: &str, script: &str, retries: u32) -> SubmitRequest {
    SubmitRequest {
        id: Some(id.to_string()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        image: Some(BUSYBOX_IMAGE.to_string()),
        max_retries: retries,
        ..SubmitRequest::default()
    }
}

/// Kills (and reaps) the child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn finished(client: &Client, id: &str) -> Job {
    wait_for(DEADLINE, &format!("job {id} to finish"), || async move {
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

/// `hodei run --server URL ARGS`: (exit code, stdout, stderr).
async fn hodei_run(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = hodei();
    cmd.args(["run", "--server", url])
        .args(args)
        .env_remove("HODEI_LOG")
        .env_remove("HODEI_SERVER")
        .stdin(Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("hodei run did not exit in time")
        .expect("hodei run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_jobs_go_only_to_agents_that_reach_docker() {
    if !docker_tests_enabled() {
        return;
    }
    tokio::task::spawn_blocking(busybox_image)
        .await
        .expect("busybox image");
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &FAST);
    let client = server.client();
    let (plain, docked) = (unique("plain"), unique("docked"));
    let _containers = AgentContainers(docked.clone());
    // It asks for `docker` but cannot reach an engine: it must not say so.
    let _plain = AgentProc::start(
        &server.url,
        &plain,
        &dir.path().join("work-plain"),
        &[
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--labels",
            "docker,linux",
        ],
    );
    // DOCKER_HOST names an engine that is not there.
    let via_env = unique("via-env");
    let _via_env = KillOnDrop(
        hodei()
            .args([
                "agent",
                "--server",
                &server.url,
                "--name",
                &via_env,
                "--work-dir",
            ])
            .arg(dir.path().join("work-env"))
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env("HODEI_LOG", test_log_level())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn hodei agent"),
    );
    let mut docked_agent = AgentProc::start(
        &server.url,
        &docked,
        &dir.path().join("work-docked"),
        &["--labels", "linux", "--slots", "4"],
    );
    wait_workers_ready(&client, 3).await;
    let workers = client.workers().await.expect("workers");
    let labels = |name: &str| {
        workers
            .iter()
            .find(|w| w.id == name)
            .map(|w| w.labels.clone())
            .unwrap_or_default()
    };
    assert_eq!(labels(&plain), vec!["linux".to_string()]);
    assert!(labels(&via_env).is_empty(), "{workers:?}");
    assert!(
        labels(&docked).contains(&"docker".to_string()),
        "{workers:?}"
    );

    // Image jobs: all on the agent with Docker.
    let ids: Vec<String> = (0..8).map(|i| unique(&format!("img{i}"))).collect();
    for id in &ids {
        client
            .submit(&image_job(id, "echo \"$HODEI_JOB_ID\"; echo err >&2", 0))
            .await
            .expect("submit");
    }
    for id in &ids {
        let job = finished(&client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.worker.as_deref(), Some(docked.as_str()));
        let out = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
        assert_eq!(String::from_utf8_lossy(&out), format!("{id}\n"));
        let err = client.logs(id, Some(LogStream::Stderr)).await.expect("log");
        assert_eq!(String::from_utf8_lossy(&err), "err\n");
    }

    // The CLI: limits, the pull policy, exit codes, the OOM killer.
    let id = unique("cli-oom");
    let (code, out, err) = hodei_run(
        &server.url,
        &[
            "--id",
            &id,
            "--image",
            BUSYBOX_IMAGE,
            "--memory",
            "32M",
            "--cpu",
            "500m",
            "--",
            "sh",
            "-c",
            "echo start; tail /dev/zero",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (137, "start\n"), "stderr: {err}");
    assert!(
        err.contains("out of memory") && err.contains("32 MiB"),
        "{err}"
    );
    let job = client.job(&id).await.expect("job");
    assert_eq!((job.state, job.exit_code), (JobState::Failed, Some(137)));
    let reason = job.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("out of memory") && reason.contains("32 MiB"),
        "{reason}"
    );
    assert_eq!(
        (job.spec.memory_bytes, job.spec.cpu_millicores),
        (Some(32 << 20), Some(500))
    );

    let (code, _, err) = hodei_run(
        &server.url,
        &[
            "--image",
            BUSYBOX_IMAGE,
            "--pull",
            "never",
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    )
    .await;
    assert_eq!(code, 7, "{err}");
    let (code, _, err) = hodei_run(
        &server.url,
        &[
            "--image",
            "hodei-test/not-here:1",
            "--pull",
            "never",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("not on this worker"), "{err}");
    let (code, _, err) = hodei_run(&server.url, &["--memory", "32M", "--", "true"]).await;
    assert_eq!(code, 2, "limits without an image are refused: {err}");

    // Without the Docker agent, image jobs wait; the other agent takes
    // only the process job.
    docked_agent
        .drain(DEADLINE)
        .expect("the docker agent drains");
    let waiting = unique("waiting");
    client
        .submit(&image_job(&waiting, "true", 0))
        .await
        .expect("submit");
    let plain_job = unique("plain-job");
    client
        .submit(&SubmitRequest {
            id: Some(plain_job.clone()),
            command: vec!["true".into()],
            ..SubmitRequest::default()
        })
        .await
        .expect("submit");
    let job = finished(&client, &plain_job).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_ne!(job.worker.as_deref(), Some(docked.as_str()));
    // The image job was queued before the process job and could have been
    // placed in the same batch; give the scheduler one more second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let job = client.job(&waiting).await.expect("job");
    assert_eq!((job.state, job.attempt), (JobState::Queued, 0), "{job:?}");
    client.cancel(&waiting).await.expect("cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_removes_the_containers_it_left() {
    if !docker_tests_enabled() {
        return;
    }
    tokio::task::spawn_blocking(busybox_image)
        .await
        .expect("busybox image");
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &FAST);
    let client = server.client();
    let name = unique("crashy");
    let _containers = AgentContainers(name.clone());
    let work = dir.path().join("work");
    let mut agent = AgentProc::start(&server.url, &name, &work, &["--slots", "2"]);
    wait_workers_ready(&client, 1).await;

    // One job without retries, one with a retry that finishes on attempt 2.
    let (once, twice) = (unique("once"), unique("twice"));
    client
        .submit(&image_job(&once, "echo up; sleep 600", 0))
        .await
        .expect("submit");
    let script = "echo \"a$HODEI_ATTEMPT\"; [ \"$HODEI_ATTEMPT\" = 1 ] && sleep 600; echo done";
    client
        .submit(&image_job(&twice, script, 1))
        .await
        .expect("submit");
    for id in [&once, &twice] {
        running(&client, id).await;
    }
    let first_attempts = |id: &str| vec![format!("hodei.job={id}"), "hodei.attempt=1".to_string()];
    for id in [&once, &twice] {
        let labels = first_attempts(id);
        wait_for(DEADLINE, "the job's container", || async {
            (!containers_with(&labels).await.is_empty()).then_some(())
        })
        .await;
    }

    // A crash: the containers outlive the agent.
    agent.kill();
    let left = containers_with(&[format!("hodei.agent={name}")]).await;
    assert_eq!(left.len(), 2, "both containers still there: {left:?}");

    let restarted = Instant::now();
    let _agent = AgentProc::start(&server.url, &name, &work, &["--slots", "2"]);
    for id in [&once, &twice] {
        let labels = first_attempts(id);
        wait_for(DEADLINE, "the left containers to be removed", || async {
            containers_with(&labels).await.is_empty().then_some(())
        })
        .await;
    }
    let removed_after = restarted.elapsed();

    let job = finished(&client, &once).await;
    assert_eq!((job.state, job.attempt), (JobState::Lost, 1), "{job:?}");
    let job = finished(&client, &twice).await;
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Succeeded, 2),
        "{job:?}"
    );
    let out = client
        .logs(&twice, Some(LogStream::Stdout))
        .await
        .expect("log");
    assert_eq!(String::from_utf8_lossy(&out), "a2\ndone\n");
    wait_for(DEADLINE, "no container of the agent", || async {
        containers_with(&[format!("hodei.agent={name}")])
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    println!(
        "[docker] restarted agent removed the 2 containers it left {:.2} s after starting; \
         the job without retries is lost, the one with a retry succeeded on attempt 2",
        removed_after.as_secs_f64()
    );
}
