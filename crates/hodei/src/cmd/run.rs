//! `hodei run`: submit a command, stream its output here, exit with its code.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use hodei_client::{ClientError, FollowEvent};
use hodei_core::api::SubmitRequest;
use hodei_core::spec::{PullPolicy, parse_cpu};
use hodei_core::{JobState, LogStream};

use super::{ServerUrl, parse_duration};

/// Exit status when Hodei itself failed (server unreachable, job lost).
const EXIT_HODEI: u8 = 125;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    /// Job id (default: generated). Resubmitting the same id and command
    /// attaches to the existing job instead of running it again.
    #[arg(long)]
    pub id: Option<String>,
    /// Job name (default: the program's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Run in this container image (needs a worker with `docker`).
    #[arg(long)]
    pub image: Option<String>,
    /// CPU limit of the job's container: millicores (500m) or CPUs (2, 1.5).
    #[arg(long, value_parser = parse_cpu, requires = "image")]
    pub cpu: Option<u64>,
    /// Memory limit of the job's container, e.g. 256M or 2G (no swap beyond it).
    #[arg(long, value_parser = hodei_agent::parse_size, requires = "image")]
    pub memory: Option<u64>,
    /// When the worker pulls the image: if-not-present or never (default:
    /// the agent's).
    #[arg(long, value_parser = PullPolicy::parse, requires = "image")]
    pub pull: Option<PullPolicy>,
    /// Only workers with this label (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Environment variable for the job, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// A stored secret the job gets as the environment variable of the same
    /// name, masked in its log (repeatable; see `hodei secret set`).
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// Working directory on the worker (default: a fresh per-job directory);
    /// for an image job, a directory inside the container (default: the
    /// per-job directory, mounted at /workspace).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Kill the job after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// SIGTERM-to-SIGKILL grace on cancel or timeout.
    #[arg(long, value_parser = parse_duration)]
    pub kill_grace: Option<Duration>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Run again on another worker if the worker is lost (default 0: commands
    /// may not be idempotent).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Print the job id and return at once.
    #[arg(long)]
    pub detach: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl RunArgs {
    fn request(&self) -> SubmitRequest {
        SubmitRequest {
            id: self.id.clone(),
            name: self.name.clone().unwrap_or_default(),
            command: self.command.clone(),
            image: self.image.clone(),
            env: self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            working_dir: self.workdir.clone(),
            timeout_ms: self.timeout.map(|t| t.as_millis().max(1) as u64),
            labels: self.labels.clone(),
            priority: self.priority,
            max_retries: self.retries,
            kill_grace_ms: self.kill_grace.map(|g| g.as_millis() as u64),
            cpu_millicores: self.cpu,
            memory_bytes: self.memory,
            pull_policy: self.pull,
            secrets: self.secrets.clone(),
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let client = args.server.client()?;
    let submitted = match client.submit(&args.request()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hodei: {e}");
            return Ok(match e {
                ClientError::Api { .. } => 2,
                _ => EXIT_HODEI,
            });
        }
    };
    let id = submitted.job.id;
    if args.detach {
        println!("{id}");
        return Ok(0);
    }
    // Output is written by a plain thread so the runtime never blocks on a
    // slow terminal or pipe.
    let (tx, rx) = std::sync::mpsc::channel::<(LogStream, bytes::Bytes)>();
    let writer = std::thread::spawn(move || {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
        for (stream, data) in rx {
            let _ = match stream {
                LogStream::Stdout => out.write_all(&data).and_then(|()| out.flush()),
                LogStream::Stderr => err.write_all(&data),
            };
        }
    });
    let to_writer = tx.clone();
    let job_id = id.clone();
    // Whether the attempt followed printed anything: a new attempt after
    // output is worth a note (its output starts over); one after an
    // attempt given back unstarted (revoked, or rejected) is not.
    let mut printed = false;
    let mut follow = Box::pin(
        client.follow(&id, Duration::from_secs(30), move |ev| match ev {
            FollowEvent::Log { stream, data, .. } => {
                printed = true;
                let _ = to_writer.send((stream, data));
            }
            FollowEvent::Attempt(n) => {
                if std::mem::take(&mut printed) {
                    let note = format!(
                        "hodei: job {job_id} is running again (attempt {n}); its output starts over\n"
                    );
                    let _ = to_writer.send((LogStream::Stderr, note.into()));
                }
            }
        }),
    );
    let mut cancelled = false;
    let end = loop {
        tokio::select! {
            end = &mut follow => break end,
            _ = tokio::signal::ctrl_c() => {
                if cancelled {
                    eprintln!("hodei: interrupted again; leaving job {id} to finish cancelling");
                    return Ok(130);
                }
                cancelled = true;
                eprintln!("hodei: cancelling job {id}");
                if let Err(e) = client.cancel(&id).await {
                    eprintln!("hodei: cannot cancel job {id}: {e}");
                }
            }
        }
    };
    // Dropping the follower drops its sender; then the writer thread ends.
    drop(follow);
    drop(tx);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let end = match end {
        Ok(end) => end,
        Err(e) => {
            eprintln!("hodei: lost track of job {id}: {e}");
            return Ok(EXIT_HODEI);
        }
    };
    match end.state {
        JobState::TimedOut | JobState::Lost | JobState::Cancelled => {
            let reason = end.reason.clone().unwrap_or_default();
            eprintln!(
                "hodei: job {id} {}{}",
                end.state,
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            );
        }
        _ => {}
    }
    Ok(end.cli_exit_code().clamp(0, 255) as u8)
}
