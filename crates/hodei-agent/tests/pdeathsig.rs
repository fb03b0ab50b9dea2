//! A job's leader dies with the agent: this test runs itself again as a
//! stand-in agent (a process that starts `sleep 1000` with the
//! `ProcessExecutor`), kills that process with SIGKILL, and checks that the
//! job's leader died too.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hodei_agent::executor::{ExecSpec, Executor, OnStart};
use hodei_agent::process::ProcessExecutor;
use hodei_agent::recover::proc_stat;
use tokio::sync::{mpsc, watch};

const HELPER_ENV: &str = "HODEI_TEST_PDEATHSIG_HELPER";
const TEST_NAME: &str = "job_leader_dies_with_the_agent";

#[test]
fn job_leader_dies_with_the_agent() {
    if let Some(pid_file) = std::env::var_os(HELPER_ENV) {
        stand_in_agent(PathBuf::from(pid_file));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("job.pid");
    let mut agent = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, &pid_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the stand-in agent");

    let deadline = Instant::now() + Duration::from_secs(30);
    let job: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.strip_suffix('\n').and_then(|s| s.parse().ok()))
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the job did not start");
        assert!(
            agent.try_wait().expect("try_wait").is_none(),
            "helper exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let alive = proc_stat(job).expect("the job runs");
    assert_ne!(alive.state, 'Z');
    let _cleanup = KillOnDrop(job, alive.start_time);

    agent.kill().expect("kill -9 the agent");
    agent.wait().expect("reap the agent");

    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_stat(job).is_some_and(|s| s.state != 'Z') {
        assert!(
            Instant::now() < deadline,
            "the job's leader outlived the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the job if the test fails (if it is still the same process).
struct KillOnDrop(u32, u64);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if proc_stat(self.0).is_some_and(|s| s.start_time == self.1 && s.state != 'Z') {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs `sleep 1000` through the executor on a multi-threaded runtime, the
/// way the agent does, and writes its pid to `pid_file`.
fn stand_in_agent(pid_file: PathBuf) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ExecSpec {
            job_id: "pdeathsig".into(),
            attempt: 1,
            command: vec!["sleep".into(), "1000".into()],
            env: BTreeMap::new(),
            working_dir: dir.path().to_path_buf(),
            timeout: None,
            kill_grace: Duration::from_secs(1),
            on_start: OnStart::new(move |pid| {
                let tmp = pid_file.with_extension("tmp");
                std::fs::write(&tmp, format!("{pid}\n")).expect("write pid");
                std::fs::rename(&tmp, &pid_file).expect("publish pid");
            }),
            container: None,
        };
        let (tx, mut rx) = mpsc::channel(16);
        let (_cancel_tx, cancel) = watch::channel(false);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        // On a worker thread, like the agent's jobs. Runs until this
        // process is killed.
        let job = tokio::spawn(async move { ProcessExecutor::new().run(spec, tx, cancel).await });
        let _ = job.await;
    });
}
