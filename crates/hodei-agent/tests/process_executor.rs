//! The process executor against real processes.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use hodei_agent::executor::{ExecSpec, Executor, OutputChunk};
use hodei_agent::process::ProcessExecutor;
use hodei_core::{LogStream, Outcome};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits for; never reached when things work.
const DEADLINE: Duration = Duration::from_secs(30);

fn spec(command: &[&str], dir: &Path) -> ExecSpec {
    ExecSpec {
        job_id: "job-1".into(),
        attempt: 2,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        working_dir: dir.to_path_buf(),
        timeout: None,
        kill_grace: Duration::from_secs(5),
        on_start: Default::default(),
        container: None,
    }
}

fn sh(script: &str, dir: &Path) -> ExecSpec {
    spec(&["sh", "-c", script], dir)
}

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    chunks: Vec<OutputChunk>,
}

/// Collects chunks into per-stream buffers until the channel closes.
fn collect(mut rx: mpsc::Receiver<OutputChunk>, keep_chunks: bool) -> JoinHandle<Collected> {
    tokio::spawn(async move {
        let mut c = Collected::default();
        while let Some(chunk) = rx.recv().await {
            match chunk.stream {
                LogStream::Stdout => c.stdout.extend_from_slice(&chunk.data),
                LogStream::Stderr => c.stderr.extend_from_slice(&chunk.data),
            }
            if keep_chunks {
                c.chunks.push(chunk);
            }
        }
        c
    })
}

/// Runs `spec` to the end (never cancelled) and returns its outcome and output.
async fn run(spec: ExecSpec) -> (Outcome, Collected) {
    let (tx, rx) = mpsc::channel(16);
    let collector = collect(rx, true);
    let (_cancel_tx, cancel) = watch::channel(false);
    let outcome = tokio::time::timeout(DEADLINE, ProcessExecutor::new().run(spec, tx, cancel))
        .await
        .expect("run did not return in time");
    let collected = collector.await.expect("collector");
    (outcome, collected)
}

/// Runs `spec` in a task, for tests that act while it runs.
fn start(
    spec: ExecSpec,
    output: mpsc::Sender<OutputChunk>,
    cancel: watch::Receiver<bool>,
) -> JoinHandle<Outcome> {
    tokio::spawn(async move { ProcessExecutor::new().run(spec, output, cancel).await })
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Gone for good: no such process, or a zombie waiting for a reaper that is
/// not us.
fn is_dead(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Reads whitespace-separated pids from a file the job wrote (atomically).
fn read_pids(path: &Path) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().map(|p| p.parse().ok()).collect()
}

fn hash(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(data);
    h.finish()
}

#[tokio::test]
async fn the_leader_pid_is_reported_and_is_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut s = sh("echo $$; ps -o pgid= -p $$ 2>/dev/null || true", dir.path());
    let sink = reported.clone();
    s.on_start = hodei_agent::executor::OnStart::new(move |pid| sink.lock().unwrap().push(pid));
    let (outcome, c) = run(s).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    let pids = reported.lock().unwrap().clone();
    assert_eq!(pids.len(), 1, "reported once");
    let out = String::from_utf8(c.stdout).unwrap();
    let mut lines = out.lines().map(str::trim);
    assert_eq!(lines.next(), Some(pids[0].to_string().as_str()));
    if let Some(pgid) = lines.next() {
        assert_eq!(pgid, pids[0].to_string(), "the leader leads its group");
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_leader_has_the_parent_death_signal_set() {
    // /proc does not show PR_SET_PDEATHSIG; a process can read its own
    // with PR_GET_PDEATHSIG, which python does through ctypes if present.
    let dir = tempfile::tempdir().unwrap();
    let script = "import ctypes,sys\n\
        s=ctypes.c_int(0)\n\
        ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0)\n\
        print(s.value)";
    let (outcome, c) = run(spec(&["python3", "-c", script], dir.path())).await;
    if matches!(outcome, Outcome::SpawnFailed { .. }) {
        eprintln!("no python3 here; skipping");
        return;
    }
    assert_eq!(
        outcome,
        Outcome::Exited { code: 0 },
        "{}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert_eq!(String::from_utf8(c.stdout).unwrap().trim(), "9", "SIGKILL");
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        run(spec(&["true"], dir.path())).await.0,
        Outcome::Exited { code: 0 }
    );
    assert_eq!(
        run(sh("exit 3", dir.path())).await.0,
        Outcome::Exited { code: 3 }
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_separate_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        r#"i=1; while [ $i -le 10000 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done"#;
    let (outcome, c) = run(sh(script, dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    for (name, data) in [("out", &c.stdout), ("err", &c.stderr)] {
        let text = std::str::from_utf8(data).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10000, "{name}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("{name} {}", i + 1));
        }
        assert!(text.ends_with('\n'));
    }
    assert!(
        c.chunks
            .iter()
            .all(|ch| !ch.data.is_empty() && ch.timestamp_ms > 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabytes_arrive_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    const LEN: usize = 50 * 1024 * 1024;
    // Deterministic pseudo-random bytes (xorshift64), every byte value included.
    let mut expected = Vec::with_capacity(LEN);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while expected.len() < LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        expected.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.path().join("data.bin"), &expected).unwrap();

    let (outcome, c) = run(spec(&["cat", "data.bin"], dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert!(c.stderr.is_empty());
    assert_eq!(c.stdout.len(), LEN);
    assert_eq!(hash(&c.stdout), hash(&expected));
    if let Some(at) = c.stdout.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("first difference at byte {at}");
    }
    // One read is one chunk: 64 KiB at most, 1 MiB once the pipe was grown
    // (its first full read grows it; `cat` writes 128 KiB at a time).
    assert!(c.chunks.iter().all(|ch| ch.data.len() <= 1024 * 1024));
    assert!(
        c.chunks.iter().any(|ch| ch.data.len() > 64 * 1024),
        "the pipe grew: {} chunks",
        c.chunks.len()
    );
}

#[tokio::test]
async fn invalid_utf8_is_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, c) = run(sh(r"printf '\377\376abc'; printf '\300x' >&2", dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(c.stdout, b"\xff\xfeabc");
    assert_eq!(c.stderr, b"\xc0x");
}

#[tokio::test]
async fn env_and_working_dir_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sh(
        r#"printf '%s|%s|%s|%s|%s' "$HODEI_JOB_ID" "$HODEI_ATTEMPT" "$FOO" "$(pwd -P)" "$HOME""#,
        dir.path(),
    );
    s.env.insert("FOO".into(), "bar baz".into());
    let (outcome, c) = run(s).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    let cwd = dir.path().canonicalize().unwrap();
    // HOME comes from the agent's own environment.
    let home = std::env::var("HOME").unwrap_or_default();
    let want = format!("job-1|2|bar baz|{}|{home}", cwd.display());
    assert_eq!(String::from_utf8_lossy(&c.stdout), want);
}

#[tokio::test]
async fn program_is_looked_up_in_the_jobs_path() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let echo = ["/bin/echo", "/usr/bin/echo"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    std::os::unix::fs::symlink(echo, bin.join("hodei-test-echo")).unwrap();
    let mut s = spec(&["hodei-test-echo", "a  b", "$HOME"], dir.path());
    s.env.insert("PATH".into(), bin.display().to_string());
    let (outcome, c) = run(s).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(c.stdout, b"a  b $HOME\n");
}

#[tokio::test]
async fn output_is_forwarded_while_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let (cancel_tx, cancel) = watch::channel(false);
    let job = start(sh("echo first; sleep 1000", dir.path()), tx, cancel);
    let chunk = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chunk.stream, LogStream::Stdout);
    assert_eq!(&chunk.data[..], b"first\n");
    cancel_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(DEADLINE, job).await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
}

#[tokio::test]
async fn dropped_receiver_does_not_block_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let (_cancel_tx, cancel) = watch::channel(false);
    let s = sh(
        "head -c 10485760 /dev/zero; head -c 10485760 /dev/zero >&2",
        dir.path(),
    );
    let outcome = tokio::time::timeout(DEADLINE, ProcessExecutor::new().run(s, tx, cancel))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn cancel_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 1000 & echo $$ $! > pids.tmp && mv pids.tmp pids; sleep 1000";
    let (tx, rx) = mpsc::channel(16);
    let collector = collect(rx, false);
    let (cancel_tx, cancel) = watch::channel(false);
    let job = start(sh(script, dir.path()), tx, cancel);

    let pids_file = dir.path().join("pids");
    eventually("the pid file", || pids_file.exists()).await;
    let pids = read_pids(&pids_file).unwrap();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| !is_dead(p)));

    cancel_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(DEADLINE, job).await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    collector.await.unwrap();
    for pid in pids {
        eventually(&format!("pid {pid} to be gone"), || is_dead(pid)).await;
    }
}

#[tokio::test]
async fn sigterm_ignoring_job_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sh(
        "trap '' TERM; echo $$ > pid.tmp && mv pid.tmp pid; sleep 1000",
        dir.path(),
    );
    s.kill_grace = Duration::from_millis(300);
    let (tx, rx) = mpsc::channel(16);
    let collector = collect(rx, false);
    let (cancel_tx, cancel) = watch::channel(false);
    let job = start(s, tx, cancel);

    let pid_file = dir.path().join("pid");
    eventually("the pid file", || pid_file.exists()).await;
    let pid = read_pids(&pid_file).unwrap()[0];
    let cancelled_at = Instant::now();
    cancel_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(DEADLINE, job).await.unwrap().unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(
        took >= Duration::from_millis(300),
        "killed before the grace: {took:?}"
    );
    collector.await.unwrap();
    eventually("the shell to be gone", || is_dead(pid)).await;
}

#[tokio::test]
async fn timeout_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&["sleep", "1000"], dir.path());
    s.timeout = Some(Duration::from_millis(200));
    let started = Instant::now();
    let (outcome, _) = run(s).await;
    assert_eq!(outcome, Outcome::TimedOut);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn cancelled_before_start_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(16);
    let (_cancel_tx, cancel) = watch::channel(true);
    let s = sh("touch started", dir.path());
    assert_eq!(
        ProcessExecutor::new().run(s, tx, cancel).await,
        Outcome::Cancelled
    );
    assert!(!dir.path().join("started").exists());
}

#[tokio::test]
async fn missing_command_is_spawn_failure_127() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, c) = run(spec(&["hodei-no-such-command-xyz", "arg"], dir.path())).await;
    let message = r#"hodei: cannot run "hodei-no-such-command-xyz": command not found"#;
    assert_eq!(
        outcome,
        Outcome::SpawnFailed {
            code: 127,
            message: message.into()
        }
    );
    assert_eq!(c.stderr, format!("{message}\n").as_bytes());
    assert!(c.stdout.is_empty());

    let (outcome, _) = run(spec(&["./missing.sh"], dir.path())).await;
    assert!(
        matches!(outcome, Outcome::SpawnFailed { code: 127, .. }),
        "{outcome:?}"
    );
    let (outcome, _) = run(spec(&[], dir.path())).await;
    assert!(
        matches!(outcome, Outcome::SpawnFailed { code: 127, .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn non_executable_file_is_spawn_failure_126() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let (outcome, c) = run(spec(&["./script.sh"], dir.path())).await;
    let Outcome::SpawnFailed { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, 126);
    assert!(message.contains("permission denied"), "{message}");
    assert_eq!(c.stderr, format!("{message}\n").as_bytes());

    // A directory cannot be executed either.
    let (outcome, _) = run(spec(&["/"], dir.path())).await;
    assert!(
        matches!(outcome, Outcome::SpawnFailed { code: 126, .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn background_child_holding_stdout_is_killed_when_the_main_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 1000 & echo $! > pid.tmp && mv pid.tmp pid; echo done";
    let started = Instant::now();
    let (outcome, c) = run(sh(script, dir.path())).await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(c.stdout, b"done\n");
    let pid = read_pids(&dir.path().join("pid")).unwrap()[0];
    eventually("the background child to be gone", || is_dead(pid)).await;
}

#[tokio::test]
async fn death_by_an_outside_signal_is_signaled() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = run(sh("kill -9 $$", dir.path())).await;
    assert_eq!(outcome, Outcome::Signaled { signal: 9 });
}

#[tokio::test]
async fn process_that_left_the_group_cannot_hold_the_job_forever() {
    if !Path::new("/usr/bin/setsid").exists() && !Path::new("/bin/setsid").exists() {
        return; // util-linux's setsid is needed to leave the group.
    }
    let dir = tempfile::tempdir().unwrap();
    // The escapee writes its pid only once it has left the group; the main
    // process waits for that before it exits.
    let script = "setsid sh -c 'echo $$ > pid.tmp && mv pid.tmp pid; exec sleep 1000' & \
                  while [ ! -e pid ]; do sleep 0.01; done; echo done";
    let started = Instant::now();
    let (outcome, c) = run(sh(script, dir.path())).await;
    let took = started.elapsed();
    let pid = read_pids(&dir.path().join("pid")).unwrap()[0];
    let _ = kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(c.stdout, b"done\n");
    let grace = hodei_agent::process::PIPE_CLOSE_GRACE;
    assert!(
        took >= grace && took < grace + Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn dropping_the_run_future_kills_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 1000 & echo $$ $! > pids.tmp && mv pids.tmp pids; sleep 1000";
    let (tx, _rx) = mpsc::channel(16);
    let (_cancel_tx, cancel) = watch::channel(false);
    let job = start(sh(script, dir.path()), tx, cancel);
    let pids_file = dir.path().join("pids");
    eventually("the pid file", || pids_file.exists()).await;
    let pids = read_pids(&pids_file).unwrap();
    job.abort();
    assert!(job.await.unwrap_err().is_cancelled());
    for pid in pids {
        eventually(&format!("pid {pid} to be gone"), || is_dead(pid)).await;
    }
}
