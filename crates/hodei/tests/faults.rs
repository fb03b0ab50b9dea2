//! Fault injection with real processes: agents killed mid-job, the
//! orchestrator killed under load, network partitions shorter and longer
//! than the lease grace (through a TCP proxy that can blackhole the
//! connection), and 500 agents reconnecting to a restarted orchestrator.
//!
//! Every job prints numbered lines (`a<attempt> line-<i>`) and a trailer
//! (`a<attempt> done <n> <sum>`), and records each start in a per-job "runs"
//! file (`<attempt> <pid>`). Each test checks every stored line by its
//! number: present exactly once, in order, none from another attempt.
//!
//! Timings are short (lease grace 3 s, heartbeats every 500 ms). The two
//! heavy tests (50 jobs, 500 agents) take the machine alone, so that a
//! starved CPU cannot make a timing bound of another test fail.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use hodei_core::api::SubmitRequest;
use hodei_core::{Job, JobState, LogStream};
use tokio::sync::RwLock;

/// The lease grace of every server here.
const GRACE: Duration = Duration::from_secs(3);
/// Server flags: lease grace [`GRACE`], heartbeats every 500 ms.
const FAST: [&str; 4] = ["--lease-grace", "3s", "--heartbeat-interval", "500ms"];
/// The bound on anything a test waits for, unless it says otherwise.
const DEADLINE: Duration = Duration::from_secs(45);

/// Light tests share it (read), heavy ones hold it alone (write).
static MACHINE: RwLock<()> = RwLock::const_new(());

// ---------------------------------------------------------------------------
// The numbered job and its checks.

/// `sh -c` script of a job that appends `<attempt> <pid>` to `runs/<job
/// id>`, prints `a<attempt> line-1` … `a<attempt> line-<n>`, one every
/// `every` seconds, then `a<attempt> done <n> <1+…+n>`, and exits with
/// `code`. `n` is a shell word (it may depend on `$HODEI_ATTEMPT`).
fn numbered_script(runs: &Path, n: &str, every: &str, code: i32) -> String {
    format!(
        "echo \"$HODEI_ATTEMPT $$\" >> '{runs}'/\"$HODEI_JOB_ID\"; \
         n={n}; i=1; s=0; \
         while [ $i -le $n ]; do echo \"a$HODEI_ATTEMPT line-$i\"; s=$((s+i)); i=$((i+1)); sleep {every}; done; \
         echo \"a$HODEI_ATTEMPT done $n $s\"; exit {code}",
        runs = runs.display()
    )
}

fn numbered_job(
    id: &str,
    runs: &Path,
    n: &str,
    every: &str,
    code: i32,
    retries: u32,
) -> SubmitRequest {
    SubmitRequest {
        id: Some(id.to_string()),
        command: vec![
            "sh".into(),
            "-c".into(),
            numbered_script(runs, n, every, code),
        ],
        max_retries: retries,
        ..SubmitRequest::default()
    }
}

/// The starts a job recorded: `(attempt, pid)`, in order.
fn runs_of(runs: &Path, id: &str) -> Vec<(u32, i32)> {
    let text = std::fs::read_to_string(runs.join(id)).unwrap_or_default();
    parse_runs(&text)
}

fn parse_runs(text: &str) -> Vec<(u32, i32)> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let (a, p) = l.trim().split_once(' ')?;
            Some((a.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

/// What a stored log holds of one attempt of a numbered job.
#[derive(Debug, Default)]
struct LogCheck {
    /// Numbered lines found.
    lines: u32,
    /// Numbers in 1..=highest (1..=n when the trailer is there) not found.
    missing: Vec<u32>,
    /// Numbers found more than once.
    duplicated: Vec<u32>,
    /// Index (0-based) of the first numbered line out of order.
    disorder_at: Option<usize>,
    /// Lines that are not this attempt's (another attempt's, or garbage).
    foreign: Vec<String>,
    /// The trailer, when there.
    trailer: Option<String>,
    /// Text after the last newline (a cut line).
    cut: Option<String>,
}

impl LogCheck {
    fn of(log: &[u8], attempt: u32) -> LogCheck {
        let text = String::from_utf8_lossy(log);
        let prefix = format!("a{attempt} ");
        let mut check = LogCheck::default();
        let mut numbers = Vec::new();
        for piece in text.split_inclusive('\n') {
            let Some(line) = piece.strip_suffix('\n') else {
                check.cut = Some(piece.to_string());
                continue;
            };
            let rest = line.strip_prefix(&prefix);
            if let Some(i) = rest
                .and_then(|r| r.strip_prefix("line-"))
                .and_then(|i| i.parse::<u32>().ok())
                .filter(|_| check.trailer.is_none())
            {
                numbers.push(i);
            } else if let Some(t) = rest
                .and_then(|r| r.strip_prefix("done "))
                .filter(|_| check.trailer.is_none())
            {
                check.trailer = Some(t.to_string());
            } else {
                check.foreign.push(line.to_string());
            }
        }
        check.lines = numbers.len() as u32;
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for &i in &numbers {
            *counts.entry(i).or_default() += 1;
        }
        check.duplicated = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(i, _)| *i)
            .collect();
        let highest = match &check.trailer {
            Some(t) => t
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            None => counts.keys().next_back().copied().unwrap_or(0),
        };
        check.missing = (1..=highest).filter(|i| !counts.contains_key(i)).collect();
        check.disorder_at = numbers
            .iter()
            .enumerate()
            .position(|(k, &i)| i != k as u32 + 1);
        check
    }

    /// Lines 1..=k, each once, in order, nothing else; if the trailer is
    /// there, it says `n` and the sum of 1..=n, and k == n.
    fn problems(&self, n: u32) -> Vec<String> {
        let mut p = Vec::new();
        if !self.missing.is_empty() {
            p.push(format!("missing lines {:?}", self.missing));
        }
        if !self.duplicated.is_empty() {
            p.push(format!("duplicated lines {:?}", self.duplicated));
        }
        if let Some(at) = self.disorder_at {
            p.push(format!("numbered line #{} out of order", at + 1));
        }
        if !self.foreign.is_empty() {
            let shown: Vec<_> = self.foreign.iter().take(5).collect();
            p.push(format!(
                "{} foreign lines, e.g. {shown:?}",
                self.foreign.len()
            ));
        }
        if let Some(cut) = &self.cut {
            p.push(format!("a cut last line {cut:?}"));
        }
        if let Some(t) = &self.trailer {
            let want = format!("{n} {}", n * (n + 1) / 2);
            if *t != want || self.lines != n {
                p.push(format!(
                    "trailer {t:?} after {} lines, expected {want:?} after {n}",
                    self.lines
                ));
            }
        }
        p
    }

    /// Panics unless the log is a clean prefix (see [`LogCheck::problems`]).
    fn assert_clean(&self, what: &str, n: u32, log: &[u8]) {
        let problems = self.problems(n);
        assert!(
            problems.is_empty(),
            "{what}: {}\nlog: {}",
            problems.join("; "),
            head(log)
        );
    }

    /// Panics unless the log is complete: lines 1..=n and the trailer.
    fn assert_complete(&self, what: &str, n: u32, log: &[u8]) {
        self.assert_clean(what, n, log);
        assert!(
            self.trailer.is_some() && self.lines == n,
            "{what}: {} of {n} lines and {} trailer\nlog: {}",
            self.lines,
            if self.trailer.is_some() { "a" } else { "no" },
            head(log)
        );
    }
}

#[test]
fn the_log_check_finds_every_kind_of_damage() {
    let n = 3;
    let complete = LogCheck::of(b"a1 line-1\na1 line-2\na1 line-3\na1 done 3 6\n", 1);
    assert!(complete.problems(n).is_empty() && complete.trailer.is_some() && complete.lines == 3);
    let prefix = LogCheck::of(b"a2 line-1\na2 line-2\n", 2);
    assert!(prefix.problems(n).is_empty() && prefix.trailer.is_none() && prefix.lines == 2);
    let damaged: [(&[u8], &str); 7] = [
        (b"a1 line-1\na1 line-1\na1 line-2\n", "duplicated"),
        (b"a1 line-1\na1 line-3\n", "missing"),
        (b"a1 line-2\na1 line-1\n", "out of order"),
        (b"a1 line-1\na2 line-1\n", "foreign"),
        (b"a1 line-1\na1 li", "cut"),
        (b"a1 line-1\na1 line-2\na1 done 3 6\n", "missing"),
        (b"a1 line-1\na1 line-2\na1 line-3\na1 done 3 7\n", "trailer"),
    ];
    for (log, kind) in damaged {
        let problems = LogCheck::of(log, 1).problems(n).join("; ");
        assert!(
            problems.contains(kind),
            "{log:?}: {problems:?} should say {kind}"
        );
    }
}

/// The start and end of some output, for messages.
fn head(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    if text.len() <= 1200 {
        return format!("{text:?}");
    }
    let start: String = text.chars().take(600).collect();
    let end: String = text
        .chars()
        .rev()
        .take(600)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{start:?} … {end:?} ({} bytes)", data.len())
}

/// The stored stdout of `attempt` of a job (the HTTP API; the client only
/// reads the current attempt).
async fn attempt_log(client: &Client, id: &str, attempt: u32) -> Vec<u8> {
    let url = format!(
        "{}/api/v1/jobs/{id}/logs?stream=stdout&attempt={attempt}",
        client.base_url()
    );
    let resp = http().get(&url).send().await.expect("GET attempt log");
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.bytes().await.expect("attempt log body").to_vec()
}

// ---------------------------------------------------------------------------
// Processes.

/// Kills, when dropped, the process group of every job start recorded in a
/// runs directory: agents killed with SIGKILL leave their jobs behind, and a
/// failing test must leak nothing.
struct KillJobs(PathBuf);

impl Drop for KillJobs {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for (_, pid) in parse_runs(&text) {
                let leader = nix::unistd::Pid::from_raw(pid);
                // Only a live group this job leads (the pid may be reused).
                if alive(pid) && nix::unistd::getpgid(Some(leader)) == Ok(leader) {
                    signal(-pid, 9);
                }
            }
        }
    }
}

/// A directory for the runs files, and its guard.
fn runs_dir(dir: &Path) -> (PathBuf, KillJobs) {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).expect("runs dir");
    (runs.clone(), KillJobs(runs))
}

/// Starts `hodei run --server URL ARGS`, its output captured.
fn hodei_run(url: &str, args: &[&str]) -> tokio::process::Child {
    let mut cmd = hodei();
    cmd.args(["run", "--server", url])
        .args(args)
        .env_remove("HODEI_LOG")
        .env_remove("HODEI_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn().expect("spawn hodei run")
}

/// Waits for a `hodei run` to exit (within [`DEADLINE`]).
async fn finish(run: tokio::process::Child) -> Output {
    tokio::time::timeout(DEADLINE, run.wait_with_output())
        .await
        .expect("hodei run did not exit in time")
        .expect("hodei run output")
}

fn lines_in(log: &[u8]) -> usize {
    log.iter().filter(|b| **b == b'\n').count()
}

/// Waits until the stored stdout of `id` has at least `n` lines; returns
/// how many it has.
async fn wait_lines(client: &Client, id: &str, n: usize) -> usize {
    wait_for(DEADLINE, &format!("{n} lines of job {id}"), || async {
        let log = client.logs(id, Some(LogStream::Stdout)).await.ok()?;
        (lines_in(&log) >= n).then(|| lines_in(&log))
    })
    .await
}

/// Waits until the job is finished and returns it.
async fn finished(client: &Client, id: &str) -> Job {
    wait_for(DEADLINE, &format!("job {id} to finish"), || async move {
        client.job(id).await.ok().filter(|j| j.state.is_terminal())
    })
    .await
}

/// Waits until worker `name` is listed in `state`.
async fn wait_worker(client: &Client, name: &str, state: &str, timeout: Duration) {
    wait_for(timeout, &format!("worker {name} to be {state}"), || async {
        let workers = client.workers().await.ok()?;
        workers
            .iter()
            .any(|w| w.id == name && w.state == state)
            .then_some(())
    })
    .await
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// 1. An agent killed mid-job.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_loses_the_job_after_the_grace_and_keeps_its_log() {
    let _machine = MACHINE.read().await;
    let dir = tempdir();
    let (runs, _jobs) = runs_dir(dir.path());
    let server = ServerProc::start(&dir.path().join("data"), &FAST);
    let mut agent = AgentProc::start(
        &server.url,
        "doomed",
        &dir.path().join("work"),
        &["--slots", "1"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let id = "killed-agent";
    let n = 100;
    // SIGPIPE ignored: the job does not die of its closed output, only of
    // its agent's death.
    let script = format!(
        "trap '' PIPE; {}",
        numbered_script(&runs, &n.to_string(), "0.05", 0)
    );
    let run = hodei_run(&server.url, &["--id", id, "--", "sh", "-c", &script]);
    let seen_before = wait_lines(&client, id, 10).await;
    let leader = runs_of(&runs, id)[0].1;

    let killed = Instant::now();
    agent.kill();
    // The job's leader dies with its agent (PR_SET_PDEATHSIG), long before
    // it would have finished (100 lines, 5 s).
    wait_for(
        Duration::from_secs(2),
        "the job to die with its agent",
        || async { (!alive(leader)).then_some(()) },
    )
    .await;
    let job = wait_for(
        GRACE + Duration::from_secs(20),
        "the job to end",
        || async { client.job(id).await.ok().filter(|j| j.state.is_terminal()) },
    )
    .await;
    let detection = killed.elapsed();
    println!(
        "[faults] agent kill -9: job declared {} after {}",
        job.state,
        secs(detection)
    );
    assert_eq!(job.state, JobState::Lost, "{job:?}");
    assert!(
        detection >= GRACE - Duration::from_millis(200),
        "declared lost after {detection:?}, before the lease grace {GRACE:?}"
    );
    assert!(
        detection <= GRACE + Duration::from_secs(3),
        "declared lost only after {detection:?} (lease grace {GRACE:?})"
    );
    assert_eq!(job.attempt, 1, "{job:?}");
    assert!(
        job.reason.as_deref().is_some_and(|r| r.contains("silent")),
        "the reason says the worker went silent: {job:?}"
    );

    // The log up to the crash is kept: lines 1..k, each once, in order.
    let log = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
    let check = LogCheck::of(&log, 1);
    check.assert_clean("log of the lost job", n, &log);
    assert!(
        check.trailer.is_none(),
        "the job cannot have finished: {check:?}"
    );
    assert!(
        check.lines as usize >= seen_before,
        "{} lines kept, {seen_before} were stored before the crash",
        check.lines
    );

    // `hodei run` says the job was lost, exits 125, and printed what was kept.
    let out = finish(run).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "hodei run: {out:?}");
    assert!(stderr.contains("lost"), "hodei run stderr: {stderr:?}");
    assert_eq!(out.stdout, log.to_vec(), "hodei run printed the stored log");

    assert_eq!(runs_of(&runs, id).len(), 1, "the job started once");
    println!(
        "[faults] agent kill -9: 1 job, {} lines checked (kept up to the crash), 0 lost, 0 duplicated",
        check.lines
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_job_with_a_retry_runs_again_on_another_agent() {
    let _machine = MACHINE.read().await;
    let dir = tempdir();
    let (runs, _jobs) = runs_dir(dir.path());
    let server = ServerProc::start(&dir.path().join("data"), &FAST);
    let mut first = AgentProc::start(
        &server.url,
        "first",
        &dir.path().join("work-1"),
        &["--slots", "1"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let id = "retried";
    let n = 40;
    let script = numbered_script(&runs, &n.to_string(), "0.05", 0);
    let run = hodei_run(
        &server.url,
        &["--id", id, "--retries", "1", "--", "sh", "-c", &script],
    );
    wait_lines(&client, id, 5).await;
    let job = client.job(id).await.expect("job");
    assert_eq!(
        (job.worker.as_deref(), job.attempt),
        (Some("first"), 1),
        "{job:?}"
    );

    // A second agent joins; the first dies.
    let _second = AgentProc::start(
        &server.url,
        "second",
        &dir.path().join("work-2"),
        &["--slots", "1"],
    );
    wait_worker(&client, "second", "ready", DEADLINE).await;
    let killed = Instant::now();
    first.kill();
    let moved = wait_for(GRACE + Duration::from_secs(20), "attempt 2", || async {
        client.job(id).await.ok().filter(|j| j.attempt >= 2)
    })
    .await;
    let detection = killed.elapsed();
    println!(
        "[faults] agent kill -9 with a retry: attempt 2 assigned after {}",
        secs(detection)
    );
    assert!(
        detection <= GRACE + Duration::from_secs(3),
        "retried only after {detection:?} (lease grace {GRACE:?})"
    );
    assert_eq!(moved.worker.as_deref(), Some("second"), "{moved:?}");

    let out = finish(run).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "hodei run: {out:?}");
    assert!(
        stderr.contains("attempt 2"),
        "hodei run says the job runs again: {stderr:?}"
    );

    let job = finished(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2, "{job:?}");
    assert_eq!(job.worker.as_deref(), Some("second"), "{job:?}");
    let log = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
    let check = LogCheck::of(&log, 2);
    check.assert_complete("log of attempt 2", n, &log);
    let first_log = attempt_log(&client, id, 1).await;
    let first_check = LogCheck::of(&first_log, 1);
    first_check.assert_clean("log of attempt 1", n, &first_log);

    // What `hodei run` printed: attempt 1's lines (a clean prefix), then
    // all of attempt 2's.
    let split = out
        .stdout
        .windows(3)
        .position(|w| w == b"a2 ")
        .unwrap_or(out.stdout.len());
    LogCheck::of(&out.stdout[..split], 1).assert_clean("hodei run, attempt 1", n, &out.stdout);
    LogCheck::of(&out.stdout[split..], 2).assert_complete("hodei run, attempt 2", n, &out.stdout);

    let attempts: Vec<u32> = runs_of(&runs, id).iter().map(|r| r.0).collect();
    assert_eq!(attempts, [1, 2], "one start per attempt");
    println!(
        "[faults] agent kill -9 with a retry: {} + {} lines checked, 0 lost, 0 duplicated",
        first_check.lines, check.lines
    );
}

// ---------------------------------------------------------------------------
// 2. The orchestrator killed while 50 jobs run.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_running_jobs_survive_a_server_kill_and_restart() {
    let _machine = MACHINE.write().await;
    let dir = tempdir();
    let (runs, _jobs) = runs_dir(dir.path());
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data, &FAST);
    let addr = server.addr().to_string();
    let _agents: Vec<AgentProc> = (0..3)
        .map(|a| {
            let name = format!("busy-{a}");
            AgentProc::start(
                &server.url,
                &name,
                &dir.path().join(&name),
                &["--slots", "17"],
            )
        })
        .collect();
    let client = server.client();
    wait_workers_ready(&client, 3).await;

    let (jobs, n) = (50, 50);
    let ids: Vec<String> = (0..jobs).map(|i| format!("job-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let req = numbered_job(id, &runs, &n.to_string(), "0.08", (i % 3) as i32, 0);
        client.submit(&req).await.expect("submit");
    }
    wait_for(DEADLINE, "50 jobs to run", || async {
        let list = client.jobs(Some(JobState::Running), 100, None).await.ok()?;
        (list.jobs.len() == jobs).then_some(())
    })
    .await;
    // Every job has printed some lines, none has finished.
    let stored = wait_for(DEADLINE, "output from every job", || async {
        let mut lines = Vec::new();
        for id in &ids {
            let log = client.logs(id, Some(LogStream::Stdout)).await.ok()?;
            lines.push(lines_in(&log));
        }
        lines.iter().all(|l| *l >= 3).then_some(lines)
    })
    .await;
    assert!(
        stored.iter().all(|l| *l < n as usize),
        "a job finished before the crash: {stored:?}"
    );

    let killed = Instant::now();
    server.kill();
    let server = ServerProc::start_on(&data, &addr, &FAST);
    let down = killed.elapsed();
    let client = server.client();
    let restarted = Instant::now();
    for id in &ids {
        finished(&client, id).await;
    }
    let done = restarted.elapsed();

    let mut checked = 0;
    for (i, id) in ids.iter().enumerate() {
        let job = client.job(id).await.expect("job");
        let code = (i % 3) as i32;
        let state = if code == 0 {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        assert_eq!((job.state, job.exit_code), (state, Some(code)), "{job:?}");
        assert_eq!(job.attempt, 1, "{job:?}");
        let log = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
        let check = LogCheck::of(&log, 1);
        check.assert_complete(id, n, &log);
        checked += check.lines;
        let starts = runs_of(&runs, id);
        assert_eq!(starts.len(), 1, "job {id} started {starts:?}");
    }
    println!(
        "[faults] server kill -9 under load: {jobs} jobs, {checked} lines checked \
         ({} stored before the crash), 0 lost, 0 duplicated, 0 re-run; \
         server down {}, all finished {} after the restart",
        stored.iter().sum::<usize>(),
        secs(down),
        secs(done)
    );
}

// ---------------------------------------------------------------------------
// 3. and 4. Network partitions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_shorter_than_the_grace_changes_nothing() {
    let _machine = MACHINE.read().await;
    let dir = tempdir();
    let (runs, _jobs) = runs_dir(dir.path());
    let server = ServerProc::start(&dir.path().join("data"), &FAST);
    let proxy = Proxy::start(server.addr()).await;
    let _agent = AgentProc::start(
        &proxy.url(),
        "far",
        &dir.path().join("work"),
        &["--slots", "1"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let (id, n) = ("short-partition", 80);
    client
        .submit(&numbered_job(id, &runs, &n.to_string(), "0.05", 0, 0))
        .await
        .expect("submit");
    wait_lines(&client, id, 10).await;

    let hold = Duration::from_millis(1500);
    proxy.blackhole();
    let cut = Instant::now();
    // The partition is real: once what was in flight is stored, nothing more
    // arrives while it lasts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = client
        .logs(id, Some(LogStream::Stdout))
        .await
        .expect("log")
        .len();
    tokio::time::sleep(hold.saturating_sub(cut.elapsed())).await;
    let still = client
        .logs(id, Some(LogStream::Stdout))
        .await
        .expect("log")
        .len();
    let during = client.job(id).await.expect("job");
    proxy.heal();
    assert_eq!(frozen, still, "log bytes crossed the partition");
    assert_eq!(
        during.state,
        JobState::Running,
        "within the grace: {during:?}"
    );

    let job = finished(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 1, "{job:?}");
    let log = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
    let check = LogCheck::of(&log, 1);
    check.assert_complete("log across a short partition", n, &log);
    assert_eq!(runs_of(&runs, id).len(), 1, "the job started once");
    println!(
        "[faults] partition of {} (grace {}): 1 job, {} lines checked, 0 lost, 0 duplicated, attempt 1",
        secs(hold),
        secs(GRACE),
        check.lines
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_grace_moves_the_job_and_fences_the_old_attempt() {
    let _machine = MACHINE.read().await;
    let dir = tempdir();
    let (runs, _jobs) = runs_dir(dir.path());
    let server = ServerProc::start(&dir.path().join("data"), &FAST);
    let proxy = Proxy::start(server.addr()).await;
    let _far = AgentProc::start(
        &proxy.url(),
        "far",
        &dir.path().join("work-far"),
        &["--slots", "1"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    // Attempt 1 would run for minutes: it can only end by being killed.
    let (id, n) = ("long-partition", 40);
    let count = format!("$([ \"$HODEI_ATTEMPT\" = 1 ] && echo 3000 || echo {n})");
    client
        .submit(&numbered_job(id, &runs, &count, "0.05", 0, 1))
        .await
        .expect("submit");
    wait_lines(&client, id, 10).await;
    let job = client.job(id).await.expect("job");
    assert_eq!(
        (job.worker.as_deref(), job.attempt),
        (Some("far"), 1),
        "{job:?}"
    );
    let _near = AgentProc::start(
        &server.url,
        "near",
        &dir.path().join("work-near"),
        &["--slots", "1"],
    );
    wait_worker(&client, "near", "ready", DEADLINE).await;
    let first_pid = runs_of(&runs, id)[0].1;

    let hold = GRACE + Duration::from_secs(2);
    proxy.blackhole();
    let cut = Instant::now();
    let moved = wait_for(hold, "the job to move to the other agent", || async {
        client.job(id).await.ok().filter(|j| j.attempt >= 2)
    })
    .await;
    let detection = cut.elapsed();
    assert_eq!(moved.worker.as_deref(), Some("near"), "{moved:?}");
    assert!(
        detection >= GRACE - Duration::from_millis(200),
        "moved after {detection:?}, before the lease grace {GRACE:?}"
    );
    let first_log_at_loss = attempt_log(&client, id, 1).await;
    tokio::time::sleep(hold.saturating_sub(cut.elapsed())).await;
    assert!(
        alive(first_pid),
        "attempt 1 still runs behind the partition when it heals"
    );
    proxy.heal();
    let healed = Instant::now();

    // The partitioned agent learns its attempt is stale and kills it.
    wait_for(
        Duration::from_secs(40),
        "attempt 1's process to be killed",
        || async { (!alive(first_pid)).then_some(()) },
    )
    .await;
    let fenced = healed.elapsed();
    wait_worker(&client, "far", "ready", Duration::from_secs(40)).await;
    let back = healed.elapsed();

    let job = finished(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2, "{job:?}");
    assert_eq!(job.worker.as_deref(), Some("near"), "{job:?}");
    let log = client.logs(id, Some(LogStream::Stdout)).await.expect("log");
    let check = LogCheck::of(&log, 2);
    check.assert_complete("log of attempt 2 (only attempt-2 lines)", n, &log);
    // Attempt 1's stale reports after the loss were not stored.
    let first_log = attempt_log(&client, id, 1).await;
    LogCheck::of(&first_log, 1).assert_clean("log of attempt 1", 3000, &first_log);
    assert_eq!(
        first_log.len(),
        first_log_at_loss.len(),
        "attempt 1's log grew after it was declared lost"
    );
    let attempts: Vec<u32> = runs_of(&runs, id).iter().map(|r| r.0).collect();
    assert_eq!(attempts, [1, 2], "one start per attempt");
    println!(
        "[faults] partition of {} (grace {}): moved to the other agent after {}, \
         attempt 1 killed {} after healing, its agent ready again after {}; \
         {} lines of attempt 2 checked, 0 lost, 0 duplicated, 0 stale lines stored",
        secs(hold),
        secs(GRACE),
        secs(detection),
        secs(fenced),
        secs(back),
        check.lines
    );
}

// ---------------------------------------------------------------------------
// 5. 500 agents and a server restart.

/// Raises the soft limit on open files to `want` (or the hard limit).
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).expect("setrlimit");
    }
}

/// Polls (every 200 ms: the list is long) until `n` workers are ready.
async fn wait_ready(client: &Client, n: usize, timeout: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut last = 0;
    loop {
        if let Ok(workers) = client.workers().await {
            last = workers.iter().filter(|w| w.state == "ready").count();
            if last >= n {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: only {last} of {n} workers ready after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_agents_reconnect_after_a_server_restart() {
    let _machine = MACHINE.write().await;
    const AGENTS: usize = 500;
    // 500 connections here and 500 in the server (which inherits the limit).
    raise_fd_limit(4096);
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data, &FAST);
    let addr = server.addr().to_string();
    let client = server.client();

    let mut agents = tokio::task::JoinSet::new();
    let mut drains = Vec::new();
    for i in 0..AGENTS {
        let name = format!("sim-{i:03}");
        let mut config = hodei_agent::AgentConfig::new(server.url.clone(), name.clone());
        config.slots = 1;
        config.token = Some(hodei_core::auth::Secret::new(join_token()));
        config.work_dir = dir.path().join("work").join(&name);
        let (drain, drain_rx) = tokio::sync::watch::channel(false);
        drains.push(drain);
        let executor = Arc::new(hodei_agent::process::ProcessExecutor::new());
        agents.spawn(hodei_agent::run(config, executor, drain_rx));
    }
    let attached = wait_ready(&client, AGENTS, Duration::from_secs(60), "first attach").await;

    let killed = Instant::now();
    server.kill();
    let server = ServerProc::start_on(&data, &addr, &FAST);
    let restart = killed.elapsed();
    let client = server.client();
    // Bound: an agent's wait before a redial is uniform in [0, min(30 s,
    // 100 ms·2^failures)]. The server is down for well under a second, so
    // an agent has failed a few times at most when it comes back (ceiling
    // ≤ 1.6 s); and even an agent at the 30 s cap redials within 30 s. 10 s
    // more for 500 TLS-free HTTP/2 handshakes and attaches on 2 cores.
    let bound = Duration::from_secs(40);
    let reconnected = wait_ready(&client, AGENTS, bound, "reconnect").await;
    println!(
        "[faults] {AGENTS} agents attached in {}; server restarted in {}; \
         {AGENTS} agents reconnected in {} ({} after the kill)",
        secs(attached),
        secs(restart),
        secs(reconnected),
        secs(killed.elapsed())
    );
    assert!(reconnected <= bound, "reconnect took {reconnected:?}");
    assert!(
        agents.try_join_next().is_none(),
        "an agent stopped: it must keep redialing"
    );

    // Still responsive: a job submitted right away runs.
    let submitted = Instant::now();
    let id = client
        .submit(&SubmitRequest {
            command: vec!["echo".into(), "after the restart".into()],
            ..SubmitRequest::default()
        })
        .await
        .expect("submit")
        .job
        .id;
    let job = wait_for(
        Duration::from_secs(10),
        "the job after the restart",
        || async { client.job(&id).await.ok().filter(|j| j.state.is_terminal()) },
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let log = client
        .logs(&id, Some(LogStream::Stdout))
        .await
        .expect("log");
    assert_eq!(&log[..], b"after the restart\n");
    println!(
        "[faults] a job submitted after the reconnect ran in {}",
        secs(submitted.elapsed())
    );
    agents.abort_all();
}
