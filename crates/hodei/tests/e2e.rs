//! End-to-end tests: real `hodei server` and `hodei agent` processes (see
//! `common`), driven through the `hodei` CLI the way users drive it, and
//! checked through the HTTP client.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use hodei_core::api::SubmitRequest;
use hodei_core::engine::WorkerInfo;
use hodei_core::{Job, JobState, LogStream};
use tempfile::TempDir;
use tokio::io::AsyncBufReadExt;

/// The bound on anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(45);

/// One server and its agents, in a temporary directory of their own.
/// Fields drop in order: agents, then the server, then the directory.
struct Cluster {
    agents: Vec<AgentProc>,
    server: ServerProc,
    client: Client,
    dir: TempDir,
}

impl Cluster {
    /// A server and one agent per `(name, extra agent flags)`, all attached.
    async fn start(agents: &[(&str, &[&str])]) -> Cluster {
        let dir = tempdir();
        let server = ServerProc::start(&dir.path().join("data"), &[]);
        let client = server.client();
        let agents: Vec<AgentProc> = agents
            .iter()
            .map(|(name, extra)| {
                let work = dir.path().join(format!("work-{name}"));
                AgentProc::start(&server.url, name, &work, extra)
            })
            .collect();
        wait_workers_ready(&client, agents.len()).await;
        Cluster {
            agents,
            server,
            client,
            dir,
        }
    }

    /// A new directory inside the test's temporary directory.
    fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }

    /// `hodei ARGS[0] --server URL ARGS[1..]`, run to completion.
    async fn cli(&self, args: &[&str]) -> Output {
        cli(&self.server.url, args).await
    }
}

/// The command `hodei ARGS[0] --server URL ARGS[1..]`, with no Hodei
/// settings inherited from the environment.
fn cli_command(url: &str, args: &[&str]) -> tokio::process::Command {
    let (sub, rest) = args.split_first().expect("a subcommand");
    let mut cmd = hodei();
    cmd.arg(sub)
        .args(["--server", url])
        .args(rest)
        .env_remove("HODEI_LOG")
        .env_remove("HODEI_SERVER")
        .stdin(Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `hodei ARGS[0] --server URL ARGS[1..]` to completion (within
/// [`DEADLINE`]) and returns its status and output.
async fn cli(url: &str, args: &[&str]) -> Output {
    let run = cli_command(url, args).output();
    tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("hodei {args:?} did not finish within {DEADLINE:?}"))
        .expect("run hodei")
}

/// Panics with the command's output unless it exited with `code`.
fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status {:?}, stdout {:?}, stderr {:?}",
        out.status,
        lossy_head(&out.stdout),
        lossy_head(&out.stderr),
    );
}

/// The start of some output, for messages.
fn lossy_head(data: &[u8]) -> String {
    String::from_utf8_lossy(&data[..data.len().min(2000)]).into_owned()
}

/// Byte equality that reports the lengths and the first difference instead
/// of dumping megabytes.
fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let around = |b: &[u8]| {
        let start = at.saturating_sub(40).min(b.len());
        let end = (at + 40).min(b.len());
        String::from_utf8_lossy(&b[start..end]).into_owned()
    };
    panic!(
        "{what}: got {} bytes, expected {}; first difference at byte {at}: \
         got …{:?}…, expected …{:?}…",
        got.len(),
        want.len(),
        around(got),
        around(want),
    );
}

/// Waits until the job is in a final state and returns it.
async fn finished(client: &Client, id: &str) -> Job {
    wait_for(DEADLINE, &format!("job {id} to finish"), || async move {
        client.job(id).await.ok().filter(|j| j.state.is_terminal())
    })
    .await
}

/// A pid written by a job into `path`, once the file is complete.
fn read_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.strip_suffix('\n')?.trim().parse().ok()
}

/// Waits until none of `pids` is alive.
async fn wait_gone(pids: &[i32], what: &str) {
    wait_for(DEADLINE, what, || async move {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    })
    .await;
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

// 1. Exit codes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_with_the_jobs_exit_code() {
    let c = Cluster::start(&[("codes", &["--slots", "6"])]).await;
    let bin = c.mkdir("bin");
    let script = bin.join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho this must not run\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = bin.to_str().unwrap();

    struct Case<'a> {
        id: &'static str,
        args: Vec<&'a str>,
        code: i32,
        state: JobState,
    }
    fn case<'a>(id: &'static str, args: &[&'a str], code: i32, state: JobState) -> Case<'a> {
        Case {
            id,
            args: args.to_vec(),
            code,
            state,
        }
    }
    let cases = [
        case(
            "code-0",
            &["--", "sh", "-c", "echo ok"],
            0,
            JobState::Succeeded,
        ),
        case("code-3", &["--", "sh", "-c", "exit 3"], 3, JobState::Failed),
        case(
            "code-127",
            &["--", "no-such-command-for-hodei-e2e", "arg"],
            127,
            JobState::Failed,
        ),
        case(
            "code-126",
            &["--workdir", bin, "--", "./script.sh"],
            126,
            JobState::Failed,
        ),
        case(
            "code-124",
            &["--timeout", "1s", "--", "sleep", "30"],
            124,
            JobState::TimedOut,
        ),
        case(
            "code-137",
            &["--", "sh", "-c", "kill -9 $$"],
            137,
            JobState::Failed,
        ),
    ];
    let runs = cases.iter().map(|k| {
        let mut args = vec!["run", "--id", k.id];
        args.extend(&k.args);
        let url = c.server.url.clone();
        async move { cli(&url, &args).await }
    });
    let outputs = join_all(runs).await;

    for (k, out) in cases.iter().zip(&outputs) {
        expect_code(out, k.code, k.id);
        let job = c.client.job(k.id).await.expect("get job");
        assert_eq!(job.state, k.state, "{}: {job:?}", k.id);
        let recorded = match k.state {
            JobState::TimedOut => None,
            _ => Some(k.code),
        };
        assert_eq!(job.exit_code, recorded, "{}: {job:?}", k.id);
    }
    let [ok, _, not_found, not_exec, timed_out, killed] = &outputs[..] else {
        unreachable!()
    };
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok\n");
    let err = String::from_utf8_lossy(&not_found.stderr);
    assert!(
        err.contains("no-such-command-for-hodei-e2e") && err.contains("not found"),
        "stderr of a missing command should say so: {err:?}"
    );
    let err = String::from_utf8_lossy(&not_exec.stderr);
    assert!(
        err.contains("script.sh") && err.contains("permission denied"),
        "stderr of a non-executable command should say so: {err:?}"
    );
    assert!(not_exec.stdout.is_empty());
    let err = String::from_utf8_lossy(&timed_out.stderr);
    assert!(err.contains("timed_out"), "{err:?}");
    assert!(killed.stdout.is_empty() && killed.stderr.is_empty());
    let job = c.client.job("code-137").await.unwrap();
    assert_eq!(job.signal, Some(9), "{job:?}");
}

// 2. Many lines, in order.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_in_order() {
    let c = Cluster::start(&[("lines", &[])]).await;
    let script = "i=1; e=1; while [ $i -le 100000 ]; do echo \"out $i\"; \
                  if [ $((i % 5)) -eq 0 ]; then echo \"err $e\" >&2; e=$((e+1)); fi; \
                  i=$((i+1)); done";
    let out = c
        .cli(&["run", "--id", "lines", "--", "sh", "-c", script])
        .await;
    expect_code(&out, 0, "hodei run");
    let want_out: String = (1..=100_000).map(|i| format!("out {i}\n")).collect();
    let want_err: String = (1..=20_000).map(|i| format!("err {i}\n")).collect();
    assert_bytes_eq("stdout of hodei run", &out.stdout, want_out.as_bytes());
    assert_bytes_eq("stderr of hodei run", &out.stderr, want_err.as_bytes());

    let stored_out = c.client.logs("lines", Some(LogStream::Stdout)).await;
    assert_bytes_eq("stored stdout", &stored_out.unwrap(), want_out.as_bytes());
    let stored_err = c.client.logs("lines", Some(LogStream::Stderr)).await;
    assert_bytes_eq("stored stderr", &stored_err.unwrap(), want_err.as_bytes());
    // Both streams merged: every byte of each, each stream still in order.
    let both = c.client.logs("lines", None).await.unwrap();
    assert_eq!(both.len(), want_out.len() + want_err.len());
    let (mut outs, mut errs) = (Vec::new(), Vec::new());
    for line in both.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"out ") {
            outs.extend_from_slice(line);
        } else {
            errs.extend_from_slice(line);
        }
    }
    assert_bytes_eq("stdout lines of the merged log", &outs, want_out.as_bytes());
    assert_bytes_eq("stderr lines of the merged log", &errs, want_err.as_bytes());
}

// 3. 50 MB.

/// `len` deterministic bytes that cover every byte value and never repeat
/// in a short period (xorshift64).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_arrive_byte_exact() {
    let c = Cluster::start(&[("big", &[])]).await;
    let want = pseudo_random(50 * 1024 * 1024);
    let file = c.dir.path().join("big.bin");
    std::fs::write(&file, &want).unwrap();
    let out = c
        .cli(&["run", "--id", "big", "--", "cat", file.to_str().unwrap()])
        .await;
    expect_code(&out, 0, "hodei run");
    assert_bytes_eq("stdout of hodei run", &out.stdout, &want);
    assert!(out.stderr.is_empty(), "{}", lossy_head(&out.stderr));

    let stored = c.client.logs("big", Some(LogStream::Stdout)).await.unwrap();
    assert_bytes_eq("stored stdout", &stored, &want);
    let both = c.client.logs("big", None).await.unwrap();
    assert_bytes_eq("stored log (both streams)", &both, &want);
}

// 4. Output that is not UTF-8.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_arrives_byte_exact() {
    let c = Cluster::start(&[("bytes", &[])]).await;
    let script = "printf '\\377\\376\\000abc\\n'; printf '\\300\\000\\377x' >&2";
    let out = c
        .cli(&["run", "--id", "bytes", "--", "sh", "-c", script])
        .await;
    expect_code(&out, 0, "hodei run");
    let want_out = b"\xff\xfe\x00abc\n";
    let want_err = b"\xc0\x00\xffx";
    assert_bytes_eq("stdout of hodei run", &out.stdout, want_out);
    assert_bytes_eq("stderr of hodei run", &out.stderr, want_err);
    let stored = c.client.logs("bytes", Some(LogStream::Stdout)).await;
    assert_bytes_eq("stored stdout", &stored.unwrap(), want_out);
    let stored = c.client.logs("bytes", Some(LogStream::Stderr)).await;
    assert_bytes_eq("stored stderr", &stored.unwrap(), want_err);
}

// 5. Cancel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_process_tree() {
    let c = Cluster::start(&[("cancel", &[])]).await;
    let work = c.mkdir("job");
    let script = "echo $$ > sh.pid; sleep 1000 & echo $! > gc.pid; echo started; wait";
    let out = c
        .cli(&[
            "run",
            "--detach",
            "--id",
            "tree",
            "--workdir",
            work.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .await;
    expect_code(&out, 0, "hodei run --detach");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tree\n");

    let client = &c.client;
    let (shell, grandchild) = wait_for(DEADLINE, "the job to start its grandchild", || {
        let work = work.clone();
        async move {
            let shell = read_pid(&work.join("sh.pid"))?;
            let grandchild = read_pid(&work.join("gc.pid"))?;
            let job = client.job("tree").await.ok()?;
            (job.state == JobState::Running).then_some((shell, grandchild))
        }
    })
    .await;
    assert!(alive(shell) && alive(grandchild));

    let out = c.cli(&["cancel", "tree"]).await;
    expect_code(&out, 0, "hodei cancel");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tree"));
    let job = finished(client, "tree").await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    wait_gone(&[shell, grandchild], "the shell and its grandchild to die").await;
    let log = client.logs("tree", Some(LogStream::Stdout)).await.unwrap();
    assert_eq!(&log[..], b"started\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_hodei_run_cancels_the_job() {
    let c = Cluster::start(&[("sigint", &[])]).await;
    let work = c.mkdir("job");
    let mut child = cli_command(
        &c.server.url,
        &[
            "run",
            "--id",
            "interrupted",
            "--workdir",
            work.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo $$ > job.pid; echo started; exec sleep 1000",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn hodei run");
    // Once the job's output is printed, `hodei run` is following it and
    // handles Ctrl-C.
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the job's first line in time")
        .expect("read hodei run's stdout");
    assert_eq!(first.as_deref(), Some("started"));
    let job_pid = read_pid(&work.join("job.pid")).expect("the job wrote its pid");

    signal(child.id().expect("hodei run's pid") as i32, 2);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("hodei run exits after SIGINT")
        .unwrap();
    expect_code(&out, 130, "hodei run after SIGINT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cancelling job interrupted"), "{err:?}");
    let job = c.client.job("interrupted").await.unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    wait_gone(&[job_pid], "the job's process to die").await;
}

// 6. Timeout with a process that ignores SIGTERM.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_a_process_that_ignores_sigterm() {
    let c = Cluster::start(&[("timeout", &[])]).await;
    let work = c.mkdir("job");
    let started = Instant::now();
    let out = c
        .cli(&[
            "run",
            "--id",
            "stubborn",
            "--timeout",
            "500ms",
            "--kill-grace",
            "300ms",
            "--workdir",
            work.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo $$ > job.pid; sleep 30",
        ])
        .await;
    let took = started.elapsed();
    expect_code(&out, 124, "hodei run --timeout");
    // The default grace is 10 s: finishing well before shows --kill-grace
    // was honoured.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let job = c.client.job("stubborn").await.unwrap();
    assert_eq!(job.state, JobState::TimedOut, "{job:?}");
    let pid = read_pid(&work.join("job.pid")).expect("the job wrote its pid");
    wait_gone(&[pid], "the job's process to die").await;
}

// 7. Labels.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_only_on_workers_with_their_labels() {
    let c = Cluster::start(&[
        ("red", &["--labels", "red", "--slots", "4"]),
        ("blue", &["--labels", "blue", "--slots", "4"]),
    ])
    .await;
    // Submitted first, so it is not merely waiting behind the others.
    let out = c
        .cli(&["run", "--detach", "--label", "green", "--", "true"])
        .await;
    expect_code(&out, 0, "hodei run --detach --label green");
    let green = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let submits = (0..20).map(|i| {
        let color = if i % 2 == 0 { "red" } else { "blue" };
        let url = c.server.url.clone();
        async move {
            let args = [
                "run",
                "--detach",
                "--label",
                color,
                "--",
                "sh",
                "-c",
                "echo $HODEI_JOB_ID",
            ];
            let out = cli(&url, &args).await;
            expect_code(&out, 0, "hodei run --detach --label");
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (color, id)
        }
    });
    let jobs = join_all(submits).await;
    for (color, id) in &jobs {
        let job = finished(&c.client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.worker.as_deref(), Some(*color), "{job:?}");
        let log = c.client.logs(id, Some(LogStream::Stdout)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&log), format!("{id}\n"));
    }
    let job = c.client.job(&green).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    assert_eq!(job.worker, None, "{job:?}");
    // Cancelling it ends it at once: no worker holds it.
    let out = c.cli(&["cancel", &green]).await;
    expect_code(&out, 0, "hodei cancel");
    let job = c.client.job(&green).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
}

// 8. Slots.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_at_most_its_slots_at_once() {
    let c = Cluster::start(&[("two", &["--slots", "2"])]).await;
    let work = c.mkdir("times");
    let script = "date +%s%N > $HODEI_JOB_ID.start; sleep 0.5; date +%s%N > $HODEI_JOB_ID.end";
    let mut ids = Vec::new();
    for i in 0..6 {
        let request = SubmitRequest {
            id: Some(format!("slot-{i}")),
            command: sh(script),
            working_dir: Some(work.to_str().unwrap().into()),
            ..SubmitRequest::default()
        };
        let submitted = c.client.submit(&request).await.expect("submit");
        assert!(submitted.created);
        ids.push(submitted.job.id);
    }
    let mut intervals = Vec::new();
    for id in &ids {
        let job = finished(&c.client, id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        let read = |ext: &str| -> u128 {
            let path = work.join(format!("{id}.{ext}"));
            let text = std::fs::read_to_string(&path).expect("time file");
            text.trim().parse().expect("a time in ns")
        };
        intervals.push((read("start"), read("end")));
    }
    // Sweep the starts and ends in time order.
    let mut events: Vec<(u128, i32)> = intervals
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    events.sort(); // An end (-1) sorts before a start (1) at the same instant.
    let (mut running, mut most) = (0, 0);
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 2, "{most} jobs ran at once: {intervals:?}");
    assert_eq!(most, 2, "the agent never used both slots: {intervals:?}");
}

// 9. Server restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_server_crash() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let expected_out = |i: usize| -> String {
        let mut s = format!("job {i}\n");
        s.extend((1..=2000).map(|n| format!("{n}\n")));
        s
    };
    let script = |i: usize| format!("echo job {i}; seq 1 2000; echo done {i} >&2");

    // Submitted while no agent is attached: they stay queued.
    let mut server = ServerProc::start(&data, &[]);
    let client = server.client();
    for i in 0..3 {
        let request = SubmitRequest {
            id: Some(format!("restart-{i}")),
            command: sh(&script(i)),
            ..SubmitRequest::default()
        };
        let submitted = client.submit(&request).await.expect("submit");
        assert_eq!(submitted.job.state, JobState::Queued);
    }
    server.kill();

    let mut server = ServerProc::start(&data, &[]);
    let client = server.client();
    for i in 0..3 {
        let job = client
            .job(&format!("restart-{i}"))
            .await
            .expect("job after restart");
        assert_eq!(job.state, JobState::Queued, "{job:?}");
    }
    let mut agent = AgentProc::start(&server.url, "late", &dir.path().join("work"), &[]);
    for i in 0..3 {
        let id = format!("restart-{i}");
        let job = finished(&client, &id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.worker.as_deref(), Some("late"));
        let out = client.logs(&id, Some(LogStream::Stdout)).await.unwrap();
        assert_bytes_eq(&id, &out, expected_out(i).as_bytes());
        let err = client.logs(&id, Some(LogStream::Stderr)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&err), format!("done {i}\n"));
    }

    // A job that finished before a crash keeps its result and its log.
    let out = cli(
        &server.url,
        &[
            "run",
            "--id",
            "done-before",
            "--",
            "sh",
            "-c",
            "seq 1 50000; echo bye >&2; exit 7",
        ],
    )
    .await;
    expect_code(&out, 7, "hodei run");
    let want: String = (1..=50_000).map(|n| format!("{n}\n")).collect();
    assert_bytes_eq("stdout of hodei run", &out.stdout, want.as_bytes());
    agent.kill();
    server.kill();

    let server = ServerProc::start(&data, &[]);
    let client = server.client();
    let job = client.job("done-before").await.expect("job after restart");
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(job.exit_code, Some(7), "{job:?}");
    let out = client.logs("done-before", Some(LogStream::Stdout)).await;
    assert_bytes_eq(
        "stored stdout after restart",
        &out.unwrap(),
        want.as_bytes(),
    );
    let err = client.logs("done-before", Some(LogStream::Stderr)).await;
    assert_eq!(&err.unwrap()[..], b"bye\n");
    for i in 0..3 {
        let id = format!("restart-{i}");
        let job = client.job(&id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        let out = client.logs(&id, Some(LogStream::Stdout)).await.unwrap();
        assert_bytes_eq(&id, &out, expected_out(i).as_bytes());
    }
    // `hodei job` through the CLI sees it too.
    let out = cli(&server.url, &["job", "done-before", "--json"]).await;
    expect_code(&out, 0, "hodei job --json");
    let job: Job = serde_json::from_slice(&out.stdout).expect("job JSON");
    assert_eq!((job.state, job.exit_code), (JobState::Failed, Some(7)));
}

// 10. Detach, then look at the job with the other commands.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_then_follow_and_query() {
    let c = Cluster::start(&[("solo", &["--labels", "x,y", "--slots", "3"])]).await;
    let out = c
        .cli(&[
            "run",
            "--detach",
            "--",
            "sh",
            "-c",
            "sleep 1; echo hello; echo oops >&2",
        ])
        .await;
    expect_code(&out, 0, "hodei run --detach");
    let printed = String::from_utf8(out.stdout).unwrap();
    let id = printed.trim().to_string();
    assert_eq!(printed, format!("{id}\n"), "only the id is printed");
    assert!(out.stderr.is_empty(), "{}", lossy_head(&out.stderr));
    // It returned before the job could have finished.
    let job = c.client.job(&id).await.expect("the printed id is a job");
    assert!(!job.state.is_terminal(), "{job:?}");

    let out = c.cli(&["logs", "-f", &id]).await;
    expect_code(&out, 0, "hodei logs -f");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    let out = c.cli(&["logs", &id]).await;
    expect_code(&out, 0, "hodei logs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    let out = c.cli(&["job", &id, "--json"]).await;
    expect_code(&out, 0, "hodei job --json");
    let job: Job = serde_json::from_slice(&out.stdout).expect("job JSON");
    assert_eq!(job.id, id);
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(job.worker.as_deref(), Some("solo"));

    let out = c.cli(&["jobs", "--state", "succeeded", "--json"]).await;
    expect_code(&out, 0, "hodei jobs --json");
    let jobs: Vec<Job> = serde_json::from_slice(&out.stdout).expect("jobs JSON");
    assert!(jobs.iter().any(|j| j.id == id), "{jobs:?}");
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
    let out = c.cli(&["jobs", "--state", "failed", "--json"]).await;
    let jobs: Vec<Job> = serde_json::from_slice(&out.stdout).expect("jobs JSON");
    assert!(jobs.is_empty(), "{jobs:?}");

    let out = c.cli(&["workers", "--json"]).await;
    expect_code(&out, 0, "hodei workers --json");
    let workers: Vec<WorkerInfo> = serde_json::from_slice(&out.stdout).expect("workers JSON");
    let solo = workers.iter().find(|w| w.id == "solo");
    let solo = solo.unwrap_or_else(|| panic!("agent not listed: {workers:?}"));
    assert_eq!(solo.slots, 3);
    // Plus `docker` where the agent reaches a Docker engine.
    let labels: Vec<&str> = solo
        .labels
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "docker")
        .collect();
    assert_eq!(labels, ["x", "y"]);
}

// 11. Resubmitting the same id.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_the_same_id_runs_the_job_once() {
    let c = Cluster::start(&[("once", &[])]).await;
    let work = c.mkdir("job");
    let run = [
        "run",
        "--id",
        "only-once",
        "--workdir",
        work.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo ran >> runs.txt; echo hi; exit 4",
    ];
    for attempt in 1..=3 {
        let out = c.cli(&run).await;
        expect_code(&out, 4, &format!("hodei run #{attempt}"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }
    let runs = std::fs::read_to_string(work.join("runs.txt")).unwrap();
    assert_eq!(runs, "ran\n", "the job ran more than once");
    let job = c.client.job("only-once").await.unwrap();
    assert_eq!(job.attempt, 1, "{job:?}");

    // The same id with another command is refused, and runs nothing.
    let mut other = run;
    other[8] = "echo ran >> runs.txt; echo other";
    let out = c.cli(&other).await;
    expect_code(&out, 2, "hodei run with a reused id");
    assert!(!out.stderr.is_empty());
    let runs = std::fs::read_to_string(work.join("runs.txt")).unwrap();
    assert_eq!(runs, "ran\n");
    // `Cluster` keeps the agents alive until here.
    assert_eq!(c.agents.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lists_by_name_prefix_and_label() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let client = server.client();
    // No agent: the jobs stay queued, which is all listing needs.
    for (id, name, labels) in [
        ("alpha-1", "alpha-build", vec!["red"]),
        ("alpha-2", "alpha-test", vec![]),
        ("beta-1", "beta", vec!["red"]),
    ] {
        let request = SubmitRequest {
            id: Some(id.into()),
            name: name.into(),
            command: vec!["true".into()],
            labels: labels.into_iter().map(String::from).collect(),
            ..SubmitRequest::default()
        };
        client.submit(&request).await.expect("submit");
    }
    let ids = |out: &Output| -> Vec<String> {
        let jobs: Vec<Job> = serde_json::from_slice(&out.stdout).expect("jobs JSON");
        let mut ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
        ids.sort();
        ids
    };
    let out = cli(&server.url, &["jobs", "--name", "alpha", "--json"]).await;
    expect_code(&out, 0, "hodei jobs --name");
    assert_eq!(ids(&out), ["alpha-1", "alpha-2"]);
    let out = cli(&server.url, &["jobs", "--label", "red", "--json"]).await;
    expect_code(&out, 0, "hodei jobs --label");
    assert_eq!(ids(&out), ["alpha-1", "beta-1"]);
    let out = cli(
        &server.url,
        &[
            "jobs", "--label", "red", "--name", "beta", "--state", "queued", "--json",
        ],
    )
    .await;
    expect_code(&out, 0, "hodei jobs with every filter");
    assert_eq!(ids(&out), ["beta-1"]);
    let out = cli(&server.url, &["jobs", "--worker", "nobody", "--json"]).await;
    expect_code(&out, 0, "hodei jobs --worker");
    assert!(ids(&out).is_empty());
}
