//! Command-line parsing and dispatch. Each subcommand lives in its own file.

mod auth_args;
mod bench;
mod certs;
mod demo;
mod limits_args;
mod query;
mod run;
mod secret;
mod serve;
mod table;
mod tls_args;
mod token;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Default server URL for client commands and agents.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Debug, Parser)]
#[command(
    name = "hodei",
    version,
    about = "Hodei: run jobs on a fleet of workers"
)]
pub struct Cli {
    /// Log format for server and agent logs: human or json.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator (gRPC HWP and HTTP API on one port).
    Server(serve::ServerArgs),
    /// Run a worker agent that dials the orchestrator and runs jobs.
    Agent(serve::AgentArgs),
    /// Run a command on a worker as if it ran here: its output streams back
    /// and its exit code becomes ours.
    Run(run::RunArgs),
    /// List jobs.
    Jobs(query::JobsArgs),
    /// Show one job.
    Job(query::JobArgs),
    /// Print a job's log.
    Logs(query::LogsArgs),
    /// Cancel a job.
    Cancel(query::CancelArgs),
    /// List workers.
    Workers(query::WorkersArgs),
    /// Start an orchestrator and an agent in this process and run sample jobs.
    Demo(demo::DemoArgs),
    /// Measure throughput, latency, log bandwidth, agent fan-out and a queue
    /// backlog on this machine (`hodei bench all --smoke` for a quick check).
    Bench(bench::BenchArgs),
    /// Make a development CA, server and agent certificates for TLS and mTLS.
    Certs(certs::CertsArgs),
    /// Create, list and revoke API and agent join tokens (admin).
    Token(token::TokenArgs),
    /// Set, list and delete secrets jobs get as environment variables (admin).
    Secret(secret::SecretArgs),
}

/// Where a client command finds the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerUrl {
    /// Server URL.
    #[arg(long = "server", env = "HODEI_SERVER", default_value = DEFAULT_SERVER)]
    pub url: String,
    #[command(flatten)]
    pub tls: tls_args::ClientTlsArgs,
    #[command(flatten)]
    pub auth: auth_args::ClientAuthArgs,
}

impl ServerUrl {
    pub fn client(&self) -> anyhow::Result<hodei_client::Client> {
        Ok(
            hodei_client::Client::with_tls(&self.url, &self.tls.client()?)?
                .with_token(self.auth.token()?),
        )
    }
}

pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // Client commands stay quiet unless asked; services log at info.
    let service = matches!(
        cli.command,
        Command::Server(_) | Command::Agent(_) | Command::Demo(_)
    );
    let default = if service { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("HODEI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The Docker client logs request and response bodies at debug, a
    // container's environment (its secrets) included: never below info.
    let filter = match "bollard=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Server(args) => serve::server(args).await,
        Command::Agent(args) => serve::agent(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Jobs(args) => query::jobs(args).await,
        Command::Job(args) => query::job(args).await,
        Command::Logs(args) => query::logs(args).await,
        Command::Cancel(args) => query::cancel(args).await,
        Command::Workers(args) => query::workers(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Token(args) => token::token(args).await,
        Command::Secret(args) => secret::secret(args).await,
        Command::Certs(args) => tokio::task::spawn_blocking(move || certs::certs(args)).await?,
    }
}

/// Parses durations like `30s`, `5m`, `1h`, `250ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m, 250ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
