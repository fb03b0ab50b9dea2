//! How the process executor starts a job's leader (`hodei_agent::spawn`):
//! the state the job begins in, and many jobs started at once.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hodei_agent::executor::{ExecSpec, Executor};
use hodei_agent::process::ProcessExecutor;
use hodei_core::{LogStream, Outcome};
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(60);

fn spec(job: &str, command: &[&str], dir: &Path) -> ExecSpec {
    ExecSpec {
        job_id: job.into(),
        attempt: 1,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        working_dir: dir.to_path_buf(),
        timeout: None,
        kill_grace: Duration::from_secs(5),
        on_start: Default::default(),
        container: None,
    }
}

/// Runs `spec` to the end; its outcome and stdout.
async fn run(spec: ExecSpec) -> (Outcome, Vec<u8>) {
    let (tx, mut rx) = mpsc::channel::<hodei_agent::executor::OutputChunk>(16);
    let collector = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            if chunk.stream == LogStream::Stdout {
                out.extend_from_slice(&chunk.data);
            }
        }
        out
    });
    let (_cancel_tx, cancel) = watch::channel(false);
    let outcome = tokio::time::timeout(DEADLINE, ProcessExecutor::new().run(spec, tx, cancel))
        .await
        .expect("the job ends in time");
    (outcome, collector.await.expect("collector"))
}

/// A `/proc/PID/status` signal mask field (`SigBlk`, `SigIgn`, `SigCgt`).
fn mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.trim(), 16).expect("hex mask")
}

/// The agent ignores SIGPIPE (the Rust runtime does), handles signals and
/// may run with some blocked; none of that reaches the job.
#[tokio::test(flavor = "current_thread")]
async fn the_job_starts_with_no_blocked_signal_and_sigpipe_at_default() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    use tokio::signal::unix::{SignalKind, signal};

    let _handler = signal(SignalKind::user_defined1()).expect("a SIGUSR1 handler");
    // This thread starts the job (a current-thread runtime): block one.
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGUSR2);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).expect("block SIGUSR2");

    let dir = tempfile::tempdir().expect("tempdir");
    let (outcome, out) = run(spec("j", &["cat", "/proc/self/status"], dir.path())).await;
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&blocked), None).expect("unblock");
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    let status = String::from_utf8(out).expect("utf-8");
    assert_eq!(mask(&status, "SigBlk"), 0, "no signal blocked");
    let bit = |s: Signal| 1u64 << (s as i32 - 1);
    assert_eq!(
        mask(&status, "SigIgn") & bit(Signal::SIGPIPE),
        0,
        "SIGPIPE at its default"
    );
    assert_eq!(
        mask(&status, "SigCgt") & bit(Signal::SIGUSR1),
        0,
        "no handler of the agent"
    );
}

/// argv[0] is the name as given (as a shell does), not the path found.
#[tokio::test]
async fn argv_is_passed_as_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (outcome, out) = run(spec(
        "j",
        &["cat", "/proc/self/cmdline", "/dev/null"],
        dir.path(),
    ))
    .await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(out, b"cat\0/proc/self/cmdline\0/dev/null\0");
}

/// Many jobs started at once from several runtime threads: each child
/// borrows the agent's memory until it execs, so each must get its own
/// command, environment and pipes, and the agent must stay sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_jobs_start_at_once_each_with_its_own_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..300 {
        let job = format!("job-{i}");
        let script = format!("echo \"$HODEI_JOB_ID {i}\"; exit {}", i % 7);
        let spec = spec(&job, &["sh", "-c", &script], dir.path());
        jobs.spawn(async move { (i, job, run(spec).await) });
    }
    let mut done = 0;
    while let Some(joined) = jobs.join_next().await {
        let (i, job, (outcome, out)) = joined.expect("join");
        assert_eq!(outcome, Outcome::Exited { code: i % 7 }, "{job}");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!("{job} {i}\n")
        );
        done += 1;
    }
    assert_eq!(done, 300);
}

/// A NUL byte cannot be passed to execve: refused before anything starts.
#[tokio::test]
async fn a_nul_byte_is_a_spawn_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (outcome, _) = run(spec("j", &["echo", "a\0b"], dir.path())).await;
    assert!(
        matches!(outcome, Outcome::SpawnFailed { code: 126, .. }),
        "{outcome:?}"
    );
}

/// A script without `#!` is run by `/bin/sh`, as `execvp(3)` (and a shell)
/// would, with its arguments.
#[tokio::test]
async fn a_script_without_a_shebang_runs_under_sh() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("build");
    std::fs::write(&script, "echo \"built $1\"\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (outcome, out) = run(spec("j", &["./build", "it"], dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(out, b"built it\n");
}

/// A job whose `run` future is dropped is killed and its leader reaped:
/// no zombie is left behind for the agent's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_job_leaves_no_zombie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let script = "echo $$ > pid.tmp && mv pid.tmp pid; exec sleep 1000";
    let spec = spec("j", &["sh", "-c", script], dir.path());
    let (tx, _rx) = mpsc::channel(16);
    let (_cancel_tx, cancel) = watch::channel(false);
    let job = tokio::spawn(async move { ProcessExecutor::new().run(spec, tx, cancel).await });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    job.abort();
    assert!(job.await.expect_err("aborted").is_cancelled());
    // Reaped: the pid no longer exists at all (a zombie still would).
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still exists"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
