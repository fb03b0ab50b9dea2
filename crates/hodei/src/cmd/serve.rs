//! `hodei server` and `hodei agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hodei_agent::AgentConfig;
use hodei_agent::docker::DockerConfig;
use hodei_agent::process::ProcessExecutor;
use hodei_core::spec::PullPolicy;
use hodei_server::{Server, ServerConfig};

use super::{DEFAULT_SERVER, parse_duration, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address for gRPC (HWP) and HTTP.
    #[arg(long, env = "HODEI_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Where the embedded store keeps its database.
    #[arg(long, env = "HODEI_DATA_DIR", default_value = "hodei-data")]
    pub data_dir: PathBuf,
    /// Keep state in PostgreSQL (postgres://user:password@host:port/db)
    /// instead of the embedded SQLite database in the data directory.
    #[arg(long, env = "HODEI_DATABASE")]
    pub database: Option<String>,
    /// How often agents send heartbeats [default: a third of the lease
    /// grace, 10s with the default grace].
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// How long a worker may be silent before its jobs are declared lost.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease_grace: Duration,
    #[command(flatten)]
    pub tls: super::tls_args::ServerTlsArgs,
    #[command(flatten)]
    pub limits: super::limits_args::LimitsArgs,
    #[command(flatten)]
    pub auth: super::auth_args::ServerAuthArgs,
    #[command(flatten)]
    pub secrets: super::secret::SecretsArgs,
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(self.lease_grace / 3),
            lease_grace: self.lease_grace,
            tls: self.tls.settings(),
            limits: self.limits.limits(),
            auth: self.auth.config(),
            secrets: self.secrets.config(),
            max_log_bytes: self.secrets.max_log_bytes,
        }
    }
}

pub async fn server(args: ServerArgs) -> anyhow::Result<u8> {
    raise_nofile();
    let server = Server::start(&args.config()).await?;
    // Tests and scripts that pass port 0 read the real address from here.
    println!(
        "hodei server listening on {}://{}",
        server.scheme(),
        server.addr
    );
    if let Some(token) = server.first_start_admin_token() {
        // Shown once, at the first start; also in the data directory.
        println!(
            "admin token (shown once; saved to {}): {token}",
            args.data_dir
                .join(hodei_server::auth::ADMIN_TOKEN_FILE)
                .display()
        );
    }
    server.run(shutdown_signal()).await?;
    Ok(0)
}

/// Every agent holds a connection (a file descriptor): raise the soft
/// open-file limit to the hard one, as far as the system allows.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(limit = soft, error = %e, "cannot raise the open-file limit"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Orchestrator URL; several (comma-separated or the flag repeated) for
    /// replicas: the agent attaches to the first and fails over to the next.
    #[arg(
        long = "server",
        env = "HODEI_SERVER",
        default_value = DEFAULT_SERVER,
        value_delimiter = ',',
        num_args = 1,
        value_name = "URL"
    )]
    pub servers: Vec<String>,
    /// Worker name (its id); defaults to the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Capabilities this worker offers, matched against jobs' labels.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Jobs run at once; defaults to the number of CPUs.
    #[arg(long)]
    pub slots: Option<u32>,
    /// Assignments taken beyond the slots, queued and started as slots
    /// free, so short jobs start without a round trip to the orchestrator
    /// (0: none); defaults to the slots. The orchestrator takes a queued
    /// one back when another agent has a free slot for it or a more urgent
    /// job would wait behind it. At most 1,024.
    #[arg(long, env = "HODEI_PREFETCH",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(hodei_core::engine::MAX_PREFETCH)))]
    pub prefetch: Option<u32>,
    /// Per-job working directories are made under this one.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep per-job directories after the job ends.
    #[arg(long)]
    pub keep_work_dirs: bool,
    /// Where unacknowledged job output is kept; defaults to `<work-dir>/spool`.
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Most unacknowledged output kept in the spool (e.g. 512M, 1G); beyond
    /// it output is dropped and the loss marked in the job's log.
    #[arg(long, default_value = "1G", value_parser = hodei_agent::parse_size)]
    pub spool_max: u64,
    /// Docker engine for jobs with an image: a socket path or a unix://,
    /// tcp:// or http:// URL (default: DOCKER_HOST, else
    /// /var/run/docker.sock). The agent advertises `docker` only if it
    /// reaches the engine at start.
    #[arg(long, value_name = "PATH|URL")]
    pub docker_socket: Option<String>,
    /// Run no jobs with an image, even if a Docker engine is reachable.
    #[arg(long, conflicts_with = "docker_socket")]
    pub no_docker: bool,
    /// Keep job containers after their job ends (for debugging).
    #[arg(long)]
    pub keep_containers: bool,
    /// Do not mount the per-job directory into containers at /workspace.
    #[arg(long)]
    pub no_container_workspace: bool,
    /// Run containers without an init process as their pid 1.
    #[arg(long)]
    pub no_container_init: bool,
    /// Pull policy of image jobs that do not set one: if-not-present or never.
    #[arg(long, default_value = "if-not-present", value_parser = PullPolicy::parse)]
    pub pull_policy: PullPolicy,
    /// Longest an image pull may take before the job fails.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub pull_timeout: Duration,
    #[command(flatten)]
    pub tls: super::tls_args::ClientTlsArgs,
    #[command(flatten)]
    pub auth: super::auth_args::AgentAuthArgs,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".to_string())
}

impl AgentArgs {
    pub fn config(&self) -> AgentConfig {
        let name = self.name.clone().unwrap_or_else(hostname);
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let mut config = AgentConfig::new(DEFAULT_SERVER, name.clone()).with_servers(servers);
        config.labels = self.labels.clone();
        if let Some(slots) = self.slots {
            config.slots = slots.max(1);
        }
        config.prefetch = self.prefetch;
        config.work_dir = self
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("hodei-work-{name}")));
        config.keep_work_dirs = self.keep_work_dirs;
        config.spool_dir = self.spool_dir.clone();
        config.spool_max_bytes = self.spool_max;
        config.tls = self.tls.agent();
        config.token = self.auth.token().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no join token");
            None
        });
        config.docker = (!self.no_docker).then(|| DockerConfig {
            host: self.docker_socket.clone(),
            keep_containers: self.keep_containers,
            mount_workspace: !self.no_container_workspace,
            pull_policy: self.pull_policy,
            init: !self.no_container_init,
            pull_timeout: self.pull_timeout,
        });
        config
    }
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<u8> {
    let config = args.config();
    tracing::info!(servers = ?config.servers, name = %config.name, slots = config.slots, labels = ?config.labels, "hodei agent starting");
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("draining: finishing running jobs (signal again to stop at once)");
        let _ = drain_tx.send(true);
        shutdown_signal().await;
        tracing::warn!("second signal: exiting without waiting for jobs");
        std::process::exit(130);
    });
    // On the runtime's workers, not the main thread: the session's every
    // message would otherwise cross to this thread and back.
    tokio::spawn(hodei_agent::run(
        config,
        Arc::new(ProcessExecutor::new()),
        drain_rx,
    ))
    .await
    .context("agent task failed")?
    .context("agent failed")?;
    tracing::info!("agent drained; bye");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn servers(args: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(["hodei", "agent"].iter().chain(args)).expect("parses");
        let Command::Agent(agent) = cli.command else {
            panic!("not the agent command")
        };
        agent.config().servers
    }

    #[test]
    fn the_agent_takes_several_server_urls() {
        assert_eq!(
            servers(&[
                "--server",
                "http://a:1, http://b:2",
                "--server",
                "http://c:3"
            ]),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(servers(&["--server", "http://a:1"]), ["http://a:1"]);
    }

    #[test]
    fn prefetch_defaults_to_the_slots_and_refuses_more_than_the_orchestrator_takes() {
        let prefetch = |args: &[&str]| {
            Cli::try_parse_from(["hodei", "agent"].iter().chain(args)).map(|cli| {
                let Command::Agent(agent) = cli.command else {
                    panic!("not the agent command")
                };
                agent.config().prefetch()
            })
        };
        assert_eq!(prefetch(&["--slots", "3"]).expect("parses"), 3);
        assert_eq!(prefetch(&["--slots", "5000"]).expect("parses"), 1024);
        assert_eq!(prefetch(&["--prefetch", "0"]).expect("parses"), 0);
        assert_eq!(prefetch(&["--prefetch", "1024"]).expect("parses"), 1024);
        let too_many = prefetch(&["--prefetch", "1025"]).expect_err("refused");
        assert!(too_many.to_string().contains("--prefetch"), "{too_many}");
    }
}
