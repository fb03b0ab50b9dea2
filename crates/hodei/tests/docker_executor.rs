//! The agent's Docker executor against the real engine: exit codes, the two
//! output streams, the workspace, cancel, timeout, limits and the OOM
//! killer, missing images and commands, and the cleanup of containers.
//!
//! Each test uses its own agent name and job ids, so the containers it
//! makes are found by label and removed even when it fails.

mod docker_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_support::*;
use hodei_agent::docker::{DockerConfig, DockerExecutor, LABEL_AGENT, LABEL_JOB};
use hodei_agent::executor::{ContainerSpec, ExecSpec, Executor, OnStart, OutputChunk};
use hodei_core::spec::PullPolicy;
use hodei_core::{LogStream, Outcome};
use tokio::sync::{mpsc, watch};

/// Upper bound for anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

/// An executor for a fresh agent name; its containers are removed when the
/// returned guard drops.
async fn executor(config: DockerConfig) -> (Arc<DockerExecutor>, String, AgentContainers) {
    tokio::task::spawn_blocking(busybox_image)
        .await
        .expect("build the busybox image");
    let agent = unique("exec");
    let exec = DockerExecutor::connect(config, &agent)
        .await
        .expect("connect to the Docker engine");
    (Arc::new(exec), agent.clone(), AgentContainers(agent))
}

fn spec(job: &str, argv: &[&str], dir: &Path) -> ExecSpec {
    ExecSpec {
        job_id: job.to_string(),
        attempt: 1,
        command: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        working_dir: dir.to_path_buf(),
        timeout: None,
        kill_grace: Duration::from_secs(5),
        on_start: OnStart::default(),
        container: Some(ContainerSpec {
            image: BUSYBOX_IMAGE.to_string(),
            ..ContainerSpec::default()
        }),
    }
}

fn sh(job: &str, script: &str, dir: &Path) -> ExecSpec {
    spec(job, &["sh", "-c", script], dir)
}

#[derive(Default, Debug)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn collect(mut rx: mpsc::Receiver<OutputChunk>) -> tokio::task::JoinHandle<Collected> {
    tokio::spawn(async move {
        let mut c = Collected::default();
        while let Some(chunk) = rx.recv().await {
            match chunk.stream {
                LogStream::Stdout => c.stdout.extend_from_slice(&chunk.data),
                LogStream::Stderr => c.stderr.extend_from_slice(&chunk.data),
            }
        }
        c
    })
}

/// Runs `spec` to its end, never cancelled.
async fn run(exec: &Arc<DockerExecutor>, spec: ExecSpec) -> (Outcome, Collected) {
    let (tx, rx) = mpsc::channel(64);
    let collector = collect(rx);
    let (_cancel_tx, cancel) = watch::channel(false);
    let outcome = tokio::time::timeout(DEADLINE, exec.run(spec, tx, cancel))
        .await
        .expect("the container job did not end in time");
    (outcome, collector.await.expect("collector"))
}

async fn containers_of_job(job: &str) -> Vec<String> {
    containers_labelled(LABEL_JOB, job).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_streams_env_and_workspace() {
    if !docker_tests_enabled() {
        return;
    }
    let (exec, _agent, _guard) = executor(DockerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Two streams, interleaved, kept apart and complete; the exit code.
    let job = unique("streams");
    let script = "i=1; while [ $i -le 3000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; \
                  printf tail-no-newline; exit 3";
    let (outcome, out) = run(&exec, sh(&job, script, dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 3 });
    let want_out: String = (1..=3000).map(|i| format!("out-{i}\n")).collect();
    let want_err: String = (1..=3000).map(|i| format!("err-{i}\n")).collect();
    assert_eq!(text(&out.stdout), format!("{want_out}tail-no-newline"));
    assert_eq!(text(&out.stderr), want_err);
    assert!(
        containers_of_job(&job).await.is_empty(),
        "container removed"
    );

    // Success, the job's environment, and the per-job directory as the
    // working directory.
    let job = unique("env");
    let mut s = sh(
        &job,
        "echo \"$GREETING $HODEI_JOB_ID $HODEI_ATTEMPT $(pwd)\"; echo made > result.txt",
        dir.path(),
    );
    s.env.insert("GREETING".into(), "hello".into());
    let (outcome, out) = run(&exec, s).await;
    assert_eq!(
        outcome,
        Outcome::Exited { code: 0 },
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), format!("hello {job} 1 /workspace\n"));
    let made = std::fs::read_to_string(dir.path().join("result.txt")).expect("result file");
    assert_eq!(made, "made\n");

    // A working directory inside the container.
    let job = unique("cwd");
    let mut s = sh(&job, "pwd", dir.path());
    if let Some(c) = s.container.as_mut() {
        c.working_dir = Some("/tmp".into());
    }
    let (outcome, out) = run(&exec, s).await;
    assert_eq!(
        (outcome, text(&out.stdout)),
        (Outcome::Exited { code: 0 }, "/tmp\n".into())
    );

    // The pid reported at start is the container's process on this host.
    let job = unique("pid");
    let mut s = spec(&job, &["sleep", "0.2"], dir.path());
    let (pid_tx, mut pid_rx) = mpsc::unbounded_channel();
    s.on_start = OnStart::new(move |pid| {
        let _ = pid_tx.send(pid);
    });
    let (outcome, _) = run(&exec, s).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    let pid = pid_rx.try_recv().expect("on_start was called");
    assert!(pid > 1, "pid {pid}");

    // Start overhead: a container that does nothing, from job to result.
    let n = 10;
    let started = Instant::now();
    for i in 0..n {
        let job = unique(&format!("true{i}"));
        let (outcome, _) = run(&exec, spec(&job, &["true"], dir.path())).await;
        assert_eq!(outcome, Outcome::Exited { code: 0 });
    }
    let per_job = started.elapsed() / n;
    println!(
        "[docker] container job overhead (create, attach, start, wait, inspect, remove): {:.0} ms per job over {n} jobs",
        per_job.as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_with_the_grace_then_kills_and_leaves_no_container() {
    if !docker_tests_enabled() {
        return;
    }
    let (exec, _agent, _guard) = executor(DockerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");

    for (ignores_term, grace) in [
        (false, Duration::from_secs(10)),
        (true, Duration::from_secs(1)),
    ] {
        let job = unique("cancel");
        let script = if ignores_term {
            "trap '' TERM; echo ready; while true; do sleep 1; done"
        } else {
            "echo ready; sleep 600"
        };
        let mut s = sh(&job, script, dir.path());
        s.kill_grace = grace;
        let (tx, mut rx) = mpsc::channel(64);
        let (cancel_tx, cancel) = watch::channel(false);
        let runner = exec.clone();
        let handle = tokio::spawn(async move { runner.run(s, tx, cancel).await });
        let first = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("output in time")
            .expect("some output");
        assert_eq!(text(&first.data), "ready\n");
        let asked = Instant::now();
        cancel_tx.send(true).expect("cancel");
        let outcome = tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("cancelled in time")
            .expect("join");
        let took = asked.elapsed();
        assert_eq!(outcome, Outcome::Cancelled);
        if ignores_term {
            assert!(
                took >= grace,
                "killed after {took:?}, before the grace {grace:?}"
            );
        } else {
            assert!(took < grace, "SIGTERM should end it at once, took {took:?}");
        }
        assert!(
            containers_of_job(&job).await.is_empty(),
            "no container left after cancel"
        );
        println!(
            "[docker] cancel ({}): ended after {:.0} ms (grace {grace:?})",
            if ignores_term {
                "SIGTERM ignored"
            } else {
                "SIGTERM"
            },
            took.as_secs_f64() * 1000.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_container() {
    if !docker_tests_enabled() {
        return;
    }
    let (exec, _agent, _guard) = executor(DockerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let job = unique("timeout");
    let mut s = sh(&job, "echo started; sleep 600", dir.path());
    s.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (outcome, out) = run(&exec, s).await;
    assert_eq!(outcome, Outcome::TimedOut);
    assert_eq!(text(&out.stdout), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(containers_of_job(&job).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_applied_and_the_oom_killer_is_reported() {
    if !docker_tests_enabled() {
        return;
    }
    let (exec, _agent, _guard) = executor(DockerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limit: u64 = 32 << 20;
    let with_limits = |job: &str, script: &str| {
        let mut s = sh(job, script, dir.path());
        if let Some(c) = s.container.as_mut() {
            c.memory_bytes = Some(limit);
            c.cpu_millicores = Some(500);
        }
        s
    };

    // The cgroup limits as the container sees them (v1 or v2).
    let job = unique("limits");
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                  cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max";
    let (outcome, out) = run(&exec, with_limits(&job, script)).await;
    assert_eq!(
        outcome,
        Outcome::Exited { code: 0 },
        "{}",
        text(&out.stderr)
    );
    let values: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(values, vec![limit.to_string(), "50000".to_string()]);

    // Within the limit: fine.
    let job = unique("fits");
    let (outcome, out) = run(
        &exec,
        with_limits(&job, "head -c 8000000 /dev/zero | tr '\\0' a | wc -c"),
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::Exited { code: 0 },
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "8000000");

    // Past it: `tail` keeps the endless line of /dev/zero in memory.
    let job = unique("oom");
    let started = Instant::now();
    let (outcome, out) = run(&exec, with_limits(&job, "echo before; tail /dev/zero")).await;
    assert_eq!(outcome, Outcome::OomKilled, "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("out of memory") && stderr.contains("32 MiB"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "before\n");
    assert!(containers_of_job(&job).await.is_empty());
    println!(
        "[docker] a job growing past 32 MiB was OOM-killed and reported after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A job that survives the kill of one of its processes and exits 0
    // succeeded; the log still says what happened.
    let job = unique("oom-survived");
    let (outcome, out) = run(&exec, with_limits(&job, "tail /dev/zero; echo after")).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(text(&out.stdout), "after\n");
    assert!(text(&out.stderr).contains("out of memory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_commands_fail_fast_with_a_message() {
    if !docker_tests_enabled() {
        return;
    }
    let (exec, _agent, _guard) = executor(DockerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let with_image = |job: &str, image: &str, policy: Option<PullPolicy>| {
        let mut s = spec(job, &["true"], dir.path());
        s.container = Some(ContainerSpec {
            image: image.to_string(),
            pull_policy: policy,
            ..ContainerSpec::default()
        });
        s
    };

    // Pull policy never: not pulled, not waited for.
    let job = unique("never");
    let started = Instant::now();
    let (outcome, out) = run(
        &exec,
        with_image(&job, "hodei-test/no-such-image:1", Some(PullPolicy::Never)),
    )
    .await;
    let Outcome::SpawnFailed { code, message } = &outcome else {
        panic!("expected a spawn failure, got {outcome:?}");
    };
    assert_eq!(*code, 125);
    assert!(message.contains("not on this worker"), "{message}");
    assert!(
        text(&out.stderr).contains("no-such-image"),
        "the log says why"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // if-not-present from a registry that does not exist (a closed port on
    // this machine): the pull fails, quickly.
    let job = unique("pull");
    let started = Instant::now();
    let (outcome, out) = run(
        &exec,
        with_image(&job, "127.0.0.1:9/hodei-test/no-such-image:1", None),
    )
    .await;
    let Outcome::SpawnFailed { code, message } = &outcome else {
        panic!("expected a spawn failure, got {outcome:?}");
    };
    assert_eq!(*code, 125);
    assert!(message.contains("cannot pull image"), "{message}");
    assert!(text(&out.stderr).contains("cannot pull image"));
    println!(
        "[docker] a failed pull ended the job after {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // A command the image does not have: 127, like `docker run`. With the
    // init process (the default) the init reports it and exits 127; without
    // it the engine refuses to start the container.
    for init in [true, false] {
        let (exec, _agent, _guard) = executor(DockerConfig {
            init,
            ..DockerConfig::default()
        })
        .await;
        let job = unique("nocmd");
        let (outcome, out) = run(&exec, spec(&job, &["no-such-command", "x"], dir.path())).await;
        let code = match &outcome {
            Outcome::SpawnFailed { code, .. } if !init => *code,
            Outcome::Exited { code } if init => *code,
            other => panic!("init {init}: unexpected {other:?}"),
        };
        assert_eq!(code, 127, "init {init}");
        assert!(
            text(&out.stderr).contains("no-such-command"),
            "init {init}: {}",
            text(&out.stderr)
        );
        assert!(containers_of_job(&job).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_left_behind_are_removed_and_a_dropped_job_takes_its_container() {
    if !docker_tests_enabled() {
        return;
    }
    let (exec, agent, _guard) = executor(DockerConfig::default()).await;
    let other = unique("other-agent");
    let _other_guard = AgentContainers(other.clone());
    let dir = tempfile::tempdir().expect("tempdir");

    // A job whose task is dropped midway (the agent stopping hard).
    let job = unique("dropped");
    let (tx, _rx) = mpsc::channel(64);
    let (_cancel_tx, cancel) = watch::channel(false);
    let runner = exec.clone();
    let s = sh(&job, "sleep 600", dir.path());
    let handle = tokio::spawn(async move { runner.run(s, tx, cancel).await });
    let id = eventually(DEADLINE, "the job's container", || async {
        containers_of_job(&job).await.into_iter().next()
    })
    .await;
    handle.abort();
    // By id: `docker ps` hides a container while its removal is under way.
    eventually(DEADLINE, "the dropped job's container to go", || async {
        let out = docker_async(&["inspect", "--format", "{{.Id}}", &id]).await;
        (!out.status.success()).then_some(())
    })
    .await;

    // Containers an earlier run of this agent left: one running, one
    // stopped; and one of another agent, which stays.
    let ours = format!("{LABEL_AGENT}={agent}");
    let theirs = format!("{LABEL_AGENT}={other}");
    for (label, cmd) in [(&ours, "600"), (&ours, "0"), (&theirs, "600")] {
        docker_async_ok(&[
            "run",
            "-d",
            "--label",
            label,
            "--label",
            "hodei.job=left",
            BUSYBOX_IMAGE,
            "sleep",
            cmd,
        ])
        .await;
    }
    let removed = exec.remove_leftovers().await.expect("remove leftovers");
    assert_eq!(removed, 2);
    assert!(containers_labelled(LABEL_AGENT, &agent).await.is_empty());
    assert_eq!(containers_labelled(LABEL_AGENT, &other).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_containers_stay_with_their_engine_log_and_labels() {
    if !docker_tests_enabled() {
        return;
    }
    let config = DockerConfig {
        keep_containers: true,
        ..DockerConfig::default()
    };
    let (exec, agent, _guard) = executor(config).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let job = unique("kept");
    let (outcome, _) = run(&exec, sh(&job, "echo kept-output; exit 4", dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 4 });
    let ids = containers_of_job(&job).await;
    assert_eq!(ids.len(), 1, "the container is kept");
    let labels = docker_async_ok(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"hodei.agent\"}} {{index .Config.Labels \"hodei.attempt\"}} {{.State.ExitCode}}",
        &ids[0],
    ])
    .await;
    assert_eq!(labels, format!("{agent} 1 4"));
    let logs = docker_async_ok(&["logs", &ids[0]]).await;
    assert_eq!(logs, "kept-output");
    // A restart keeps stopped containers too when containers are kept.
    assert_eq!(exec.remove_leftovers().await.expect("leftovers"), 0);
}
