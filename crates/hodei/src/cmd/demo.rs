//! `hodei demo`: an orchestrator and an agent in this process, a few sample
//! jobs with their live output, then a server you can keep using.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hodei_agent::AgentConfig;
use hodei_agent::process::ProcessExecutor;
use hodei_client::{Client, FollowEvent};
use hodei_core::api::SubmitRequest;
use hodei_core::{JobState, LogStream};
use hodei_server::{Server, ServerConfig};

use super::{shutdown_signal, table};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address to serve on; if it is taken, a free port is used instead.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Where the embedded store keeps its database.
    #[arg(long, default_value = "hodei-data")]
    pub data_dir: PathBuf,
    /// Exit after the sample jobs instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after: bool,
}

fn sample(name: &str, script: &str) -> SubmitRequest {
    SubmitRequest {
        name: name.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..SubmitRequest::default()
    }
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let mut config = ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        ..ServerConfig::default()
    };
    let server = match Server::start(&config).await {
        Ok(s) => s,
        Err(hodei_server::ServerError::Bind { .. }) => {
            config.listen.set_port(0);
            Server::start(&config).await?
        }
        Err(e) => return Err(e.into()),
    };
    let url = format!("http://{}", server.addr);
    // The local tokens from the data directory (made at the first start).
    let admin_token = server.admin_token();
    let join_token = server.join_token();
    let first_start_token = server.first_start_admin_token().map(str::to_string);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop = stop_rx.clone();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));

    let mut agent = AgentConfig::new(url.clone(), "demo-agent");
    agent.slots = 4;
    agent.token = join_token.map(hodei_core::auth::Secret::new);
    agent.work_dir = std::env::temp_dir().join(format!("hodei-demo-work-{}", std::process::id()));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(hodei_agent::run(
        agent,
        Arc::new(ProcessExecutor::new()),
        drain_rx,
    ));

    println!(
        "Hodei demo: orchestrator on {url} (data in {}), one local agent with 4 slots.\nDashboard: {url}/ui (the jobs below appear there live)\n",
        args.data_dir.display()
    );
    let token_file = args.data_dir.join(hodei_server::auth::ADMIN_TOKEN_FILE);
    match first_start_token {
        Some(token) => println!(
            "Admin token (shown once; saved to {}): {token}\nThe CLI in this directory finds it there; the dashboard asks for it.\n",
            token_file.display()
        ),
        None => println!(
            "Sign in to the dashboard with the admin token in {}.\n",
            token_file.display()
        ),
    }
    let client = Client::new(&url)?.with_token(admin_token);
    let jobs = [
        sample(
            "count",
            "for i in 1 2 3 4 5; do echo \"step $i of 5\"; sleep 0.4; done; echo done",
        ),
        sample(
            "fails",
            "echo 'checking the widget...'; sleep 0.5; echo 'widget is broken' >&2; exit 3",
        ),
        sample(
            "cancel-me",
            "echo 'sleeping for a minute (the demo cancels me)'; sleep 60",
        ),
    ];
    let mut ids = Vec::new();
    for job in &jobs {
        let submitted = client
            .submit(job)
            .await
            .context("submitting a sample job")?;
        ids.push(submitted.job.id);
    }
    let mut followers = Vec::new();
    for (job, id) in jobs.iter().zip(&ids) {
        let (client, id, name) = (client.clone(), id.clone(), job.name.clone());
        followers.push(tokio::spawn(
            async move { follow(&client, &id, &name).await },
        ));
    }
    // Cancel the sleeper once it is running and has printed.
    let sleeper = ids[2].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if client.job(&sleeper).await?.state == JobState::Running {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            println!("[demo] cancelling cancel-me");
            client.cancel(&sleeper).await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in followers {
        f.await??;
    }
    println!();
    let now = table::now_ms();
    let mut rows = Vec::new();
    for id in &ids {
        rows.push(table::job_row(&client.job(id).await?, now));
    }
    table::print(&table::JOB_HEADER, &rows);
    if args.exit_after {
        let _ = drain_tx.send(true);
        let _ = agent_task.await;
        let _ = stop_tx.send(true);
        let _ = serving.await;
        return Ok(0);
    }
    println!("\nThe orchestrator keeps serving. In another terminal:");
    println!("  hodei run --server {url} -- echo hello");
    println!("  hodei jobs --server {url}");
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    let _ = drain_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent_task).await;
    let _ = stop_tx.send(true);
    let _ = serving.await;
    Ok(0)
}

/// Prints a job's output line by line, prefixed with its name.
async fn follow(client: &Client, id: &str, name: &str) -> anyhow::Result<()> {
    let mut pending = [Vec::new(), Vec::new()];
    let mut lines = Vec::new();
    let end = client
        .follow(id, Duration::from_secs(10), |ev| {
            if let FollowEvent::Log { stream, data, .. } = ev {
                let buf = &mut pending[stream.index()];
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    lines.push((
                        stream,
                        String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                    ));
                }
                for (stream, line) in lines.drain(..) {
                    match stream {
                        LogStream::Stdout => println!("[{name}] {line}"),
                        LogStream::Stderr => println!("[{name}] (stderr) {line}"),
                    }
                }
            }
        })
        .await?;
    let code = end
        .exit_code
        .map_or(String::new(), |c| format!(" with exit code {c}"));
    println!("[{name}] finished: {}{code}", end.state);
    Ok(())
}
