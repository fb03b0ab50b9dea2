//! What the scenarios run against: an orchestrator in this process and an
//! agent in a process of its own ([`Rig`]), or an orchestrator in a process
//! of its own ([`ServerProcess`], so that its memory and CPU can be read
//! from `/proc`), and in-process agents dialing it.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hodei_agent::AgentConfig;
use hodei_agent::process::ProcessExecutor;
use hodei_client::{Client, ClientError};
use hodei_core::api::SubmitRequest;
use hodei_core::engine::Notice;
use hodei_server::{Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, watch};

/// A running orchestrator in this process and its agent, `hodei agent` in
/// a process of its own as agents are deployed (a job is started by forking
/// the agent, so the agent's memory, not the orchestrator's, is what that
/// costs), for one scenario.
pub struct Rig {
    pub client: Client,
    pub notices: broadcast::Receiver<Notice>,
    stop: watch::Sender<bool>,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start(slots: u32) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("data"),
            // The bench measures the engine, not the per-token limits.
            auth: hodei_server::auth::AuthConfig {
                submit_rate: 0.0,
                max_sessions_per_identity: 0,
                ..hodei_server::auth::AuthConfig::default()
            },
            ..ServerConfig::default()
        };
        let server = Server::start(&config).await?;
        let url = format!("http://{}", server.addr);
        let notices = server.hub().subscribe();
        let (admin, join) = (server.admin_token(), server.join_token());
        let (stop, stop_rx) = watch::channel(false);
        let mut stopping = stop_rx.clone();
        tokio::spawn(server.run(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }));
        let client = Client::new(&url)?.with_token(admin);
        let agent = AgentProcess::start(&url, join.as_deref(), "bench-agent", slots, dir.path())?;
        wait_ready(&client, 1).await?;
        Ok(Rig {
            client,
            notices,
            stop,
            agent,
            _dir: dir,
        })
    }

    /// The agent process's id (`None` once it exited).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.child.id()
    }

    pub async fn shutdown(self) {
        self.agent.stop().await;
        let _ = self.stop.send(true);
    }
}

/// `hodei agent` in a child process (this same binary); killed when dropped.
pub struct AgentProcess {
    child: tokio::process::Child,
}

impl AgentProcess {
    pub fn start(
        url: &str,
        token: Option<&str>,
        name: &str,
        slots: u32,
        dir: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let exe = std::env::current_exe().context("cannot find the hodei binary")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["agent", "--no-docker", "--server", url, "--name", name])
            .arg("--slots")
            .arg(slots.to_string())
            .arg("--work-dir")
            .arg(dir.join(format!("work-{name}")))
            .env_remove("HODEI_JOIN_TOKEN_FILE")
            // Its log level (e.g. `hodei_agent=debug` to time a job's steps).
            .env(
                "HODEI_LOG",
                std::env::var("HODEI_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match token {
            Some(t) => command.env("HODEI_JOIN_TOKEN", t),
            None => command.env_remove("HODEI_JOIN_TOKEN"),
        };
        let child = command.spawn().context("cannot start hodei agent")?;
        Ok(AgentProcess { child })
    }

    /// Drains the agent (SIGTERM), then kills it if it is still there
    /// after 10 s.
    pub async fn stop(mut self) {
        terminate(&mut self.child).await;
    }
}

/// Starts an agent in this process; sending `true` drains it.
pub fn start_agent(
    url: &str,
    token: Option<String>,
    name: &str,
    slots: u32,
    dir: &Path,
) -> anyhow::Result<watch::Sender<bool>> {
    start_agent_on(vec![url.to_string()], token, name, slots, dir)
}

/// Starts an agent in this process that attaches to the first of `servers`
/// and fails over to the next; sending `true` drains it.
pub fn start_agent_on(
    servers: Vec<String>,
    token: Option<String>,
    name: &str,
    slots: u32,
    dir: &Path,
) -> anyhow::Result<watch::Sender<bool>> {
    let first = servers
        .first()
        .cloned()
        .context("an agent needs a server URL")?;
    let mut agent = AgentConfig::new(first, name).with_servers(servers);
    agent.slots = slots;
    agent.token = token.map(hodei_core::auth::Secret::new);
    agent.work_dir = dir.join(format!("work-{name}"));
    let (drain, drain_rx) = watch::channel(false);
    tokio::spawn(hodei_agent::run(
        agent,
        Arc::new(ProcessExecutor::new()),
        drain_rx,
    ));
    Ok(drain)
}

/// Waits until `n` workers are ready.
pub async fn wait_ready(client: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client
            .workers()
            .await?
            .iter()
            .filter(|w| w.state == "ready")
            .count();
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {n} bench agents attached");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Submits `count` no-op jobs (`true`) in requests of at most `size`.
pub async fn submit_noops(client: &Client, count: usize, size: usize) -> Result<(), ClientError> {
    let mut left = count;
    while left > 0 {
        let take = left.min(size);
        client.submit_batch(vec![job(&["true"]); take]).await?;
        left -= take;
    }
    Ok(())
}

pub fn job(argv: &[&str]) -> SubmitRequest {
    SubmitRequest {
        command: argv.iter().map(|s| s.to_string()).collect(),
        ..SubmitRequest::default()
    }
}

/// `hodei server` in a child process (this same binary), on a fresh data
/// directory; killed when dropped.
pub struct ServerProcess {
    pub url: String,
    pub pid: u32,
    /// The bootstrap admin token and agent join token it made.
    pub admin_token: Option<String>,
    pub join_token: Option<String>,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn start() -> anyhow::Result<ServerProcess> {
        ServerProcess::start_with(&[], &[]).await
    }

    /// Starts it with extra arguments (e.g. `--database URL`,
    /// `--heartbeat-interval 1s`) and environment variables (e.g. the
    /// bootstrap tokens). Without them it keeps its state in SQLite and
    /// makes its own tokens, whatever this process's environment says.
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let exe = std::env::current_exe().context("cannot find the hodei binary")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env_remove("HODEI_DATABASE")
            .env_remove("HODEI_BOOTSTRAP_ADMIN_TOKEN")
            .env_remove("HODEI_BOOTSTRAP_JOIN_TOKEN")
            .envs(env.iter().copied())
            .env("HODEI_LOG", "warn")
            // The bench measures the engine, not the per-token limits.
            .env("HODEI_SUBMIT_RATE", "0")
            .env("HODEI_MAX_AGENT_SESSIONS", "0")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().context("cannot start hodei server")?;
        let pid = child.id().context("server exited at once")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("hodei server listening on ") {
                    return Ok(Some(url.trim().to_string()));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let url = match read {
            Ok(Ok(Some(url))) => url,
            _ => bail!("hodei server did not say where it listens"),
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let data = dir.path().join("data");
        let read = |name: &str| {
            std::fs::read_to_string(data.join(name))
                .ok()
                .map(|t| t.trim().to_string())
        };
        Ok(ServerProcess {
            url,
            pid,
            admin_token: read(hodei_server::auth::ADMIN_TOKEN_FILE),
            join_token: read(hodei_server::auth::AGENT_TOKEN_FILE),
            child,
            _dir: dir,
        })
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid)
    }

    /// Kills the server at once (SIGKILL, like `kill -9`) and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the server (SIGTERM, then a kill after 10 s).
    pub async fn stop(mut self) {
        terminate(&mut self.child).await;
    }
}

/// SIGTERM, then SIGKILL if the process is still there after 10 s; reaps it.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Resident memory of a process (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// CPU time a process used so far (user + system, fields 14 and 15 of
/// `/proc/PID/stat`, in clock ticks of 1/100 s: USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(cpu_times(pid)?.own)
}

/// CPU seconds (user + system) a process used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// By the process itself (every thread).
    pub own: f64,
    /// By the children it has reaped (and theirs): an agent's jobs.
    pub reaped_children: f64,
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            own: self.own - earlier.own,
            reaped_children: self.reaped_children - earlier.reaped_children,
        }
    }
}

/// Fields 14 to 17 of `/proc/PID/stat` (utime, stime, cutime, cstime), in
/// clock ticks of 1/100 s (USER_HZ is 100 on Linux).
pub fn cpu_times(pid: u32) -> anyhow::Result<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let tick =
        |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i - 3).context("short stat")?.parse()?) };
    Ok(CpuTimes {
        own: (tick(14)? + tick(15)?) as f64 / 100.0,
        reaped_children: (tick(16)? + tick(17)?) as f64 / 100.0,
    })
}

/// CPU seconds (user + system) used by this process's reaped children.
pub fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// Raises this process's soft open-file limit to the hard one; returns the
/// new limit when it changed.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some(hard)
}

/// The soft open-file limit.
pub fn nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft)
}
