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

/// Two tokens for this test process: every server the harness starts is
/// provisioned with them at its first start (admin, agent join token), and
/// every `hodei` process gets them (`HODEI_TOKEN`, `HODEI_JOIN_TOKEN`).
fn test_tokens() -> &'static (String, String) {
    static TOKENS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    TOKENS.get_or_init(|| (random_token(), random_token()))
}

/// A random `hodei_<id>_<secret>` token.
pub fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut chars = String::new();
    let mut n = 0u64;
    while chars.len() < 52 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        let mut v = h.finish();
        for _ in 0..8 {
            chars.push(ALPHABET[(v % 36) as usize] as char);
            v /= 36;
        }
        n += 1;
    }
    format!("hodei_{}_{}", &chars[..12], &chars[12..52])
}

/// The admin token of every harness server.
pub fn admin_token() -> &'static str {
    &test_tokens().0
}

/// The agent join token of every harness server.
pub fn join_token() -> &'static str {
    &test_tokens().1
}

/// The `hodei` binary under test, with the test tokens in its environment.
pub fn hodei() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hodei"));
    cmd.env("HODEI_TOKEN", admin_token())
        .env("HODEI_JOIN_TOKEN", join_token())
        .env("HODEI_BOOTSTRAP_ADMIN_TOKEN", admin_token())
        .env("HODEI_BOOTSTRAP_JOIN_TOKEN", join_token());
    cmd
}

/// An HTTP client that sends the admin token.
pub fn http() -> reqwest::Client {
    http_with(admin_token())
}

/// An HTTP client that sends `token`.
pub fn http_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// Adds `authorization: Bearer <token>` to every gRPC call.
#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("token is not a header value"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// A gRPC channel that authenticates with `token`.
pub type Authed =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// An HWP client (full proto) with the admin token.
pub async fn hwp_client(
    url: &str,
) -> hwp_proto::pb::worker_service_client::WorkerServiceClient<Authed> {
    hwp_client_with(url, admin_token()).await
}

/// An HWP client (full proto) with `token`.
pub async fn hwp_client_with(
    url: &str,
    token: &str,
) -> hwp_proto::pb::worker_service_client::WorkerServiceClient<Authed> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect the HWP client");
    hwp_proto::pb::worker_service_client::WorkerServiceClient::with_interceptor(
        channel,
        Bearer(token.to_string()),
    )
}

/// A client generated from the seed proto alone, with `token`.
pub async fn seed_client_with(
    url: &str,
    token: &str,
) -> hwp_seed::pb::worker_service_client::WorkerServiceClient<Authed> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect the seed client");
    hwp_seed::pb::worker_service_client::WorkerServiceClient::with_interceptor(
        channel,
        Bearer(token.to_string()),
    )
}

/// A running `hodei server`.
pub struct ServerProc {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// What the server printed on stdout after its address line (and on
    /// stderr, when started with [`ServerProc::start_captured`]).
    pub output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProc {
    /// Starts a server on a free port with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProc {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts a server on `listen` (to restart on the same port).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> ServerProc {
        let mut cmd = hodei();
        cmd.args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("HODEI_LOG", test_log_level())
            .stderr(Stdio::inherit());
        Self::spawn(cmd, data_dir, false)
    }

    /// Starts a server from `cmd` (a `hodei server …` command), its stdout
    /// (and stderr if `capture_stderr`) collected in [`ServerProc::output`].
    pub fn spawn(mut cmd: Command, data_dir: &Path, capture_stderr: bool) -> ServerProc {
        if let Some(url) = backend_database(&cmd, data_dir) {
            cmd.env("HODEI_DATABASE", url);
        }
        cmd.stdout(Stdio::piped());
        if capture_stderr {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn hodei server");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            collect(stderr, output.clone(), true);
        }
        let stdout = child.stdout.take().expect("server stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read server address");
        // Keep reading: the server may print more, and must not hit a
        // closed pipe.
        collect(reader, output.clone(), false);
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
            output,
        }
    }

    /// Everything collected from the server's output so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// `host:port` the server listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// An API client with the admin token.
    pub fn client(&self) -> Client {
        self.client_with(Some(admin_token()))
    }

    /// An API client with `token` (or none).
    pub fn client_with(&self, token: Option<&str>) -> Client {
        Client::new(&self.url)
            .expect("client")
            .with_token(token.map(str::to_string))
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

/// With `HODEI_TEST_BACKEND=postgres`, the database a server started on
/// `data_dir` uses (unless the test chose one with `--database`): a fresh
/// one on the shared test PostgreSQL server, the same again when a test
/// restarts a server on the same data directory (its URL is kept there).
fn backend_database(cmd: &Command, data_dir: &Path) -> Option<String> {
    if std::env::var("HODEI_TEST_BACKEND").ok().as_deref() != Some("postgres")
        || cmd.get_args().any(|a| a == "--database")
    {
        return None;
    }
    let keep = data_dir.join("test-database-url");
    if let Ok(url) = std::fs::read_to_string(&keep) {
        return Some(url);
    }
    let url = pg_harness::shared()
        .create_database()
        .unwrap_or_else(|e| panic!("create a test database: {e}"));
    std::fs::create_dir_all(data_dir).expect("data dir");
    std::fs::write(&keep, &url).expect("keep the database url");
    Some(url)
}

/// Appends the lines of `from` to `to` on a thread (echoing them to our
/// stderr when `echo`, so a failing test still shows the server's log).
fn collect(
    from: impl std::io::Read + Send + 'static,
    to: std::sync::Arc<std::sync::Mutex<String>>,
    echo: bool,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if echo {
                eprintln!("{line}");
            }
            if let Ok(mut out) = to.lock() {
                out.push_str(&line);
                out.push('\n');
            }
        }
    });
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

/// A private PostgreSQL server for one test (one that restarts it).
pub async fn start_pg() -> pg_harness::PgServer {
    tokio::task::spawn_blocking(pg_harness::PgServer::start)
        .await
        .expect("join")
        .expect("start PostgreSQL")
}

/// A fresh database on `pg`; its URL.
pub async fn create_db(pg: &'static pg_harness::PgServer) -> String {
    tokio::task::spawn_blocking(move || pg.create_database())
        .await
        .expect("join")
        .expect("create database")
}

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
    let resp = http()
        .get(format!("{base}{path}"))
        .send()
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

/// Starts `hodei server` with `flags` on `data_dir`, expecting it to refuse
/// to start; returns what it printed on stderr.
pub fn refused_start(data_dir: &Path, flags: &[&str]) -> String {
    let out = hodei()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(flags)
        .output()
        .expect("run hodei server");
    assert!(!out.status.success(), "{flags:?}: the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
