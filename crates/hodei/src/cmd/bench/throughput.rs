//! N no-op jobs (`true`) on one agent with 2 × CPUs slots, from the first
//! submit to the last result committed; baseline: the same N `true`
//! processes spawned directly with the same parallelism. Jobs are submitted
//! one per request by 16 clients, or with `--batch B` in batches of B by 4.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hodei_core::JobState;
use hodei_core::engine::Notice;
use tokio::sync::broadcast;

use super::Plan;
use super::report::{Report, round3};
use super::rig::{Rig, children_cpu_seconds, cpu_times, job, submit_noops};

/// Concurrent submitting clients, one job per request.
const SUBMITTERS: usize = 16;
/// Concurrent submitting clients with `--batch`.
const BATCH_SUBMITTERS: usize = 4;

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let n = plan.n(10_000, 200);
    let mut rig = Rig::start(plan.slots).await?;
    // CPU used from the first submission to the last result: by the agent,
    // by its jobs' processes, and by this process (the orchestrator and the
    // submitting clients). Less noisy than rates on a shared machine.
    let agent = rig.agent_pid().context("the agent exited")?;
    let (agent_cpu0, self_cpu0) = (cpu_times(agent)?, cpu_times(std::process::id())?);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let submitters = if plan.batch.is_some() {
        BATCH_SUBMITTERS
    } else {
        SUBMITTERS
    };
    for k in 0..submitters {
        let client = rig.client.clone();
        let count = n / submitters + usize::from(k < n % submitters);
        let batch = plan.batch;
        tasks.push(tokio::spawn(async move {
            match batch {
                None => {
                    for _ in 0..count {
                        client.submit(&job(&["true"])).await?;
                    }
                }
                Some(size) => submit_noops(&client, count, size).await?,
            }
            Ok::<_, hodei_client::ClientError>(())
        }));
    }
    let mut finished_at = Vec::with_capacity(n);
    let mut failed = 0;
    while finished_at.len() < n {
        match rig.notices.recv().await {
            Ok(Notice::JobChanged { state, .. }) if state.is_terminal() => {
                finished_at.push(start.elapsed().as_secs_f64());
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
    let agent_cpu = cpu_times(agent)? - agent_cpu0;
    let self_cpu = cpu_times(std::process::id())? - self_cpu0;
    for t in tasks {
        t.await??;
    }
    // The prefetch the agent asked for, as the orchestrator lists it.
    let prefetch = rig
        .client
        .workers()
        .await?
        .first()
        .map(|w| w.prefetch)
        .context("the agent is not listed")?;
    rig.shutdown().await;
    let children0 = children_cpu_seconds();
    let baseline = spawn_baseline(n, plan.slots as usize).await?;
    let baseline_cpu = children_cpu_seconds() - children0;
    let rate = n as f64 / elapsed.as_secs_f64();
    let base_rate = n as f64 / baseline.as_secs_f64();
    let ratio = round3(rate / base_rate);
    let mut r = Report::new("throughput");
    r.set("jobs", n);
    r.set("slots", plan.slots);
    r.set("prefetch", prefetch);
    r.set("jobs_per_request", plan.batch.unwrap_or(1));
    r.set("failed", failed);
    r.set("seconds", round3(elapsed.as_secs_f64()));
    r.set("jobs_per_second", rate.round());
    r.set("baseline_spawns_per_second", base_rate.round());
    r.set("ratio_to_baseline", ratio);
    r.cpu_per_job(n, agent_cpu, self_cpu);
    r.set(
        "cpu_ms_per_baseline_spawn",
        round3(baseline_cpu * 1000.0 / n as f64),
    );
    r.sane(failed == 0, format!("{failed} of {n} jobs failed"));
    r.sane(rate > 0.0 && base_rate > 0.0, "a rate of zero");
    r.target("jobs_per_second", rate.round(), true, 1000.0);
    r.target("ratio_to_baseline", ratio, true, 0.6);
    r.finished_at = finished_at;
    Ok(r)
}

/// Spawns `n` `true` processes, `parallel` at a time.
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
