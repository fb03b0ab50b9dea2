//! Client commands that look at or act on existing jobs and workers.

use std::io::Write;

use hodei_core::{JobState, LogStream};

use super::ServerUrl;
use super::table;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    /// Only jobs in this state.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs that require this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only jobs whose current (or last) attempt ran on this worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// Only jobs whose name starts with this.
    #[arg(long)]
    pub name: Option<String>,
    /// How many jobs (newest first).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        format!(
            "unknown state {s:?}; one of {}",
            JobState::ALL.map(|s| s.as_str()).join(", ")
        )
    })
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<u8> {
    let query = hodei_core::api::JobQuery {
        state: args.state,
        label: args.label,
        worker: args.worker,
        name_prefix: args.name,
        limit: Some(args.limit.clamp(1, 1000)),
        cursor: None,
    };
    let list = args.server.client()?.list_jobs(&query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list.jobs)?);
    } else {
        let now = table::now_ms();
        let rows: Vec<_> = list.jobs.iter().map(|j| table::job_row(j, now)).collect();
        table::print(&table::JOB_HEADER, &rows);
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn job(args: JobArgs) -> anyhow::Result<u8> {
    let job = args.server.client()?.job(&args.id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(0);
    }
    let now = table::now_ms();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("id:        {}", job.id);
    println!("name:      {}", job.spec.name);
    println!("state:     {}", job.state);
    println!("command:   {:?}", job.spec.command);
    if let Some(image) = &job.spec.image {
        println!("image:     {image}");
    }
    println!("exit code: {}", opt(job.exit_code.map(|c| c.to_string())));
    if let Some(sig) = job.signal {
        println!("signal:    {sig}");
    }
    println!("attempt:   {}", job.attempt);
    println!("worker:    {}", opt(job.worker.clone()));
    println!("run time:  {}", table::runtime(&job, now));
    if !job.spec.labels.is_empty() {
        println!("labels:    {}", job.spec.labels.join(","));
    }
    if let Some(reason) = &job.reason {
        println!("reason:    {reason}");
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    pub id: String,
    /// Keep printing new output until the job ends.
    #[arg(short, long)]
    pub follow: bool,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let client = args.server.client()?;
    if !args.follow {
        for stream in LogStream::BOTH {
            let data = client.logs(&args.id, Some(stream)).await?;
            let write = move || match stream {
                LogStream::Stdout => std::io::stdout().write_all(&data),
                LogStream::Stderr => std::io::stderr().write_all(&data),
            };
            tokio::task::spawn_blocking(write).await??;
        }
        return Ok(0);
    }
    let (tx, rx) = std::sync::mpsc::channel::<(LogStream, bytes::Bytes)>();
    let writer = std::thread::spawn(move || {
        for (stream, data) in rx {
            let _ = match stream {
                LogStream::Stdout => std::io::stdout()
                    .write_all(&data)
                    .and_then(|()| std::io::stdout().flush()),
                LogStream::Stderr => std::io::stderr().write_all(&data),
            };
        }
    });
    let end = client
        .follow(&args.id, std::time::Duration::from_secs(30), |ev| {
            if let hodei_client::FollowEvent::Log { stream, data, .. } = ev {
                let _ = tx.send((stream, data));
            }
        })
        .await;
    drop(tx);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    end?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    pub id: String,
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<u8> {
    let job = args.server.client()?.cancel(&args.id).await?;
    if job.state.is_terminal() {
        println!("job {} is {}", job.id, job.state);
    } else {
        println!("job {} is being cancelled", job.id);
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub server: ServerUrl,
    #[arg(long)]
    pub json: bool,
}

pub async fn workers(args: WorkersArgs) -> anyhow::Result<u8> {
    let workers = args.server.client()?.workers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(0);
    }
    let now = table::now_ms();
    let rows: Vec<_> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.state.clone(),
                slots_in_use(w),
                w.labels.join(","),
                format!("{} ago", table::duration((now - w.last_seen).max(0))),
            ]
        })
        .collect();
    table::print(&["NAME", "STATE", "SLOTS", "LABELS", "LAST SEEN"], &rows);
    Ok(0)
}

/// `used/slots`, and how many held jobs wait beyond the slots (prefetch).
fn slots_in_use(w: &hodei_core::engine::WorkerInfo) -> String {
    match w.slots_in_use() {
        (used, 0) => format!("{used}/{}", w.slots),
        (used, waiting) => format!("{used}/{} +{waiting} waiting", w.slots),
    }
}

#[cfg(test)]
mod tests {
    use super::slots_in_use;
    use hodei_core::engine::WorkerInfo;

    #[test]
    fn jobs_held_beyond_the_slots_are_shown_waiting() {
        let held = |n: usize| WorkerInfo {
            id: "w".into(),
            labels: Vec::new(),
            slots: 4,
            prefetch: 1,
            running: (0..n).map(|i| format!("j{i}")).collect(),
            state: "busy".into(),
            last_seen: 0,
        };
        assert_eq!(slots_in_use(&held(0)), "0/4");
        assert_eq!(slots_in_use(&held(4)), "4/4");
        assert_eq!(slots_in_use(&held(5)), "4/4 +1 waiting");
    }
}
