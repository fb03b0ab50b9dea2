//! Test harness: real `hodei server` and `hodei agent` processes on loopback
//! ports chosen by the OS, each test with its own data directory. Processes
//! are killed when their handle is dropped, so a failing test leaks nothing.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use hodei_client::Client;

/// Log level of the processes under test: `HODEI_TEST_LOG`, default `warn`
/// (set `HODEI_TEST_LOG=debug` to see what the server and agents do).
pub fn test_log_level() -> String {
    std::env::var("HODEI_TEST_LOG").unwrap_or_else(|_| "warn".to_string())
}

/// The `hodei` binary under test.
pub fn hodei() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hodei"))
}

/// A running `hodei server`.
pub struct ServerProc {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl ServerProc {
    /// Starts a server on a free port with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProc {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts a server on `listen` (to restart on the same port).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> ServerProc {
        let mut child = hodei()
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("HODEI_LOG", test_log_level())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hodei server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read server address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("server did not print its address: {line:?}"))
            .to_string();
        ServerProc {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// `host:port` the server listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url).expect("client")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) {
        signal(self.child.id() as i32, libc_sigterm());
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `hodei agent`.
pub struct AgentProc {
    child: Child,
    pub name: String,
    pub work_dir: PathBuf,
}

impl AgentProc {
    pub fn start(url: &str, name: &str, work_dir: &Path, extra: &[&str]) -> AgentProc {
        let child = hodei()
            .args(["agent", "--server", url, "--name", name, "--work-dir"])
            .arg(work_dir)
            .args(extra)
            .env("HODEI_LOG", test_log_level())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hodei agent");
        AgentProc {
            child,
            name: name.to_string(),
            work_dir: work_dir.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (drain) and wait up to `timeout` for the exit; returns the
    /// exit status if it exited.
    pub fn drain(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        signal(self.child.id() as i32, libc_sigterm());
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the agent to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn libc_sigterm() -> i32 {
    15
}

/// Sends signal number `sig` to process `pid`.
pub fn signal(pid: i32, sig: i32) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server lists `n` workers in state `ready`.
pub async fn wait_workers_ready(client: &Client, n: usize) {
    wait_for(Duration::from_secs(20), "workers to attach", || async {
        let workers = client.workers().await.ok()?;
        (workers.iter().filter(|w| w.state == "ready").count() >= n).then_some(())
    })
    .await
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
pub mod proxy;

/// A job running `sh -c script` named `name`.
pub fn sh_job(name: &str, script: &str) -> hodei_core::api::SubmitRequest {
    hodei_core::api::SubmitRequest {
        name: name.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// GETs `path` and checks the answer is `status` with a JSON error `code`
/// naming `field` (when given).
pub async fn expect_error(
    base: &str,
    path: &str,
    status: reqwest::StatusCode,
    code: &str,
    field: Option<&str>,
) {
    let resp = reqwest::get(format!("{base}{path}"))
        .await
        .expect("request");
    let got = resp.status();
    let body = resp.text().await.expect("body");
    assert_eq!(got, status, "GET {path}: {body}");
    let err: hodei_core::api::ErrorBody = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not a JSON error ({e}): {body}"));
    assert_eq!(err.code, code, "GET {path}: {err:?}");
    if let Some(field) = field {
        assert_eq!(err.field.as_deref(), Some(field), "GET {path}: {err:?}");
    }
}
