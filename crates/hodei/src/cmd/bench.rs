//! `hodei bench`: measures Hodei on this machine with every guarantee on
//! (durable store, fsync per commit). Each scenario starts its own
//! orchestrator and agent in this process on loopback, and measures a
//! baseline in the same run so the figures can be compared on a noisy
//! machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hodei_agent::AgentConfig;
use hodei_agent::process::ProcessExecutor;
use hodei_client::{Client, FollowEvent};
use hodei_core::JobState;
use hodei_core::api::SubmitRequest;
use hodei_core::engine::Notice;
use hodei_server::{Server, ServerConfig};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// throughput | latency | logs
    #[arg(value_parser = ["throughput", "latency", "logs"])]
    pub scenario: String,
    /// Jobs (throughput, latency) to run.
    #[arg(long)]
    pub n: Option<usize>,
    /// Bytes the logs job writes.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Agent slots (default: 2 × CPUs).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A running orchestrator and agent for one scenario.
struct Rig {
    client: Client,
    notices: broadcast::Receiver<Notice>,
    stop: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(slots: u32) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("data"),
            ..ServerConfig::default()
        };
        let server = Server::start(&config).await?;
        let url = format!("http://{}", server.addr);
        let notices = server.hub().subscribe();
        let (stop, stop_rx) = watch::channel(false);
        let mut stopping = stop_rx.clone();
        tokio::spawn(server.run(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }));
        let mut agent = AgentConfig::new(url.clone(), "bench-agent");
        agent.slots = slots;
        agent.work_dir = dir.path().join("work");
        let (drain, drain_rx) = watch::channel(false);
        tokio::spawn(hodei_agent::run(
            agent,
            Arc::new(ProcessExecutor::new()),
            drain_rx,
        ));
        let client = Client::new(&url)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.workers().await?.iter().any(|w| w.state == "ready") {
            if Instant::now() > deadline {
                bail!("the bench agent did not attach");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Rig {
            client,
            notices,
            stop,
            drain,
            _dir: dir,
        })
    }

    fn shutdown(self) {
        let _ = self.drain.send(true);
        let _ = self.stop.send(true);
    }
}

fn job(argv: &[&str]) -> SubmitRequest {
    SubmitRequest {
        command: argv.iter().map(|s| s.to_string()).collect(),
        ..SubmitRequest::default()
    }
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Serialize)]
struct Dist {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Dist {
    fn of(mut v: Vec<Duration>) -> Dist {
        v.sort();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i)
                .map_or(0.0, |d| (d.as_secs_f64() * 100_000.0).round() / 100.0)
        };
        Dist {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<u8> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let slots = args.slots.unwrap_or(2 * cpus);
    let report = match args.scenario.as_str() {
        "throughput" => throughput(args.n.unwrap_or(10_000), slots).await?,
        "latency" => latency(args.n.unwrap_or(200), slots).await?,
        _ => logs(args.bytes, slots).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (k, v) in report.as_object().into_iter().flatten() {
            println!("{k:<28} {v}");
        }
    }
    Ok(0)
}

/// N no-op jobs on one agent, first submit to last result; baseline: the
/// same N `true` processes spawned directly with the same parallelism.
async fn throughput(n: usize, slots: u32) -> anyhow::Result<serde_json::Value> {
    let mut rig = Rig::start(slots).await?;
    let start = Instant::now();
    let submitters = 16;
    let mut tasks = Vec::new();
    for k in 0..submitters {
        let client = rig.client.clone();
        let count = n / submitters + usize::from(k < n % submitters);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                client.submit(&job(&["true"])).await?;
            }
            Ok::<_, hodei_client::ClientError>(())
        }));
    }
    let mut done = 0;
    let mut failed = 0;
    while done < n {
        match rig.notices.recv().await {
            Ok(Notice::JobChanged { state, .. }) if state.is_terminal() => {
                done += 1;
                failed += usize::from(state != JobState::Succeeded);
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(k)) => {
                bail!("missed {k} notices; cannot count")
            }
            Err(broadcast::error::RecvError::Closed) => bail!("server stopped"),
        }
    }
    let elapsed = start.elapsed();
    for t in tasks {
        t.await??;
    }
    rig.shutdown();
    let baseline = spawn_baseline(n, slots as usize).await?;
    let rate = n as f64 / elapsed.as_secs_f64();
    let base_rate = n as f64 / baseline.as_secs_f64();
    Ok(serde_json::json!({
        "scenario": "throughput",
        "jobs": n,
        "slots": slots,
        "failed": failed,
        "seconds": elapsed.as_secs_f64(),
        "jobs_per_second": rate.round(),
        "baseline_spawns_per_second": base_rate.round(),
        "ratio_to_baseline": (rate / base_rate * 1000.0).round() / 1000.0,
    }))
}

async fn spawn_baseline(n: usize, parallel: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < parallel {
            started += 1;
            set.spawn(async { tokio::process::Command::new("true").status().await });
        }
        if let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok(start.elapsed())
}

/// Jobs one at a time on an idle cluster: submit → running (the moment the
/// orchestrator has made `running` durable and announces it), submit →
/// first output line at a live follower, submit → result at the follower.
async fn latency(n: usize, slots: u32) -> anyhow::Result<serde_json::Value> {
    let rig = Rig::start(slots).await?;
    // Records when each job's `running` state was announced.
    let running_at: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut notices = rig.notices.resubscribe();
    let record = running_at.clone();
    tokio::spawn(async move {
        while let Ok(notice) = notices.recv().await {
            if let Notice::JobChanged {
                job_id,
                state: JobState::Running,
            } = notice
                && let Ok(mut map) = record.lock()
            {
                map.insert(job_id, Instant::now());
            }
        }
    });
    let (mut to_running, mut to_line, mut to_result) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let id = rig.client.submit(&job(&["echo", "x"])).await?.job.id;
        let mut first_line = None;
        let end = rig
            .client
            .follow(&id, Duration::from_secs(10), |ev| {
                if matches!(ev, FollowEvent::Log { .. }) && first_line.is_none() {
                    first_line = Some(t0.elapsed());
                }
            })
            .await?;
        to_result.push(t0.elapsed());
        if end.state != JobState::Succeeded {
            bail!("job {id} ended {}", end.state);
        }
        to_line.push(first_line.context("no output line")?);
        let running = running_at.lock().ok().and_then(|m| m.get(&id).copied());
        to_running.push(running.context("no running notice")?.duration_since(t0));
    }
    rig.shutdown();
    Ok(serde_json::json!({
        "scenario": "latency",
        "jobs": n,
        "submit_to_running_ms": Dist::of(to_running),
        "submit_to_first_line_ms": Dist::of(to_line),
        "submit_to_result_ms": Dist::of(to_result),
    }))
}

/// One job writing `bytes` of lines; MB/s from its first byte to the last
/// byte persisted and to the last byte at a live follower. Baseline: the
/// same command writing to a file on the same disk.
async fn logs(bytes: u64, slots: u32) -> anyhow::Result<serde_json::Value> {
    let rig = Rig::start(slots).await?;
    let script = format!(
        "yes 'hodei log throughput line, sixty-four bytes long.........' | head -c {bytes}"
    );
    let start = Instant::now();
    let id = rig
        .client
        .submit(&job(&["sh", "-c", &script]))
        .await?
        .job
        .id;
    let mut received: u64 = 0;
    let mut first_byte = None;
    let end = rig
        .client
        .follow(&id, Duration::from_secs(30), |ev| {
            if let FollowEvent::Log { data, .. } = ev {
                first_byte.get_or_insert_with(|| start.elapsed());
                received += data.len() as u64;
            }
        })
        .await?;
    let at_follower = start.elapsed();
    if end.state != JobState::Succeeded || received != bytes {
        bail!(
            "logs job ended {} with {received} of {bytes} bytes",
            end.state
        );
    }
    let job = rig.client.job(&id).await?;
    let stored_ms =
        (job.finished_at.unwrap_or_default() - job.started_at.unwrap_or_default()).max(1);
    rig.shutdown();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("out");
    let t = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args([
            "-c",
            &format!("{script} > {}; sync {}", file.display(), file.display()),
        ])
        .status()
        .await?;
    if !status.success() {
        bail!("baseline command failed");
    }
    let base = t.elapsed();
    let mb = bytes as f64 / 1e6;
    let follower_s = (at_follower - first_byte.unwrap_or_default()).as_secs_f64();
    let follower_rate = mb / follower_s;
    let base_rate = mb / base.as_secs_f64();
    Ok(serde_json::json!({
        "scenario": "logs",
        "bytes": bytes,
        "stored_mb_per_s": (mb / (stored_ms as f64 / 1000.0)).round(),
        "follower_mb_per_s": follower_rate.round(),
        "baseline_file_mb_per_s": base_rate.round(),
        "ratio_to_baseline": (follower_rate / base_rate * 1000.0).round() / 1000.0,
        "lost_bytes": bytes - received,
    }))
}
